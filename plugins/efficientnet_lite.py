"""EfficientNet-Lite split into the four stages MANet's attention branch reads.

The network itself is ``efficientnet-lite-pytorch``'s (its key layout is the one the
converted ImageNet weight files use); this module only regroups its layers by output stride
(4, 8, 16, 32), keeping each block's stochastic-depth rate as the original forward pass sets it.
"""

from __future__ import annotations

from torch import Tensor, nn

#: Output stride of each stage; boundaries are found from the blocks' strides, since
#: lite1/lite2 repeat blocks and so move them.
STAGE_STRIDES = (4, 8, 16, 32)


class LiteStage(nn.Module):
    """A run of layers; MBConv blocks get their drop-connect rate, other layers plain calls."""

    def __init__(self, layers: list[nn.Module], rates: list[float | None]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.rates = rates

    def forward(self, x: Tensor) -> Tensor:
        for layer, rate in zip(self.layers, self.rates, strict=True):
            x = layer(x) if rate is None else layer(x, drop_connect_rate=rate)
        return x


def lite_network(variant: str) -> nn.Module:
    """The full ``efficientnet-lite-pytorch`` network of ``variant``, randomly initialised."""
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_name(variant)


def _block_stride(block: nn.Module) -> int:
    stride = block._block_args.stride
    return int(stride[0] if isinstance(stride, (list, tuple)) else stride)


def lite_stages(model: nn.Module) -> nn.ModuleList:
    """``model``'s stem, blocks and head as four :class:`LiteStage`, ending at strides 4-32.

    Chained, they compute ``model.extract_features`` exactly (the 1x1 head conv + BN + ReLU6
    is the last stage's end); the layers are shared with ``model``, not copied.
    """
    blocks = list(model._blocks)
    base_rate = float(model._global_params.drop_connect_rate or 0.0)
    stages: list[tuple[list[nn.Module], list[float | None]]] = [
        ([model._conv_stem, model._bn0, nn.ReLU6()], [None, None, None])]
    stride = 2
    for index, block in enumerate(blocks):
        step = _block_stride(block)
        if step > 1 and stride * step > STAGE_STRIDES[len(stages) - 1]:
            stages.append(([], []))
        stride *= step
        stages[-1][0].append(block)
        stages[-1][1].append(base_rate * index / len(blocks))
    stages[-1][0].extend([model._conv_head, model._bn1, nn.ReLU6()])
    stages[-1][1].extend([None, None, None])
    if len(stages) != len(STAGE_STRIDES):
        raise ValueError(f"expected {len(STAGE_STRIDES)} stages, found {len(stages)}")
    return nn.ModuleList(LiteStage(layers, rates) for layers, rates in stages)

