"""``manet doctor``: the installation checks of :mod:`manet.tools.doctor` as a table or JSON."""

from __future__ import annotations

import click

from manet.cli.common import JSON_OPTION, State, _echo_json, pass_state
from manet.tools.doctor import FAIL, Check, overall


def format_checks(checks: list[Check]) -> str:
    """One line per check (status, name, detail), then an indented ``fix:`` line where needed."""
    width = max(len(check.name) for check in checks) + 2
    lines = []
    for check in checks:
        lines.append(f"{check.status:<5}{check.name:<{width}}{check.detail}")
        if check.fix:
            lines.append(f"{'':<{5 + width}}fix: {check.fix}")
    failed = sum(check.status == FAIL for check in checks)
    warned = sum(check.status == "warn" for check in checks)
    lines.append(f"{failed} failed, {warned} warning(s)" if failed or warned else "all checks passed")
    return "\n".join(lines)


@click.command("doctor")
@JSON_OPTION
@pass_state
def doctor(state: State, as_json: bool) -> None:
    """Check the installation: database, pgvector, migrations, torch, weights, plugins.

    Read only: starts the embedded server like any command, never migrates or downloads.
    Exit 1 when a check failed (warnings allowed).
    """
    checks = state.admin.doctor()
    status = overall(checks)
    if as_json:
        _echo_json({"status": status, "checks": [check.as_dict() for check in checks]})
    else:
        click.echo(format_checks(checks))
    if status == FAIL:
        raise click.exceptions.Exit(1)
