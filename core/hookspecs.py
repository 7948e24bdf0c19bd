"""The plugin hooks of manet. Every registry hook receives a ``register`` callback.

A plugin module implements any of these with ``@manet.hookimpl`` and calls
``register(SomePluginClass)`` once per plugin class it provides. There is one registry hook
per plugin kind (``register_backbones``, ``register_poolings``, ...): they are made here from
:data:`manet.plugin_base.PLUGIN_KINDS`, the one declaration of the kinds, so a new kind
gets its hookspec by being declared there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

from manet.plugin_base import PLUGIN_KINDS, PluginKind

PROJECT_NAME = "manet"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

Register = Callable[[type], None]


def _registry_hookspec(kind: PluginKind) -> Callable[[Register], None]:
    """The hookspec ``<kind.hook>(register)`` of ``kind``, documented with its base class."""

    def spec(register: Register) -> None:
        """Replaced by the kind's docstring below."""

    spec.__name__ = spec.__qualname__ = kind.hook
    spec.__doc__ = f"Register :class:`manet.plugin_base.{kind.base.__name__}` subclasses ({kind.role})."
    return hookspec(spec)


#: Registry hook name -> its hookspec, one per plugin kind.
REGISTRY_HOOKSPECS: dict[str, Callable[[Register], None]] = {
    kind.hook: _registry_hookspec(kind) for kind in PLUGIN_KINDS
}
# pluggy reads hookspecs from a module's attributes (pm.add_hookspecs(manet.hookspecs)), so each
# registry hookspec is also this module's attribute of its name: manet.hookspecs.register_poolings.
globals().update(REGISTRY_HOOKSPECS)


@hookspec
def register_commands(cli: Any) -> None:
    """Add click commands to the ``manet`` command group ``cli``."""
