"""Environment-driven settings. Every global option has an environment variable."""

from __future__ import annotations

import os
from pathlib import Path

DATABASE_URL_ENV = "MANET_DATABASE_URL"
HOME_ENV = "MANET_HOME"
DEVICE_ENV = "MANET_DEVICE"
PRECISION_ENV = "MANET_PRECISION"


def manet_home() -> Path:
    """Folder for the embedded database and caches: ``$MANET_HOME`` or the user data dir."""
    value = os.environ.get(HOME_ENV)
    if value:
        return Path(value).expanduser().resolve()
    import platformdirs

    return platformdirs.user_data_path("manet-retrieval")


def database_url_from_env() -> str | None:
    """The external database URL, or None to use the embedded PostgreSQL."""
    return os.environ.get(DATABASE_URL_ENV) or None


def sqlalchemy_url(url: str) -> str:
    """Make a libpq-style URL usable by SQLAlchemy with the psycopg 3 driver."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def libpq_url(url: str) -> str:
    """The inverse of :func:`sqlalchemy_url`: a URL psycopg and psql accept."""
    for prefix in ("postgresql+psycopg://", "postgresql+psycopg2://"):
        if url.startswith(prefix):
            return "postgresql://" + url[len(prefix):]
    return url
