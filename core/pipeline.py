"""A descriptor pipeline: backbone + weights + input size + pooling + post-processing.

Its config is stored as JSON in the ``models`` table, so a name is all that extraction,
search and evaluation need to rebuild exactly the same pipeline.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from manet.config import DEFAULT_BACKBONE
from manet.errors import ManetError, PluginError, WeightsError
from manet.plugin_manager import Registry

POSTPROCESSING = ("l2",)


@dataclass(frozen=True)
class PipelineConfig:
    """Everything needed to rebuild a descriptor extractor."""

    backbone: str = DEFAULT_BACKBONE
    weights: str = "imagenet"
    image_size: int = 224
    pooling: str = "srmac"
    pooling_params: dict[str, Any] = field(default_factory=dict)
    saliency: str = "spectral-residual"
    saliency_params: dict[str, Any] = field(default_factory=dict)
    postprocess: str = "l2"
    #: Trained MANet (``manet train``): its config and checkpoint; None for plain backbones.
    manet: dict[str, Any] | None = None
    checkpoint: str | None = None
    #: Use the learned saliency (SR-MAC weights, Eq. 3) instead of the estimator above.
    learned_saliency: bool = False
    #: Weight features with the text mask (Eq. 2-3) from ``text_detector``.
    text_mask: bool = False
    text_detector: str = ""
    #: A PCA-whitening applied after the L2 (``manet models whiten``): its kind, base model and
    #: input/output dims; the fitted arrays are in the ``projections`` table. None: no projection.
    projection: dict[str, Any] | None = None

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
        if self.projection is not None:
            return self._projection_dim(int(backbone.out_channels))
        return int(backbone.out_channels)

    def _projection_dim(self, input_dim: int) -> int:
        from manet.whitening import PCA_WHITEN

        kind, dims = self.projection.get("kind"), self.projection.get("output_dim")
        if kind != PCA_WHITEN or not isinstance(dims, int) or not 1 <= dims <= input_dim \
                or self.projection.get("input_dim") != input_dim:
            raise PluginError(f"invalid projection {self.projection!r}; make whitened models with "
                              f"manet models whiten BASE --dims D --name NEW")
        return dims


def _network(config: PipelineConfig, registry: Registry, manet: Any = None):
    """A module mapping normalised images to (X, learned saliency at X's size or None).

    ``manet``: a MANet already in memory (a training run's) instead of the checkpoint's.
    """
    import torch

    if config.manet is None:
        backbone = registry.create("backbone", config.backbone).build(config.weights)

        class Plain(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.features = backbone

            def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, None]:
                return self.features(images), None

        return Plain()

    model = manet if manet is not None else _load_manet(config, registry)

    class Trained(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.manet = model

        def forward(self, images: torch.Tensor):
            return self.manet.attend(images)

    return Trained()


def _load_manet(config: PipelineConfig, registry: Registry):
    """The trained MANet of ``config``, from its checkpoint."""
    import torch

    from manet.manet_model import MANetConfig, build_manet

    checkpoint = Path(config.checkpoint or "")
    if not checkpoint.is_file():
        raise WeightsError(f"trained checkpoint {checkpoint} is missing; retrain with manet train, "
                           f"or restore the file")
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        # The backbone's own weights come from the checkpoint: do not download them again.
        model = build_manet(MANetConfig.from_dict({**config.manet, "weights": "none"}), registry)
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError, OSError) as exc:
        raise WeightsError(f"cannot load trained checkpoint {checkpoint}: {str(exc).splitlines()[0]}") from None
    return model


#: ``saliency_source`` of :meth:`DescriptorPipeline.attention_maps`, besides "<estimator> estimate".
LEARNED = "learned MANet branch"
UNIFORM = "uniform: branch off"


@dataclass(frozen=True)
class Attention:
    """The maps a pipeline weights X with (None: that factor of Eq. 3 is 1) and the saliency
    map its pooling gets (None: the pooling takes none), all at X's size."""

    learned: Any
    text: Any
    pool_saliency: Any
    #: Where :attr:`saliency` comes from: LEARNED, UNIFORM, "<estimator> estimate"; None: no saliency.
    source: str | None

    @property
    def saliency(self) -> Any:
        """The saliency map the pipeline uses anywhere (Eq. 3 or its pooling), or None."""
        return self.learned if self.learned is not None else self.pool_saliency


def build_pipeline(config: PipelineConfig, registry: Registry, projection: Any = None, manet: Any = None):
    """Build the :class:`DescriptorPipeline` module for ``config`` (loads weights).

    ``projection`` (a :class:`manet.whitening.Projection`) is required when ``config`` has one:
    its arrays live in the database (:func:`manet.whitening.load_projection`). ``manet``: the
    network of a trained ``config`` already in memory (training evaluates its epochs with it),
    instead of loading its checkpoint.
    """
    import torch

    from manet.manet_math import weight_features
    from manet.pooling import salient_cells, srmac, srmac_weights
    from manet.whitening import whiten

    if (config.projection is None) != (projection is None):
        raise ManetError("a whitened pipeline needs its stored projection (and only a whitened one takes one); "
                         "build it through manet.Retriever.pipeline")

    class DescriptorPipeline(torch.nn.Module):
        """uint8 images (B, 3, S, S) -> L2-normalised descriptors (B, D), all on one device.

        X from the backbone (or a trained MANet); Eq. 3 weighting by the learned saliency and
        the text mask when the pipeline uses them; SR-MAC region weights from the learned
        saliency, else from the saliency estimator.
        """

        def __init__(self) -> None:
            super().__init__()
            backbone = registry.create("backbone", config.backbone)
            pooling = registry.create("pooling", config.pooling, **config.pooling_params)
            self.dim = int(backbone.out_channels)
            self.backbone = backbone  # its input normalisation
            self.network = _network(config, registry, manet)
            self.pool = pooling.module()
            self.uses_saliency = pooling.uses_saliency
            # Pseudo-saliency serves untrained pipelines; a trained one uses its learned
            # saliency, or uniform region weights when that branch is switched off.
            self.estimator = (
                registry.create("saliency_estimator", config.saliency, **config.saliency_params)
                if pooling.uses_saliency and config.manet is None
                else None
            )
            self.text = None
            if config.text_mask:
                from manet.plugins.text_detectors import default_text_detector

                self.text = registry.create("text_detector", config.text_detector or default_text_detector())
            self.whitened = projection is not None
            if projection is not None:
                self.dim = projection.output_dim
                self.register_buffer("whiten_mean", torch.from_numpy(projection.mean), persistent=False)
                self.register_buffer("whiten_matrix", torch.from_numpy(projection.matrix), persistent=False)

        def _network_maps(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
            """Images in [0, 1], then X and the learned saliency (or None) in float32."""
            unit = images.float().div_(255.0)
            features, learned = self.network(self.backbone.normalise(unit))  # bf16 under autocast
            return unit, features.float(), learned.float() if learned is not None else None

        def forward(self, images: torch.Tensor, text_mask: torch.Tensor | None = None) -> torch.Tensor:
            """``text_mask``: T_m (B, 1, h, w) computed already (training caches it per image);
            None runs the pipeline's text detector when it uses one."""
            unit, features, learned = self._network_maps(images)
            # Everything after the network in float32: the saliency estimate and masks are
            # thresholded at their mean, and a bf16 map flips pixels near it (measured: one
            # SR-MAC descriptor in 30 moved to cosine 0.91); whitening divides by small variances.
            with torch.autocast(unit.device.type, enabled=False):
                return self._describe(unit, features, learned, text_mask)

        def attention_maps(self, images: torch.Tensor) -> dict[str, Any]:
            """What the descriptor of uint8 images (B, 3, S, S) is made from, at X's size, float32.

            ``features`` X (B, C, h, w) before Eq. 3; ``saliency`` (B, 1, h, w): the learned map
            (Eq. 3 and SR-MAC), the estimator's (SR-MAC only) or ones (SR-MAC with the branch
            off), None when the pipeline uses none, named by ``saliency_source``; ``text_mask``
            T_m or None; with SR-MAC, its ``regions`` ((top, left, height, width) cells, the
            global one first), their ``region_weights`` (B, R) and the salient cells S
            (``salient``, bool), else None.
            """
            unit, features, learned = self._network_maps(images)
            with torch.autocast(unit.device.type, enabled=False):
                seen = self._attention(unit, features, learned)
                regions = weights = salient = None
                if self.pool.function is srmac:  # the pooling's own weights, from the same function
                    height, width = features.shape[-2:]
                    regions, weights = srmac_weights(seen.pool_saliency, height, width, **self.pool.fixed)
                    salient = salient_cells(seen.pool_saliency, (height, width))
            return {"features": features, "saliency": seen.saliency, "saliency_source": seen.source,
                    "text_mask": seen.text, "regions": regions, "region_weights": weights, "salient": salient}

        def _attention(self, unit: torch.Tensor, features: torch.Tensor,
                       learned: torch.Tensor | None, text: torch.Tensor | None = None) -> Attention:
            """The maps that weight X (Eq. 3) and the saliency that the pooling gets."""
            learned = learned if config.learned_saliency else None
            if self.text is None:
                text = None
            elif text is None:
                text = self.text.detect(unit, tuple(features.shape[-2:]))
            if not self.uses_saliency:
                return Attention(learned, text, None, LEARNED if learned is not None else None)
            if learned is not None:
                return Attention(learned, text, learned, LEARNED)
            if self.estimator is not None:
                estimate = torch.nn.functional.interpolate(  # the estimator's map is smooth already
                    self.estimator.estimate(unit).float(), size=features.shape[-2:], mode="bilinear",
                    align_corners=False)
                return Attention(None, text, estimate, f"{config.saliency} estimate")
            # Branch switched off: uniform region weights.
            return Attention(None, text, torch.ones_like(features[:, :1]), UNIFORM)

        def _describe(self, unit: torch.Tensor, features: torch.Tensor,
                      learned: torch.Tensor | None, text: torch.Tensor | None) -> torch.Tensor:
            seen = self._attention(unit, features, learned, text)
            if seen.learned is not None or seen.text is not None:
                features = weight_features(features, seen.learned, seen.text)
            if self.uses_saliency:
                pooled = self.pool(features, seen.pool_saliency)
            else:
                pooled = self.pool(features)
            descriptors = torch.nn.functional.normalize(pooled.float(), p=2, dim=1, eps=1e-12)
            if not self.whitened:
                return descriptors
            return whiten(descriptors, self.whiten_mean, self.whiten_matrix)

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
