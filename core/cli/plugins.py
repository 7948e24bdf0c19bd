"""``manet plugins``: what is installed (through :class:`manet.admin.Admin`)."""

from __future__ import annotations

import click

from manet.cli.common import JSON_OPTION, State, _echo_json, pass_state


@click.group()
def plugins() -> None:
    """Installed plugins."""


@plugins.command("list")
@JSON_OPTION
@click.option("--kind", help="Only plugins of this kind (e.g. pooling).")
@pass_state
def plugins_list(state: State, as_json: bool, kind: str | None) -> None:
    """List every built-in and installed plugin."""
    infos = state.admin.plugins(kind)
    if as_json:
        _echo_json([info.as_dict() for info in infos])
        return
    for info in infos:
        click.echo(f"{info.kind:<19} {info.name:<18} {info.distribution} {info.version}  {info.description}")
    for name, error in state.admin.failed_plugins().items():
        click.echo(f"failed to load plugin {name}: {error}", err=True)
