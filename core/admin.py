"""``Admin``: the operator's facade beside :class:`manet.Retriever`.

Retriever is what an application uses (catalogue, models, extraction, search, evaluation).
Admin holds the work an operator does on the installation itself: schema migrations, reader
roles, the embedded server, the list of plugins, scratch databases for benchmarks. The
``manet db``, ``plugins`` and ``bench`` commands go through it, so no command talks to the
storage layer directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from manet.errors import ManetError
from manet.settings import Settings

if TYPE_CHECKING:  # pragma: no cover
    from manet.plugin_manager import PluginInfo, Registry
    from manet.store.database import Database


@dataclass(frozen=True)
class SchemaCheck:
    """The schema revision against the head migration, and any drift from the tables manet expects."""

    revision: str | None
    head: str | None
    drift: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.revision == self.head and not self.drift

    def as_dict(self) -> dict[str, Any]:
        return {"revision": self.revision, "head": self.head, "drift": self.drift, "ok": self.ok}


class Admin:
    """Migrations, roles, the embedded server, plugins and scratch databases.

    ``settings`` as for :class:`~manet.Retriever` (default: the environment's); no database URL
    means the embedded server under the settings' home, started on first use. Unlike Retriever,
    Admin never migrates on connect: migrating is its job.
    """

    def __init__(self, settings: Settings | None = None, registry: "Registry | None" = None) -> None:
        self.settings = settings if settings is not None else Settings.from_environment()
        self._registry = registry
        self._db: Database | None = None

    @property
    def db(self) -> "Database":
        """The database as it is (connected, not migrated)."""
        if self._db is None:
            from manet.store.database import Database

            self._db = Database(self.settings.database_url, self.settings.home)
        return self._db

    def close(self) -> None:
        if self._db is not None:
            self._db.dispose()
            self._db = None

    # -- schema -------------------------------------------------------------------------
    def upgrade(self, revision: str = "head") -> str | None:
        """Apply migrations up to ``revision``; returns the revision now current."""
        self.db.upgrade(revision)
        return self.db.current_revision()

    def downgrade(self, revision: str) -> str | None:
        """Revert migrations down to ``revision`` ('base' drops every table); returns the current one."""
        self.db.downgrade(revision)
        return self.db.current_revision()

    def versions(self) -> dict[str, Any]:
        """Schema revision, head revision and the server's PostgreSQL and pgvector versions."""
        return {"revision": self.db.current_revision(), "head": self.db.head_revision(),
                **self.db.server_versions()}

    def check(self) -> SchemaCheck:
        """Compare the database with the schema manet expects (drift only at the head revision)."""
        current, head = self.db.current_revision(), self.db.head_revision()
        self.db.require_known_revision(current)
        drift = [repr(diff) for diff in self.db.schema_drift()] if current == head else []
        return SchemaCheck(current, head, drift)

    def grant_reader(self, role: str, password: str | None = None) -> None:
        """Create/grant ``role``: read-only access to the tables and the search functions."""
        self.db.grant_reader(role, password)

    # -- server ---------------------------------------------------------------------------
    def url(self) -> str:
        """The libpq URL in use (starting the embedded server if needed)."""
        from manet import config
        from manet.store.database import resolve_url

        return config.libpq_url(resolve_url(self.settings.database_url, self.settings.home))

    def stop_embedded(self) -> bool:
        """Stop the embedded server; False when it was not running."""
        from manet.store import embedded

        if not self.settings.embedded:
            raise ManetError("MANET_DATABASE_URL points at an external server; stop it with its own tools")
        return embedded.stop(self.settings.home_dir)

    def demo_database_url(self) -> str:
        """The demo's database: the configured one, else a fresh ``manet_demo`` database on the
        embedded server, so the demo never mixes with the user's catalogue."""
        from manet.store import embedded

        return self.settings.database_url or embedded.start(self.settings.home_dir, "manet_demo", recreate=True)

    def scratch_database(self) -> "Database":
        """A separate database next to the configured one (migrated), for benchmarks that create
        and drop rows (see :func:`manet.bench.common.scratch_database_url`)."""
        from manet.bench.common import scratch_database_url
        from manet.store.database import Database

        db = Database(scratch_database_url(self.settings.database_url, self.settings.home))
        db.upgrade_if_needed()
        return db

    # -- plugins --------------------------------------------------------------------------
    @property
    def registry(self) -> "Registry":
        if self._registry is None:
            from manet.plugin_manager import default_registry

            self._registry = default_registry(self.settings.load_plugins)
        return self._registry

    def plugins(self, kind: str | None = None) -> list["PluginInfo"]:
        """Every built-in and installed plugin, or those of one ``kind``."""
        return [info for info in self.registry.all() if kind is None or info.kind == kind]

    def failed_plugins(self) -> dict[str, str]:
        """Third-party plugins that failed to import: name -> error."""
        return dict(self.registry.failed)

    # -- diagnosis --------------------------------------------------------------------------
    def doctor(self) -> list[Any]:
        """Every installation check of :mod:`manet.tools.doctor` (database, pgvector, migrations,
        torch and device, weights, plugins), each with its fix."""
        from manet.tools.doctor import DoctorContext, run_checks

        return run_checks(DoctorContext(self.settings))
