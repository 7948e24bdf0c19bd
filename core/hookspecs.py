"""The plugin hooks of manet. Every registry hook receives a ``register`` callback.

A plugin module implements any of these with ``@manet.hookimpl`` and calls
``register(SomePluginClass)`` once per plugin class it provides.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

PROJECT_NAME = "manet"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

Register = Callable[[type], None]


@hookspec
def register_backbones(register: Register) -> None:
    """Register :class:`manet.plugin_base.Backbone` subclasses (CNNs giving a feature map)."""


@hookspec
def register_attention_branches(register: Register) -> None:
    """Register :class:`manet.plugin_base.AttentionBranch` subclasses (saliency/text branches)."""


@hookspec
def register_poolings(register: Register) -> None:
    """Register :class:`manet.plugin_base.Pooling` subclasses (feature map -> global descriptor)."""


@hookspec
def register_text_detectors(register: Register) -> None:
    """Register :class:`manet.plugin_base.TextDetector` subclasses (image -> soft text mask)."""


@hookspec
def register_saliency_estimators(register: Register) -> None:
    """Register :class:`manet.plugin_base.SaliencyEstimator` subclasses (image -> saliency map)."""


@hookspec
def register_datasets(register: Register) -> None:
    """Register :class:`manet.plugin_base.Dataset` subclasses (a path -> ingest records)."""


@hookspec
def register_rerankers(register: Register) -> None:
    """Register :class:`manet.plugin_base.Reranker` subclasses (re-order a top-k result)."""


@hookspec
def register_commands(cli: Any) -> None:
    """Add click commands to the ``manet`` command group ``cli``."""
