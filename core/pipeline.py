"""A descriptor pipeline: backbone + weights + input size + pooling + post-processing.

Its config is stored as JSON in the ``models`` table, so a name is all that extraction,
search and evaluation need to rebuild exactly the same pipeline.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from manet.errors import ManetError, PluginError
from manet.plugin_manager import Registry

# torchvision's ImageNet statistics, used by every torchvision backbone.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
POSTPROCESSING = ("l2",)


@dataclass(frozen=True)
class PipelineConfig:
    """Everything needed to rebuild a descriptor extractor."""

    backbone: str = "resnet50"
    weights: str = "imagenet"
    image_size: int = 224
    pooling: str = "srmac"
    pooling_params: dict[str, Any] = field(default_factory=dict)
    saliency: str = "spectral-residual"
    saliency_params: dict[str, Any] = field(default_factory=dict)
    postprocess: str = "l2"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PipelineConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise PluginError(f"unknown pipeline settings {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**data)

    def validate(self, registry: Registry) -> int:
        """Check plugin names and parameters; return the descriptor dimension."""
        if not 32 <= int(self.image_size) <= 4096:
            raise PluginError(f"image size {self.image_size} is out of range; use 32..4096 pixels")
        if self.postprocess not in POSTPROCESSING:
            raise PluginError(
                f"unknown post-processing '{self.postprocess}'; known: {', '.join(POSTPROCESSING)}"
            )
        backbone = registry.create("backbone", self.backbone)
        pooling = registry.create("pooling", self.pooling, **self.pooling_params)
        if pooling.uses_saliency:
            registry.create("saliency_estimator", self.saliency, **self.saliency_params)
        return int(backbone.out_channels)


def build_pipeline(config: PipelineConfig, registry: Registry):
    """Build the :class:`DescriptorPipeline` module for ``config`` (loads weights)."""
    import torch

    class DescriptorPipeline(torch.nn.Module):
        """uint8 images (B, 3, S, S) -> L2-normalised descriptors (B, D), all on one device."""

        def __init__(self) -> None:
            super().__init__()
            backbone = registry.create("backbone", config.backbone)
            pooling = registry.create("pooling", config.pooling, **config.pooling_params)
            self.dim = int(backbone.out_channels)
            self.features = backbone.build(config.weights)
            self.pool = pooling.module()
            self.saliency = (
                registry.create("saliency_estimator", config.saliency, **config.saliency_params)
                if pooling.uses_saliency
                else None
            )
            self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
            self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            unit = images.float().div_(255.0)
            features = self.features((unit - self.mean) / self.std)
            saliency = None
            if self.saliency is not None:
                saliency = self.saliency.estimate(unit)
                saliency = torch.nn.functional.interpolate(
                    saliency.float(), size=features.shape[-2:], mode="bilinear", align_corners=False
                )
            pooled = self.pool(features.float(), saliency) if saliency is not None else self.pool(features.float())
            return torch.nn.functional.normalize(pooled.float(), p=2, dim=1, eps=1e-12)

    return DescriptorPipeline().eval()


def select_device(requested: str | None = None) -> str:
    """``requested`` or ``MANET_DEVICE``, else cuda > mps > cpu."""
    import os

    import torch

    device = requested or os.environ.get("MANET_DEVICE") or ""
    if device and device != "auto":
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ManetError(f"device '{device}' requested but CUDA is not available; use --device cpu")
        return device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"
