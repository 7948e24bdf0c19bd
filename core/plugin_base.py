"""Base classes for every kind of manet plugin.

A plugin class has a ``name``, a one-line ``description`` and typed ``defaults``. It is
instantiated with keyword parameters; unknown names and values of the wrong type are
rejected with a :class:`~manet.errors.PluginError` that lists what is accepted.
Plugins depend only on this module, :mod:`manet.hookspecs` and pure math modules.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from manet.errors import PluginError

if TYPE_CHECKING:  # pragma: no cover
    import torch

def _coerce(value: Any, default: Any, plugin: str, key: str) -> Any:
    """Convert ``value`` (often a CLI string) to the type of ``default``."""
    if default is None or value is None:
        return value
    kind = type(default)
    if kind is float:
        return _finite(value, default, plugin, key)
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    if kind is bool:
        if isinstance(value, str) and value.lower() in {"1", "true", "yes", "on"}:
            return True
        if isinstance(value, str) and value.lower() in {"0", "false", "no", "off"}:
            return False
    elif kind in (int, str):  # float: _finite, above
        try:
            if kind is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            return kind(value)
        except (TypeError, ValueError):
            pass
    raise PluginError(
        f"{plugin}: parameter {key}={value!r} should be {kind.__name__} "
        f"(default {default!r})"
    )


def _finite(value: Any, default: float, plugin: str, key: str) -> float:
    """``value`` as a finite float: nan or inf would pass every range check a plugin makes
    (``nan <= 0`` is False) and reach the tensors."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number):
        raise PluginError(f"{plugin}: parameter {key}={value!r} should be a finite float "
                          f"(default {default!r})")
    return number


class Plugin:
    """Common behaviour: name, description, validated parameters."""

    kind: ClassVar[str] = ""
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    #: Parameter names and default values; the type of each default is the parameter's type.
    defaults: ClassVar[Mapping[str, Any]] = {}
    #: Optional allowed values per parameter.
    choices: ClassVar[Mapping[str, tuple[Any, ...]]] = {}

    def __init__(self, **params: Any) -> None:
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            accepted = ", ".join(sorted(self.defaults)) or "none"
            raise PluginError(
                f"{self.kind} '{self.name}' has no parameter {', '.join(unknown)}; "
                f"accepted: {accepted}"
            )
        merged = dict(self.defaults)
        for key, value in params.items():
            merged[key] = _coerce(value, self.defaults[key], f"{self.kind} '{self.name}'", key)
            allowed = self.choices.get(key)
            if allowed is not None and merged[key] not in allowed:
                raise PluginError(
                    f"{self.kind} '{self.name}': {key}={merged[key]!r} is not one of "
                    f"{', '.join(map(str, allowed))}"
                )
        self.params: dict[str, Any] = merged

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"


#: torchvision's ImageNet statistics (images in [0, 1]), the input normalisation of its networks.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Backbone(Plugin):
    """A CNN that maps normalised images (B, 3, H, W) to its last conv feature map (B, C, h, w).

    Each backbone carries its own input normalisation (``input_mean`` / ``input_std``, for
    images in [0, 1]): the statistics its weights were trained with. Feeding a network another
    normalisation costs accuracy (EfficientNet-Lite with ImageNet mean/std: 13 points of top-1
    lost on Grocery fruit), so every caller goes through :meth:`normalise`.
    """

    kind = "backbone"
    input_mean: ClassVar[tuple[float, float, float]] = IMAGENET_MEAN
    input_std: ClassVar[tuple[float, float, float]] = IMAGENET_STD
    #: Channels C of the feature map.
    out_channels: ClassVar[int] = 0
    #: Downsampling factor from input to feature map.
    stride: ClassVar[int] = 32
    #: Output channels of each stage of :meth:`build_stages`, fine to coarse.
    stage_channels: ClassVar[tuple[int, ...]] = ()

    def normalise(self, images: "torch.Tensor") -> "torch.Tensor":
        """Images (B, 3, H, W) in [0, 1] -> this network's input, in float32."""
        import torch

        mean = torch.tensor(self.input_mean, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(self.input_std, device=images.device).view(1, 3, 1, 1)
        return (images.float() - mean) / std

    def imagenet_weights_available(self) -> bool:
        """True when ``build("imagenet")`` needs no network (installed or cached weights)."""
        return False

    def build(self, weights: str) -> "torch.nn.Module":
        """Return the feature extractor in eval mode.

        ``weights`` is ``"imagenet"`` (weights installed with a package, or torchvision's
        downloader and cache), ``"none"`` (random initialisation, an explicit choice) or a
        path to a local checkpoint (a state dict).
        """
        raise NotImplementedError

    def build_stages(self, weights: str) -> "torch.nn.ModuleList":
        """Return the same extractor split into stages (fine to coarse), in eval mode.

        Applying the stages in sequence gives exactly :meth:`build`'s feature map; stage
        ``i`` outputs ``stage_channels[i]`` channels. Attention branches read every stage.
        ``weights`` as for :meth:`build`.
        """
        raise NotImplementedError


class Pooling(Plugin):
    """Aggregates a feature map into one descriptor per image."""

    kind = "pooling"
    #: True when the pooling needs a saliency map (SR-MAC).
    uses_saliency: ClassVar[bool] = False

    def module(self) -> "torch.nn.Module":
        """Return an ``nn.Module`` with ``forward(features, saliency=None) -> (B, C)``.

        ``features`` is (B, C, h, w); ``saliency`` is (B, 1, h, w) in [0, 1] or None.
        """
        raise NotImplementedError


class SaliencyEstimator(Plugin):
    """Estimates where the product is, without training (pseudo-saliency)."""

    kind = "saliency_estimator"

    def estimate(self, images: "torch.Tensor") -> "torch.Tensor":
        """Map RGB images (B, 3, H, W) in [0, 1] to saliency maps (B, 1, H, W) in [0, 1]."""
        raise NotImplementedError


class TextDetector(Plugin):
    """Finds printed text on packs; frozen, never trained with MANet."""

    kind = "text_detector"

    def detect(self, images: "torch.Tensor", size: tuple[int, int]) -> "torch.Tensor":
        """Map RGB images (B, 3, H, W) in [0, 1] to soft text masks (B, 1, *size) in [0, 1]."""
        raise NotImplementedError


class AttentionBranch(Plugin):
    """A trainable attention branch over backbone stages (e.g. MANet's saliency branch)."""

    kind = "attention_branch"

    def build(self, stage_channels: list[int]) -> "torch.nn.Module":
        """Return a module mapping the list of stage feature maps to one logit map (B, 1, h, w)."""
        raise NotImplementedError


class Reranker(Plugin):
    """Re-orders a top-k result using the descriptors of the query and the candidates."""

    kind = "reranker"

    def rerank(self, query: Any, candidates: Any, scores: Any) -> Any:
        """Return new scores for ``candidates`` (k, D) given ``query`` (D,) and ``scores`` (k,)."""
        raise NotImplementedError


class CatalogueAugmenter(Plugin):
    """Transforms the whole catalogue's descriptors once (e.g. database-side augmentation).

    The queries are left alone: evaluation augments the gallery it ranks, and
    ``manet models augment`` stores an augmented catalogue as a new model for SQL search.
    """

    kind = "catalogue_augmenter"

    def augment(self, gallery: Any) -> Any:
        """Return the augmented catalogue descriptors (N, D) for ``gallery`` (N, D), L2-normalised."""
        raise NotImplementedError


DOMAINS = ("catalog", "query")
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Record:
    """One image to ingest, with the product it shows (if known).

    Rows with the same ``sku`` are images of one product. A ``query`` image with a sku is a
    query whose correct product is known (used by evaluation).
    """

    image: Path
    sku: str | None = None
    domain: str = "catalog"
    split: str | None = None
    title: str | None = None
    brand: str | None = None
    description: str | None = None
    category: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)


class Dataset(Plugin):
    """Reads a dataset layout from a path and yields :class:`Record` objects."""

    kind = "dataset"

    def records(self, path: Path) -> Iterator[Record]:
        """Yield one record per image under ``path``.

        Raise :class:`~manet.errors.DatasetError` for a missing path or a malformed file,
        naming the file and line.
        """
        raise NotImplementedError


@dataclass(frozen=True)
class PluginKind:
    """One kind of plugin: its base class, the hook that registers its classes, what it does.

    :data:`PLUGIN_KINDS` is the one declaration of the kinds; the hookspecs
    (:mod:`manet.hookspecs`), :data:`KINDS`, :data:`BASE_CLASSES` and the registry's hook
    table are derived from it.
    """

    base: type[Plugin]
    #: The registry hook, called as ``hook(register)``; pluggy matches hookimpls by this name.
    hook: str
    #: What a plugin of the kind does, in a few words (the hookspec's docstring).
    role: str

    @property
    def name(self) -> str:
        """The kind's name (``pooling``): the base class's ``kind``."""
        return self.base.kind


PLUGIN_KINDS: tuple[PluginKind, ...] = (
    PluginKind(Backbone, "register_backbones", "CNNs giving a feature map"),
    PluginKind(AttentionBranch, "register_attention_branches", "saliency/text branches"),
    PluginKind(Pooling, "register_poolings", "feature map -> global descriptor"),
    PluginKind(TextDetector, "register_text_detectors", "image -> soft text mask"),
    PluginKind(SaliencyEstimator, "register_saliency_estimators", "image -> saliency map"),
    PluginKind(Dataset, "register_datasets", "a path -> ingest records"),
    PluginKind(Reranker, "register_rerankers", "re-order a top-k result"),
    PluginKind(CatalogueAugmenter, "register_catalogue_augmenters",
               "catalogue descriptors -> augmented catalogue descriptors"),
)

#: The kinds' names, in the order ``manet plugins list`` shows them.
KINDS: tuple[str, ...] = tuple(kind.name for kind in PLUGIN_KINDS)

#: Kind name -> the base class its plugins subclass.
BASE_CLASSES: dict[str, type[Plugin]] = {kind.name: kind.base for kind in PLUGIN_KINDS}
