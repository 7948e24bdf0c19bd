"""What the ``manet doctor`` checks share: their result (:class:`Check`) and their context."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from manet.settings import Settings

OK, WARN, FAIL, SKIP = "ok", "warn", "fail", "skip"
#: Seconds to wait for an external server before calling it unreachable.
CONNECT_TIMEOUT_S = 5


@dataclass(frozen=True)
class Check:
    """One line of the report: ``status`` is ok, warn, fail, or skip (a prerequisite failed)."""

    name: str
    status: str
    detail: str
    fix: str = ""

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


class Skipped(Exception):
    """Raised by a check that cannot run because an earlier one failed (e.g. no database)."""


@dataclass
class DoctorContext:
    """The invocation's settings (global options and environment), and what the checks share
    (the connection)."""

    settings: Settings = field(default_factory=Settings)
    connect_timeout: int = CONNECT_TIMEOUT_S
    #: Set by :func:`manet.tools.doctor_database.check_database` when the server answered.
    db: Any = None
    shown_url: str = ""

    @property
    def embedded(self) -> bool:
        """True when the embedded server is used (no --database-url / MANET_DATABASE_URL)."""
        return self.settings.embedded

    @property
    def home_dir(self) -> Path:
        return self.settings.home_dir

    def require_db(self) -> Any:
        if self.db is None:
            raise Skipped("not checked: the database is unreachable")
        return self.db

    def close(self) -> None:
        if self.db is not None:
            self.db.dispose()
            self.db = None
