"""A descriptor pipeline: backbone + weights + input size + pooling + post-processing.

Its config is stored as JSON in the ``models`` table, so a name is all that extraction,
search and evaluation need to rebuild exactly the same pipeline.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from manet.config import DEFAULT_BACKBONE, DEFAULT_SALIENCY_ESTIMATOR
from manet.errors import ManetError, PluginError, WeightsError, flattened
from manet.plugin_manager import Registry
from manet.safe_files import load_torch_file
from manet.settings_json import settings_from_json

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from manet.nn.modules import DescriptorPipeline

POSTPROCESSING = ("l2",)


@dataclass(frozen=True)
class PipelineConfig:
    """Everything needed to rebuild a descriptor extractor."""

    backbone: str = DEFAULT_BACKBONE
    weights: str = "imagenet"
    image_size: int = 224
    pooling: str = "srmac"
    pooling_params: dict[str, Any] = field(default_factory=dict)
    saliency: str = DEFAULT_SALIENCY_ESTIMATOR
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
    def from_dict(cls, data: Any) -> "PipelineConfig":
        """The config of the JSON object ``data`` (user settings or a stored row), its types and
        the values checked that need no plugin."""
        config = settings_from_json(cls, data, "pipeline")
        config.check_values()
        return config

    def check_values(self) -> None:
        """The checks that need no plugin: input size and post-processing."""
        if not 32 <= int(self.image_size) <= 4096:
            raise PluginError(f"image size {self.image_size} is out of range; use 32..4096 pixels")
        if self.postprocess not in POSTPROCESSING:
            raise PluginError(
                f"unknown post-processing '{self.postprocess}'; known: {', '.join(POSTPROCESSING)}"
            )

    def validate(self, registry: Registry) -> int:
        """Check plugin names and parameters; return the descriptor dimension."""
        self.check_values()
        backbone = registry.create("backbone", self.backbone)
        pooling = registry.create("pooling", self.pooling, **self.pooling_params)
        if pooling.uses_saliency:
            registry.create("saliency_estimator", self.saliency, **self.saliency_params)
        if self.projection is not None:
            return self._projection_dim(int(backbone.out_channels))
        return int(backbone.out_channels)

    def _projection_dim(self, input_dim: int) -> int:
        from manet.nn.whitening import PCA_WHITEN

        kind, dims = self.projection.get("kind"), self.projection.get("output_dim")
        if kind != PCA_WHITEN or not isinstance(dims, int) or not 1 <= dims <= input_dim \
                or self.projection.get("input_dim") != input_dim:
            raise PluginError(f"invalid projection {self.projection!r}; make whitened models with "
                              f"manet models whiten BASE --dims D --name NEW")
        return dims


def _network(config: PipelineConfig, registry: Registry, manet: Any = None) -> "torch.nn.Module":
    """A module mapping normalised images to (X, learned saliency at X's size or None).

    ``manet``: a MANet already in memory (a training run's) instead of the checkpoint's.
    """
    from manet.nn.modules import Plain, Trained

    if config.manet is None:
        return Plain(registry.create("backbone", config.backbone).build(config.weights))
    return Trained(manet if manet is not None else _load_manet(config, registry))


def _load_manet(config: PipelineConfig, registry: Registry):
    """The trained MANet of ``config``, from its checkpoint."""
    from manet.nn.network import MANetConfig, build_manet

    checkpoint = Path(config.checkpoint or "")
    fix = "retrain with manet train, or restore the file"
    if not config.checkpoint or not checkpoint.exists():
        raise WeightsError(f"trained checkpoint {config.checkpoint or '(none recorded)'} is missing; {fix}")
    state = load_torch_file(checkpoint, what="trained checkpoint", fix=fix)
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise WeightsError(f"trained checkpoint {checkpoint} holds no network weights (no 'model' state dict); {fix}")
    # The backbone's own weights come from the checkpoint: do not download them again.
    model = build_manet(MANetConfig.from_dict({**config.manet, "weights": "none"}), registry)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise WeightsError(f"trained checkpoint {checkpoint} does not fit the model's MANet settings "
                           f"({flattened(exc)}); {fix}") from None
    return model


#: ``saliency_source`` of :meth:`manet.nn.modules.DescriptorPipeline.attention_maps`, besides "<estimator> estimate".
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


def build_pipeline(config: PipelineConfig, registry: Registry, projection: Any = None,
                   manet: Any = None, *, east_model: str | Path | None = None) -> "DescriptorPipeline":
    """Build the :class:`manet.nn.modules.DescriptorPipeline` module for ``config``
    (loads weights), in eval mode.

    ``projection`` (a :class:`manet.nn.whitening.Projection`) is required when ``config`` has one:
    its arrays live in the database (:func:`manet.nn.whitening.load_projection`). ``manet``: the
    network of a trained ``config`` already in memory (training evaluates its epochs with it),
    instead of loading its checkpoint. ``east_model``: the EAST graph the settings configure
    (``MANET_EAST_MODEL``), for the text mask's default detector.
    """
    from manet.nn.modules import DescriptorPipeline

    if (config.projection is None) != (projection is None):
        raise ManetError("a whitened pipeline needs its stored projection (and only a whitened one takes one); "
                         "build it through manet.Retriever.pipeline")
    # Plugins are created in the order the pipeline always made them (backbone weights may be
    # drawn from the global RNG).
    backbone = registry.create("backbone", config.backbone)
    pooling = registry.create("pooling", config.pooling, **config.pooling_params)
    network = _network(config, registry, manet)
    pool = pooling.module()
    # Pseudo-saliency serves untrained pipelines; a trained one uses its learned saliency, or
    # uniform region weights when that branch is switched off.
    estimator = (registry.create("saliency_estimator", config.saliency, **config.saliency_params)
                 if pooling.uses_saliency and config.manet is None else None)
    text = None
    if config.text_mask:
        from manet.plugins.text_detectors import create_text_detector

        text = create_text_detector(registry, config.text_detector, east_model)
    return DescriptorPipeline(backbone, network, pool, uses_saliency=pooling.uses_saliency, estimator=estimator,
                              text=text, projection=projection, learned_saliency=config.learned_saliency,
                              saliency_name=config.saliency).eval()
