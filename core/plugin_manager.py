"""Plugin manager factory and the registry of plugin classes.

Nothing is loaded at import time: :func:`make_plugin_manager` builds a fresh manager each
time it is called (tests get isolated managers), and :class:`Registry` collects the plugin
classes by calling the registry hooks with a ``register`` callback.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Literal, overload

import pluggy

from manet import hookspecs
from manet.config import LOAD_PLUGINS_ENV
from manet.errors import PluginError
from manet.plugin_base import (
    BASE_CLASSES,
    KINDS,
    PLUGIN_KINDS,
    AttentionBranch,
    Backbone,
    CatalogueAugmenter,
    Dataset,
    Plugin,
    Pooling,
    Reranker,
    SaliencyEstimator,
    TextDetector,
)

#: Built-in plugin modules, registered by dotted name exactly like third-party ones.
DEFAULT_PLUGINS = (
    "manet.plugins.backbones",
    "manet.plugins.attention",
    "manet.plugins.poolings",
    "manet.plugins.saliency",
    "manet.plugins.datasets",
    "manet.plugins.text_detectors",
    "manet.plugins.rerankers",
)

ENTRY_POINT_GROUP = hookspecs.PROJECT_NAME

#: Registry hook name -> plugin kind it registers.
REGISTRY_HOOKS: dict[str, str] = {kind.hook: kind.name for kind in PLUGIN_KINDS}


@dataclass
class PluginManagerInfo:
    """Extra facts about a manager: failed imports and each plugin's distribution."""

    failed: dict[str, str] = field(default_factory=dict)
    dists: dict[str, metadata.Distribution] = field(default_factory=dict)


class ManetPluginManager(pluggy.PluginManager):
    """pluggy's plugin manager with manet's hookspecs and what loading the plugins found."""

    def __init__(self) -> None:
        super().__init__(hookspecs.PROJECT_NAME)
        self.add_hookspecs(hookspecs)
        #: Third-party plugins that failed to import, and the distribution of each loaded one.
        self.manet_info = PluginManagerInfo()


def make_plugin_manager(
    *,
    load_entrypoints: bool = True,
    extra_plugins: Iterable[Any] = (),
    allowed: Iterable[str] | None = None,
) -> ManetPluginManager:
    """Build a new plugin manager with the built-ins and the installed plugins.

    ``allowed`` (entry-point or distribution names: ``--load-plugins`` / ``MANET_LOAD_PLUGINS``
    through :class:`manet.settings.Settings`; empty loads none, None all) restricts which
    third-party plugins load. Built-ins always load. A third-party plugin that fails to import
    is recorded in ``pm.manet_info.failed`` instead of breaking every command.
    """
    pm = ManetPluginManager()
    for dotted in DEFAULT_PLUGINS:
        pm.register(importlib.import_module(dotted), name=dotted)
    if load_entrypoints:
        names = None if allowed is None else set(allowed)
        for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist_name = entry_point.dist.name if entry_point.dist else None
            if names is not None and entry_point.name not in names and dist_name not in names:
                continue
            if pm.get_plugin(entry_point.name) is not None:
                continue
            try:
                plugin = entry_point.load()
            except Exception as exc:  # a broken plugin must not break the CLI
                pm.manet_info.failed[entry_point.name] = f"{type(exc).__name__}: {exc}"
                continue
            pm.register(plugin, name=entry_point.name)
            pm.manet_info.dists[entry_point.name] = entry_point.dist
    for plugin in extra_plugins:
        pm.register(plugin)
    pm.check_pending()
    return pm


@dataclass(frozen=True)
class PluginInfo:
    """A registered plugin class and where it came from."""

    cls: type[Plugin]
    kind: str
    source: str
    distribution: str
    version: str

    @property
    def name(self) -> str:
        return self.cls.name

    @property
    def description(self) -> str:
        return self.cls.description

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "description": self.description,
            "version": self.version,
            "distribution": self.distribution,
            "source": self.source,
            "parameters": dict(self.cls.defaults),
        }


def _distribution_of(pm: ManetPluginManager, plugin_name: str) -> tuple[str, str]:
    dist = pm.manet_info.dists.get(plugin_name)
    if dist is not None:
        return dist.name, dist.version
    if plugin_name.startswith("manet."):
        from manet import __version__

        return "manet-retrieval", __version__
    return "", ""


class Registry:
    """All plugin classes of a plugin manager, by kind and name."""

    def __init__(self, pm: ManetPluginManager) -> None:
        self.pm = pm
        self._plugins: dict[str, dict[str, PluginInfo]] = {kind: {} for kind in KINDS}
        for kind in PLUGIN_KINDS:
            for impl in getattr(pm.hook, kind.hook).get_hookimpls():
                source = impl.plugin_name
                dist, version = _distribution_of(pm, source)

                def register(cls: type, _kind: str = kind.name, _source: str = source,
                             _dist: str = dist, _version: str = version) -> None:
                    self._add(PluginInfo(cls, _kind, _source, _dist, _version))

                impl.function(register)

    def _add(self, info: PluginInfo) -> None:
        base = BASE_CLASSES[info.kind]
        if not (isinstance(info.cls, type) and issubclass(info.cls, base)):
            raise PluginError(
                f"{info.source} registered {info.cls!r} as a {info.kind}; "
                f"it must subclass manet.plugin_base.{base.__name__}"
            )
        if not info.cls.name:
            raise PluginError(f"{info.source}: {info.cls.__name__} has no 'name'; set a class attribute")
        existing = self._plugins[info.kind].get(info.cls.name)
        if existing is not None:
            raise PluginError(
                f"duplicate {info.kind} '{info.cls.name}': registered by {existing.source} "
                f"and by {info.source}; rename one or limit loading with {LOAD_PLUGINS_ENV}"
            )
        self._plugins[info.kind][info.cls.name] = info

    @property
    def failed(self) -> dict[str, str]:
        """Third-party plugins that failed to import: entry-point name -> error."""
        return dict(self.pm.manet_info.failed)

    def names(self, kind: str) -> list[str]:
        return sorted(self._plugins[kind])

    def all(self) -> list[PluginInfo]:
        return [info for kind in KINDS for _, info in sorted(self._plugins[kind].items())]

    def get(self, kind: str, name: str) -> PluginInfo:
        """Look a plugin up; an unknown name raises an error listing the known ones."""
        return self.find((kind,), name)

    def find(self, kinds: Sequence[str], name: str) -> PluginInfo:
        """Plugin ``name`` of the first of ``kinds`` that has one (for an option that takes
        several kinds); an unknown name raises an error listing the names of all ``kinds``."""
        unknown = [kind for kind in kinds if kind not in self._plugins]
        if unknown:
            raise PluginError(f"unknown plugin kind '{unknown[0]}'; known: {', '.join(KINDS)}")
        for kind in kinds:
            if name in self._plugins[kind]:
                return self._plugins[kind][name]
        known = ", ".join(sorted(known for kind in kinds for known in self._plugins[kind])) or "none installed"
        label = kinds[0].replace("_", " ")
        raise PluginError(f"unknown {label} '{name}'; known: {known} (see `manet plugins list`)")

    # One overload per kind, so that create() returns the kind's base class to type checkers.
    @overload
    def create(self, kind: Literal["backbone"], name: str, **params: Any) -> Backbone: ...
    @overload
    def create(self, kind: Literal["attention_branch"], name: str, **params: Any) -> AttentionBranch: ...
    @overload
    def create(self, kind: Literal["pooling"], name: str, **params: Any) -> Pooling: ...
    @overload
    def create(self, kind: Literal["text_detector"], name: str, **params: Any) -> TextDetector: ...
    @overload
    def create(self, kind: Literal["saliency_estimator"], name: str, **params: Any) -> SaliencyEstimator: ...
    @overload
    def create(self, kind: Literal["dataset"], name: str, **params: Any) -> Dataset: ...
    @overload
    def create(self, kind: Literal["reranker"], name: str, **params: Any) -> Reranker: ...
    @overload
    def create(self, kind: Literal["catalogue_augmenter"], name: str, **params: Any) -> CatalogueAugmenter: ...
    @overload
    def create(self, kind: str, name: str, **params: Any) -> Plugin: ...

    def create(self, kind: str, name: str, **params: Any) -> Plugin:
        """Instantiate plugin ``name`` of ``kind`` with validated parameters: an instance of the
        kind's base class (``create("pooling", "gem")`` is a :class:`~manet.plugin_base.Pooling`)."""
        return self.get(kind, name).cls(**params)


def default_registry(allowed: Iterable[str] | None = None) -> Registry:
    """A registry over a fresh plugin manager with built-ins and the installed plugins (only
    those named in ``allowed``, when given: see :func:`make_plugin_manager`)."""
    return Registry(make_plugin_manager(allowed=allowed))
