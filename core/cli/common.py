"""What every ``manet`` command module shares: the invocation state, JSON output, errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from manet.errors import ManetError, one_line
from manet.safe_files import ReadLimits
from manet.settings import Settings

JSON_OPTION = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
#: Every command that deletes or replaces stored data takes --yes and otherwise asks.
YES_OPTION = click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")


def confirm_destructive(yes: bool, question: str) -> None:
    """Ask ``question`` unless ``yes``; a declined (or unanswerable) question exits 1 with nothing changed."""
    if yes:
        return
    try:
        click.confirm(f"{question} (--yes skips this question)", abort=True, err=True)
    except click.Abort:  # "n", or no terminal to answer on (stdin closed or piped empty)
        click.echo(err=True)  # end the prompt's line
        raise ManetError("not confirmed, nothing was changed; answer y at the prompt or pass --yes") from None


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def _params(pairs: tuple[str, ...], option: str = "-o/--option") -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint=option)
        out[key.strip()] = value
    return out


def _connected_url(ctx: click.Context) -> str | None:
    state = ctx.find_object(State)
    return state.connected_url() if state is not None else None


class ManetGroup(click.Group):
    """Turns :class:`ManetError`, database outages and writes to a read-only replica into
    one-line errors with exit 1."""

    def invoke(self, ctx: click.Context) -> Any:
        import psycopg
        import sqlalchemy.exc

        try:
            return super().invoke(ctx)
        except ManetError as exc:
            raise click.ClickException(str(exc)) from None
        except (sqlalchemy.exc.DataError, psycopg.DataError) as exc:
            reason = one_line(exc)
            raise click.ClickException(f"invalid input value: {reason}; check the option values") from None
        except sqlalchemy.exc.OperationalError as exc:
            reason = one_line(exc) if exc.orig else "connection failed"
            url = _connected_url(ctx)
            raise click.ClickException(
                f"lost the database connection to {url or 'PostgreSQL'}: {reason}; start the server "
                f"and re-run: finished batches are kept"
            ) from None
        except (sqlalchemy.exc.InternalError, psycopg.errors.ReadOnlySqlTransaction) as exc:
            if not isinstance(getattr(exc, "orig", None) or exc, psycopg.errors.ReadOnlySqlTransaction):
                raise
            url = _connected_url(ctx)
            raise click.ClickException(
                f"{url or 'the database'} is read-only (a standby replica) and this command writes; point "
                f"MANET_DATABASE_URL at the primary server (replicas serve searches only)"
            ) from None


class State:
    """The invocation's :class:`~manet.settings.Settings` (built once from the global options and
    the environment) and the Retriever and Admin built from them on first use, shared by the
    sub-commands."""

    def __init__(self, settings: Settings, quiet: bool = False) -> None:
        self.settings = settings
        self.progress = not quiet and sys.stderr.isatty()
        self._retriever = None
        self._admin = None

    @property
    def database_url(self) -> str | None:
        return self.settings.database_url

    @property
    def home(self) -> Path | None:
        return self.settings.home

    @property
    def device(self) -> str | None:
        return self.settings.device

    @device.setter
    def device(self, device: str | None) -> None:
        """Another device for this invocation (``manet train --device``), before the Retriever is built."""
        self.settings = self.settings.with_options(device=device)

    @property
    def precision(self) -> str:
        return self.settings.precision

    @property
    def limits(self) -> ReadLimits:
        """Byte cap, per-file time budget and pixel cap for every image file this invocation reads."""
        return self.settings.limits

    def connected_url(self) -> str | None:
        return self._retriever.connected_url if self._retriever is not None else None

    @property
    def retriever(self):
        if self._retriever is None:
            from manet.api import Retriever

            self._retriever = Retriever(settings=self.settings, progress=self.progress)
        return self._retriever

    @property
    def admin(self):
        if self._admin is None:
            from manet.admin import Admin

            self._admin = Admin(self.settings)
        return self._admin


pass_state = click.make_pass_decorator(State)


class BatchSizeType(click.ParamType):
    """A positive integer, or ``auto`` (returned as None: the extraction code chooses)."""

    name = "N|auto"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int | None:
        if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
            return None
        try:
            size = int(value)
        except (TypeError, ValueError):
            size = 0
        if size < 1:
            self.fail(f"{value!r} is neither a positive integer nor 'auto'", param, ctx)
        return size


BATCH_SIZE = BatchSizeType()
