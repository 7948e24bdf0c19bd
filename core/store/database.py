"""Database connection: the URL, the engine, migrations and a fast path for binary COPY.

``MANET_DATABASE_URL`` selects any PostgreSQL with pgvector; without it the embedded
server (:mod:`manet.store.embedded`) is started in ``$MANET_HOME/pgdata``.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from manet import config
from manet.errors import DatabaseError, one_line
from manet.store import embedded

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np


def resolve_url(url: str | None = None, home: Path | None = None) -> str:
    """The SQLAlchemy URL to use: ``url`` (``--database-url`` / ``MANET_DATABASE_URL``, through
    :class:`manet.settings.Settings`), else the embedded server under ``home`` (default: the user
    data dir)."""
    if not url:
        url = embedded.start(home or config.default_home())
    return config.sqlalchemy_url(url)


#: pg_advisory_xact_lock key serialising migrations ("manet" in ASCII).
MIGRATION_LOCK = 0x6D616E6574


def as_array(value: Any) -> "np.ndarray":
    """A float32 numpy vector from whatever the driver returned for a pgvector column
    (a ``pgvector.Vector`` where the type is registered on the connection, else text)."""
    import numpy as np

    if hasattr(value, "to_numpy"):
        return np.asarray(value.to_numpy(), dtype=np.float32)
    if isinstance(value, str):
        return np.asarray(value.strip("[]").split(","), dtype=np.float32)
    return np.asarray(value, dtype=np.float32)


def vector_connection(pooled: Any) -> Any:
    """The psycopg connection of a pooled connection, with pgvector's types registered once
    (a catalogue lookup each time would cost a round trip). ``pooled.info`` lives exactly as
    long as the underlying connection, so a reconnected one registers again."""
    from pgvector.psycopg import register_vector

    if not pooled.info.get("pgvector_registered"):
        register_vector(pooled.driver_connection)
        pooled.driver_connection.commit()
        pooled.info["pgvector_registered"] = True
    return pooled.driver_connection


def redact(url: str) -> str:
    """The URL with any password hidden, for messages."""
    return re.sub(r"(://[^:/@]+:)[^@]+@", r"\1***@", url)


def _migrations_dir() -> Path:
    import manet.migrations

    return Path(manet.migrations.__file__).parent


def alembic_config(connection: Connection | None = None, url: str | None = None):
    """An Alembic config pointing at the migrations shipped inside the package."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(_migrations_dir()))
    if url:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["configure_logging"] = False
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def _outage_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean "the database went away", as opposed to bad SQL or bad data."""
    import psycopg

    return (sa.exc.OperationalError, sa.exc.InterfaceError, psycopg.OperationalError, psycopg.InterfaceError)


def with_reconnect(action: Callable[[], Any], *, max_outage: float, say: Callable[[str], None]) -> Any:
    """Run ``action``; while the database is unreachable, retry with exponential backoff
    (up to ``max_outage`` seconds in all), then give up with a clear error."""
    delay, started = 0.5, None
    while True:
        try:
            return action()
        except _outage_errors() as exc:
            started = started if started is not None else time.monotonic()
            reason = one_line(exc)
            if time.monotonic() - started > max_outage:
                raise DatabaseError(
                    f"database unreachable for {max_outage:.0f} s ({reason}); stopping, finished batches "
                    f"are kept: run the command again when the database is back"
                ) from None
            say(f"database unavailable ({reason}); retrying in {delay:.1f} s")
            time.sleep(delay)
            delay = min(delay * 2, 10.0)


class Database:
    """One PostgreSQL database holding the catalogue, models and descriptors."""

    def __init__(self, url: str | None = None, home: Path | None = None) -> None:
        self.url = resolve_url(url, home)
        self.engine: Engine = sa.create_engine(self.url, pool_pre_ping=True)
        self.check_connection()

    def __repr__(self) -> str:
        return f"Database({redact(self.url)!r})"

    @functools.cached_property
    def search_engine(self) -> Engine:
        """A pool for searches without the liveness ping: a ping is a round trip, a third of a
        fast search's time. Search retries once on a fresh connection instead
        (:func:`manet.search.query.run_search`)."""
        return sa.create_engine(self.url, pool_pre_ping=False)

    def check_connection(self) -> None:
        """Fail fast with a one-line message naming the URL when the server is unreachable."""
        try:
            with self.engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        except sa.exc.OperationalError as exc:
            reason = one_line(exc)
            raise DatabaseError(
                f"cannot connect to PostgreSQL at {redact(self.url)}: {reason}; start the server, "
                f"or unset MANET_DATABASE_URL to use the embedded one"
            ) from None

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """A transaction on a pooled connection."""
        with self.engine.begin() as conn:
            yield conn

    @contextmanager
    def raw(self) -> Iterator[Any]:
        """A psycopg 3 connection with pgvector types registered (for binary COPY)."""
        pooled = self.engine.raw_connection()
        try:
            conn = vector_connection(pooled)
            yield conn
            conn.commit()
        except BaseException:
            pooled.driver_connection.rollback()
            raise
        finally:
            pooled.close()

    # -- migrations -----------------------------------------------------------------
    def upgrade(self, revision: str = "head") -> None:
        from alembic import command

        with self.engine.begin() as conn:
            # Two first commands at once must not both create the schema.
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
            self._migrate(command.upgrade, conn, revision)

    def upgrade_if_needed(self) -> None:
        """Migrate to head unless already there (cheap check first)."""
        if self.current_revision() != self.head_revision():
            self.upgrade()

    def downgrade(self, revision: str) -> None:
        from alembic import command

        with self.engine.begin() as conn:
            self._migrate(command.downgrade, conn, revision)

    def _migrate(self, step: Callable[..., None], conn: Connection, revision: str) -> None:
        """Run Alembic's ``step`` to ``revision`` inside ``conn``'s transaction: a database at a
        revision this manet does not know, or a target that names none, fails with one line."""
        from alembic.util import CommandError

        self.require_known_revision(self._current_in(conn))
        try:
            step(alembic_config(conn), revision)
        except CommandError as exc:
            raise DatabaseError(f"cannot migrate to {revision!r}: {one_line(exc)}; use 'head', 'base' or one of "
                                f"{', '.join(sorted(self._known_revisions()))}") from exc

    def current_revision(self) -> str | None:
        with self.engine.connect() as conn:
            return self._current_in(conn)

    @staticmethod
    def _current_in(conn: Connection) -> str | None:
        from alembic.runtime.migration import MigrationContext
        from alembic.util import CommandError

        try:
            return MigrationContext.configure(conn).get_current_revision()
        except CommandError as exc:  # e.g. two rows in alembic_version
            raise DatabaseError(f"the database's alembic_version table is not one revision: {one_line(exc)}; "
                                "repair it with psql, or use another database") from exc

    @staticmethod
    def _migrations() -> Any:
        """Alembic's view of the migrations shipped with manet."""
        from alembic.script import ScriptDirectory

        return ScriptDirectory.from_config(alembic_config())

    def head_revision(self) -> str | None:
        return self._migrations().get_current_head()

    def _known_revisions(self) -> set[str]:
        return {script.revision for script in self._migrations().walk_revisions()}

    def require_known_revision(self, current: str | None) -> None:
        """A revision with no migration here: a newer manet migrated the database (or the table was edited)."""
        if current is not None and current not in self._known_revisions():
            raise DatabaseError(f"the database's schema is at revision {current!r}, which this manet does not know "
                                f"(its newest is {self.head_revision()}); a newer manet migrated it: upgrade manet, "
                                "or use another database")

    def require_schema(self) -> None:
        """Raise a clear error when migrations have not been applied."""
        current, head = self.current_revision(), self.head_revision()
        if current != head:
            self.require_known_revision(current)
            raise DatabaseError(
                f"database schema is at {current or 'nothing'}, not {head}; run: manet db upgrade"
            )

    def schema_drift(self) -> list[Any]:
        """Differences between :mod:`manet.store.schema` and the database (empty when in sync)."""
        from alembic.autogenerate import compare_metadata
        from alembic.runtime.migration import MigrationContext

        from manet.store.schema import include_object, metadata

        with self.engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"include_object": include_object})
            return list(compare_metadata(context, metadata))

    def grant_reader(self, role: str, password: str | None = None) -> None:
        """Create (if needed) a login role that can search and read but never write."""
        from psycopg import sql

        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", role):
            raise DatabaseError(
                f"role name {role!r} is not allowed; use letters, digits and _ (max 63, not starting with a digit)"
            )
        ident = sql.Identifier(role)
        with self.raw() as conn:
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role]).fetchone()
            if not exists:
                conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(ident))
            if password is not None:
                conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(ident, sql.Literal(password)))
            database = conn.execute("SELECT current_database()").fetchone()[0]
            statements = [
                "GRANT CONNECT ON DATABASE {db} TO {role}",
                "GRANT USAGE ON SCHEMA public TO {role}",
                "REVOKE CREATE ON SCHEMA public FROM {role}",
                "GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}",
                "GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public TO {role}",
                # Tables made later (new migrations) are readable too.
                "ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO {role}",
            ]
            for statement in statements:
                conn.execute(sql.SQL(statement).format(db=sql.Identifier(database), role=ident))

    def vector_extension(self) -> tuple[str | None, str | None]:
        """pgvector's version installed in this database and the one the server offers (None: none)."""
        with self.engine.connect() as conn:
            installed = conn.execute(
                sa.text("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
            ).scalar()
            available = conn.execute(
                sa.text("SELECT default_version FROM pg_available_extensions WHERE name = 'vector'")
            ).scalar()
        return installed, available

    def server_versions(self) -> dict[str, str | None]:
        """PostgreSQL's version and pgvector's (installed, else the one the first migration installs)."""
        with self.engine.connect() as conn:
            pg = conn.execute(sa.text("SHOW server_version")).scalar()
        installed, available = self.vector_extension()
        return {"postgresql": pg, "pgvector": installed or available}

    def dispose(self) -> None:
        self.engine.dispose()
        if "search_engine" in self.__dict__:
            self.search_engine.dispose()
