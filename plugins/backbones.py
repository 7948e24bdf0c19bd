"""Backbone plugins over torchvision: ResNet-18/34/50/101 and VGG16 up to the last conv map."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from manet.errors import WeightsError
from manet.hookspecs import hookimpl
from manet.plugin_base import Backbone

#: Seed of the random initialisation behind ``--weights none``.
RANDOM_INIT_SEED = 0


class TorchvisionBackbone(Backbone):
    """A torchvision classification network truncated after its last convolutional block."""

    #: torchvision model builder name, e.g. "resnet50".
    arch: ClassVar[str] = ""

    def _weights_enum(self) -> Any:
        import torchvision

        return torchvision.models.get_model_weights(self.arch).DEFAULT

    def imagenet_weights_cached(self) -> bool:
        """True when torchvision's ImageNet weights are already in the torch hub cache."""
        import torch

        url = self._weights_enum().url
        return (Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]).is_file()

    def _full_model(self, weights: str) -> Any:
        import torchvision

        if weights == "none":
            import torch

            # Seeded, so every process (extraction workers, a later `manet search`) builds
            # the same random network; the caller's RNG state is left as it was.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(RANDOM_INIT_SEED)
                return torchvision.models.get_model(self.arch, weights=None)
        if weights == "imagenet":
            try:
                return torchvision.models.get_model(self.arch, weights=self._weights_enum())
            except Exception as exc:  # URLError, socket errors, hash mismatch
                raise WeightsError(
                    f"cannot get ImageNet weights for {self.arch} ({type(exc).__name__}: "
                    f"{str(exc).splitlines()[0] if str(exc) else 'download failed'}); offline, "
                    f"pass --weights PATH to a local checkpoint or --weights none"
                ) from None
        return self._from_checkpoint(Path(weights))

    def _from_checkpoint(self, path: Path) -> Any:
        import torch
        import torchvision

        if not path.is_file():
            raise WeightsError(
                f"weights file {path} does not exist; use --weights imagenet|none|PATH"
            )
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise WeightsError(f"cannot read weights file {path}: {exc}") from None
        if isinstance(state, dict):
            for key in ("state_dict", "model"):
                if isinstance(state.get(key), dict):
                    state = state[key]
        model = torchvision.models.get_model(self.arch, weights=None)
        try:
            model.load_state_dict(state)
        except (RuntimeError, TypeError) as exc:
            first = str(exc).strip().splitlines()[0]
            raise WeightsError(
                f"weights file {path} does not fit {self.arch}: {first}"
            ) from None
        return model

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


@hookimpl
def register_backbones(register):
    for cls in (ResNet18, ResNet34, ResNet50, ResNet101, VGG16):
        register(cls)
