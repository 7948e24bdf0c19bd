"""``manet db``: migrations, the database URL, the embedded server (through :class:`manet.admin.Admin`)."""

from __future__ import annotations

import sys

import click

from manet.cli.common import JSON_OPTION, YES_OPTION, State, _echo_json, confirm_destructive, pass_state


@click.group()
def db() -> None:
    """Database: migrations, URL, embedded server."""


@db.command("upgrade")
@click.argument("revision", default="head")
@pass_state
def db_upgrade(state: State, revision: str) -> None:
    """Apply migrations up to REVISION (default: head)."""
    click.echo(f"database at {state.admin.upgrade(revision)}")


@db.command("downgrade")
@click.argument("revision")
@YES_OPTION
@pass_state
def db_downgrade(state: State, revision: str, yes: bool) -> None:
    """Revert migrations down to REVISION ('base' drops every table)."""
    confirm_destructive(yes, f"Downgrade the schema to {revision}? Tables above it are dropped")
    click.echo(f"database at {state.admin.downgrade(revision) or 'base'}")


@db.command("current")
@JSON_OPTION
@pass_state
def db_current(state: State, as_json: bool) -> None:
    """Show the schema revision and server versions."""
    info = state.admin.versions()
    if as_json:
        _echo_json(info)
    else:
        click.echo(f"revision {info['revision'] or 'none'} (head {info['head']}); "
                   f"PostgreSQL {info['postgresql']}, pgvector {info['pgvector']}")


@db.command("check")
@JSON_OPTION
@pass_state
def db_check(state: State, as_json: bool) -> None:
    """Compare the database with the schema manet expects (exit 1 on drift)."""
    report = state.admin.check()
    if as_json:
        _echo_json(report.as_dict())
    elif report.ok:
        click.echo(f"schema at {report.head}: no drift")
    else:
        if report.revision != report.head:
            click.echo(f"schema at {report.revision or 'nothing'}, not {report.head}: run manet db upgrade")
        for line in report.drift:
            click.echo(f"drift: {line}")
    if not report.ok:
        sys.exit(1)


@db.command("grant-reader")
@click.argument("role")
@click.option("--password", help="Set this password for the role (not needed on the embedded server).")
@pass_state
def db_grant_reader(state: State, role: str, password: str | None) -> None:
    """Create/grant ROLE: read-only access to the tables and the search functions."""
    state.admin.grant_reader(role, password)
    click.echo(f"role '{role}' can read and search, not write")


@db.command("url")
@pass_state
def db_url(state: State) -> None:
    """Print the database URL in use (starting the embedded server if needed)."""
    click.echo(state.admin.url())


@db.command("stop")
@pass_state
def db_stop(state: State) -> None:
    """Stop the embedded PostgreSQL server."""
    click.echo("stopped" if state.admin.stop_embedded() else "not running")
