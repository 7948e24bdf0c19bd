"""Built-in attention branch: MANet's saliency branch over the backbone stages.

``saliency-fpn`` is a top-down path (FPN: lateral 1x1 convs, upsample, add) followed by a
bottom-up path (PANet: strided 3x3 convs, add) and a small head that fuses every level at
the second stage's resolution into one saliency logit map. torch is imported only when a
module is built, so listing plugins stays cheap.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from manet.errors import PluginError
from manet.hookspecs import Register, hookimpl
from manet.plugin_base import AttentionBranch

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: Index of the stage whose resolution the saliency map has (stride 8 on ResNets); finer
#: stages are not read, which keeps the branch small and fast.
OUTPUT_STAGE = 1


def _saliency_fpn_module(stage_channels: Sequence[int], channels: int) -> "torch.nn.Module":
    import torch
    import torch.nn.functional as F
    from torch import Tensor, nn

    def conv3x3(stride: int = 1) -> nn.Module:
        return nn.Sequential(nn.Conv2d(channels, channels, 3, stride, 1), nn.ReLU(inplace=True))

    def fit(t: Tensor, like: Tensor, mode: str) -> Tensor:
        # Stage sizes need not halve exactly (odd inputs; VGG's max-pools floor, strided
        # convs ceil), so every merge resizes to the exact size of the map it adds to.
        if t.shape[-2:] == like.shape[-2:]:
            return t
        if mode == "nearest":
            return F.interpolate(t, size=like.shape[-2:], mode="nearest")
        return F.interpolate(t, size=like.shape[-2:], mode=mode, align_corners=False)

    class SaliencyFPN(nn.Module):
        """Stage maps (fine to coarse) -> one saliency logit map (B, 1, h, w) at the
        resolution of stage ``OUTPUT_STAGE``."""

        def __init__(self) -> None:
            super().__init__()
            used = list(stage_channels)[OUTPUT_STAGE:]
            self.lateral = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in used)
            # 3x3 after each top-down merge, as in FPN, to smooth the upsampling steps.
            self.smooth = nn.ModuleList(conv3x3() for _ in used)
            self.down = nn.ModuleList(conv3x3(stride=2) for _ in used[1:])
            self.head = nn.Sequential(conv3x3(), nn.Conv2d(channels, 1, 1))

        def forward(self, stages: Sequence[Tensor]) -> Tensor:
            maps = list(stages)[OUTPUT_STAGE:]
            if len(maps) != len(self.lateral):
                raise ValueError(
                    f"saliency-fpn was built for {len(self.lateral) + OUTPUT_STAGE} stages, "
                    f"got {len(stages)}"
                )
            lateral = [conv(m) for conv, m in zip(self.lateral, maps)]
            # Top-down: coarse semantics flow to the finer levels.
            top_down = [lateral[-1]]
            for lat in reversed(lateral[:-1]):
                top_down.insert(0, lat + fit(top_down[0], lat, "nearest"))
            top_down = [smooth(p) for smooth, p in zip(self.smooth, top_down)]
            # Bottom-up: fine localisation flows back to the coarse levels.
            bottom_up = [top_down[0]]
            for down, p in zip(self.down, top_down[1:]):
                bottom_up.append(p + fit(down(bottom_up[-1]), p, "bilinear"))
            # Every level contributes to the output map, so the bottom-up path matters.
            fused = torch.stack([fit(n, bottom_up[0], "bilinear") for n in bottom_up]).sum(0)
            return self.head(fused)

    return SaliencyFPN()


class SaliencyFPNBranch(AttentionBranch):
    name = "saliency-fpn"
    description = (
        "MANet saliency branch: FPN top-down + PANet bottom-up over the backbone stages, "
        "one logit map at stride 8"
    )
    defaults = {"channels": 64}

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        if self.params["channels"] < 1:
            raise PluginError(f"attention branch 'saliency-fpn': channels must be >= 1, "
                              f"got {self.params['channels']}")

    def build(self, stage_channels: Sequence[int]) -> "torch.nn.Module":
        """Return the module ``forward(stages: list of (B, C_i, h_i, w_i)) -> (B, 1, h_1, w_1)``."""
        if len(stage_channels) < OUTPUT_STAGE + 1:
            raise PluginError(
                f"attention branch 'saliency-fpn' needs at least {OUTPUT_STAGE + 1} backbone "
                f"stages, got {len(stage_channels)}"
            )
        return _saliency_fpn_module(stage_channels, int(self.params["channels"]))


@hookimpl
def register_attention_branches(register: Register) -> None:
    """Register the built-in attention branches."""
    register(SaliencyFPNBranch)
