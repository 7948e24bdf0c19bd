"""``manet db``: migrations, the database URL, the embedded server."""

from __future__ import annotations

import sys

import click

from manet import config
from manet.cli.common import (
    JSON_OPTION,
    YES_OPTION,
    State,
    _echo_json,
    confirm_destructive,
    pass_state,
)
from manet.errors import ManetError


@click.group()
def db() -> None:
    """Database: migrations, URL, embedded server."""


def _database(state: State):
    from manet.store.database import Database

    return Database(state.database_url, state.home)


@db.command("upgrade")
@click.argument("revision", default="head")
@pass_state
def db_upgrade(state: State, revision: str) -> None:
    """Apply migrations up to REVISION (default: head)."""
    database = _database(state)
    database.upgrade(revision)
    click.echo(f"database at {database.current_revision()}")


@db.command("downgrade")
@click.argument("revision")
@YES_OPTION
@pass_state
def db_downgrade(state: State, revision: str, yes: bool) -> None:
    """Revert migrations down to REVISION ('base' drops every table)."""
    confirm_destructive(yes, f"Downgrade the schema to {revision}? Tables above it are dropped")
    database = _database(state)
    database.downgrade(revision)
    click.echo(f"database at {database.current_revision() or 'base'}")


@db.command("current")
@JSON_OPTION
@pass_state
def db_current(state: State, as_json: bool) -> None:
    """Show the schema revision and server versions."""
    database = _database(state)
    info = {"revision": database.current_revision(), "head": database.head_revision(),
            **database.server_versions()}
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
    database = _database(state)
    current, head = database.current_revision(), database.head_revision()
    drift = [repr(diff) for diff in database.schema_drift()] if current == head else []
    report = {"revision": current, "head": head, "drift": drift, "ok": current == head and not drift}
    if as_json:
        _echo_json(report)
    elif report["ok"]:
        click.echo(f"schema at {head}: no drift")
    else:
        if current != head:
            click.echo(f"schema at {current or 'nothing'}, not {head}: run manet db upgrade")
        for line in drift:
            click.echo(f"drift: {line}")
    if not report["ok"]:
        sys.exit(1)


@db.command("grant-reader")
@click.argument("role")
@click.option("--password", help="Set this password for the role (not needed on the embedded server).")
@pass_state
def db_grant_reader(state: State, role: str, password: str | None) -> None:
    """Create/grant ROLE: read-only access to the tables and the search functions."""
    _database(state).grant_reader(role, password)
    click.echo(f"role '{role}' can read and search, not write")


@db.command("url")
@pass_state
def db_url(state: State) -> None:
    """Print the database URL in use (starting the embedded server if needed)."""
    from manet.store.database import resolve_url

    click.echo(config.libpq_url(resolve_url(state.database_url, state.home)))


@db.command("stop")
@pass_state
def db_stop(state: State) -> None:
    """Stop the embedded PostgreSQL server."""
    from manet.store import embedded

    if state.database_url:
        raise ManetError("MANET_DATABASE_URL points at an external server; stop it with its own tools")
    home = state.home or config.default_home()
    click.echo("stopped" if embedded.stop(home) else "not running")
