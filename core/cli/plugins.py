"""``manet plugins``: what is installed."""

from __future__ import annotations

import click

from manet.cli.common import (
    JSON_OPTION,
    _echo_json,
)


@click.group()
def plugins() -> None:
    """Installed plugins."""


@plugins.command("list")
@JSON_OPTION
@click.option("--kind", help="Only plugins of this kind (e.g. pooling).")
def plugins_list(as_json: bool, kind: str | None) -> None:
    """List every built-in and installed plugin."""
    from manet.plugin_manager import default_registry

    registry = default_registry()
    infos = [info for info in registry.all() if kind is None or info.kind == kind]
    if as_json:
        _echo_json([info.as_dict() for info in infos])
        return
    for info in infos:
        click.echo(f"{info.kind:<19} {info.name:<18} {info.distribution} {info.version}  {info.description}")
    for name, error in registry.failed.items():
        click.echo(f"failed to load plugin {name}: {error}", err=True)
