"""One :class:`Settings` object: everything manet takes from global options and the environment.

The CLI builds it once per invocation from its global options (which fall back to their
environment variables) and passes it down: to :class:`manet.Retriever`, and from there, as plain
parameters, to the code that uses each value. A :class:`~manet.Retriever` made without one reads
the environment here. This is the only module of manet that reads ``os.environ``; a child process
(``manet worker``) gets the same settings through :meth:`Settings.as_environment`, and torchrun's
variables reach :mod:`manet.train.distributed` as :attr:`Settings.torchrun`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from manet import config
from manet.config import (
    DATABASE_URL_ENV,
    DEFAULT_MAX_PIXELS,
    DEVICE_ENV,
    DIST_TIMEOUT_ENV,
    EAST_MODEL_ENV,
    FILE_TIMEOUT_ENV,
    HOME_ENV,
    LOAD_PLUGINS_ENV,
    MAX_BYTES_ENV,
    MAX_PIXELS_ENV,
    PRECISION_ENV,
    TORCHRUN_VARIABLES,
    default_home,
)
from manet.errors import ManetError
from manet.nn.device import PRECISIONS
from manet.safe_files import DEFAULT_FILE_TIMEOUT, DEFAULT_MAX_BYTES, ReadLimits

#: Settings field -> its environment variable.
ENVIRONMENT_VARIABLES = {
    "database_url": DATABASE_URL_ENV,
    "home": HOME_ENV,
    "device": DEVICE_ENV,
    "precision": PRECISION_ENV,
    "max_pixels": MAX_PIXELS_ENV,
    "max_bytes": MAX_BYTES_ENV,
    "file_timeout": FILE_TIMEOUT_ENV,
    "load_plugins": LOAD_PLUGINS_ENV,
    "east_model": EAST_MODEL_ENV,
}


@dataclass(frozen=True)
class Settings:
    """Where the data lives, what runs the models, what may be read, which plugins load.

    Build it with :meth:`from_environment` (options override environment variables, which
    override the defaults here); every value is checked on construction.
    """

    #: PostgreSQL URL with pgvector (``--database-url``); None: the embedded server under ``home``.
    database_url: str | None = None
    #: Folder of the embedded database, checkpoints and the demo's data (``--home``); None: the
    #: user data dir (:attr:`home_dir`).
    home: Path | None = None
    #: Torch device (``--device``): cpu, cuda, cuda:1, mps; None or ``auto``: the best available.
    device: str | None = None
    #: Forward-pass precision (``--precision``): auto | fp32 | bf16 (see :mod:`manet.nn.device`).
    precision: str = "auto"
    #: Images over this many pixels are refused from their header (``--max-pixels``).
    max_pixels: int = DEFAULT_MAX_PIXELS
    #: Image files over this many bytes are refused while reading (``--max-bytes``).
    max_bytes: int = DEFAULT_MAX_BYTES
    #: Seconds reading and decoding one image file may take (``--file-timeout``).
    file_timeout: float = DEFAULT_FILE_TIMEOUT
    #: Third-party plugins to load (entry-point or distribution names, ``--load-plugins``);
    #: None: every installed one; empty: built-ins only.
    load_plugins: tuple[str, ...] | None = None
    #: The frozen EAST text detector graph (``--east-model``); when set, ``east`` is the default
    #: text detector and reads it.
    east_model: Path | None = None
    #: torchrun's variables of this process (RANK, WORLD_SIZE, ..., and ``MANET_DIST_TIMEOUT``),
    #: read by :mod:`manet.train.distributed`; empty outside torchrun.
    torchrun: Mapping[str, str] = field(default_factory=dict, hash=False)
    #: Fields whose value is their environment variable's (for messages saying where a value
    #: came from).
    from_env: frozenset[str] = field(default=frozenset(), compare=False)

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ManetError(f"unknown precision {self.precision!r}; set --precision / {PRECISION_ENV} "
                             f"to one of {', '.join(PRECISIONS)}")
        ReadLimits(self.max_bytes, self.file_timeout, self.max_pixels)  # a bad cap raises, saying how to fix it

    @property
    def limits(self) -> ReadLimits:
        """The caps on reading one image file (bytes, seconds, pixels)."""
        return ReadLimits(self.max_bytes, self.file_timeout, self.max_pixels)

    @property
    def home_dir(self) -> Path:
        """:attr:`home`, or the user data dir when it is not set."""
        return self.home or default_home()

    @property
    def embedded(self) -> bool:
        """True when the embedded server is used (no database URL)."""
        return self.database_url is None

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None, **options: Any) -> Settings:
        """Settings from ``options`` (field names; None: not given), else from their environment
        variables in ``environ`` (default: this process's environment), else the defaults.

        A malformed environment variable raises a one-line :class:`ManetError` naming it.
        """
        env = os.environ if environ is None else environ
        unknown = sorted(set(options) - set(ENVIRONMENT_VARIABLES))
        if unknown:
            raise TypeError(f"Settings has no option {', '.join(unknown)}")
        values: dict[str, Any] = {}
        for name, variable in ENVIRONMENT_VARIABLES.items():
            given = options.get(name)
            value = _from_option(name, given) if given is not None else _from_variable(name, variable, env)
            if value is not None:
                values[name] = value
        return cls(**values, torchrun=_torchrun_variables(env), from_env=_from_env(options, env))

    def with_options(self, **options: Any) -> Settings:
        """These settings with the given options (field names; None: keep) replaced, checked."""
        unknown = sorted(set(options) - set(ENVIRONMENT_VARIABLES))
        if unknown:
            raise TypeError(f"Settings has no option {', '.join(unknown)}")
        given = {name: _from_option(name, value) for name, value in options.items() if value is not None}
        return dataclasses.replace(self, **given, from_env=self.from_env - set(given))

    def as_environment(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment of a child process that should build these same settings: ``base``
        (default: this process's environment) with manet's variables set from these settings
        (and those unset here removed)."""
        env = dict(os.environ if base is None else base)
        for variable in ENVIRONMENT_VARIABLES.values():
            env.pop(variable, None)
        rendered = {
            DATABASE_URL_ENV: self.database_url,
            HOME_ENV: None if self.home is None else str(self.home),
            DEVICE_ENV: self.device,
            PRECISION_ENV: self.precision,
            MAX_PIXELS_ENV: str(self.max_pixels),
            MAX_BYTES_ENV: str(self.max_bytes),
            FILE_TIMEOUT_ENV: repr(float(self.file_timeout)),
            LOAD_PLUGINS_ENV: None if self.load_plugins is None else ",".join(self.load_plugins),
            EAST_MODEL_ENV: None if self.east_model is None else str(self.east_model),
        }
        env.update({variable: value for variable, value in rendered.items() if value is not None})
        return env


def load_plugins_from_environment(environ: Mapping[str, str] | None = None) -> tuple[str, ...] | None:
    """``MANET_LOAD_PLUGINS`` alone (None: unset, every installed plugin), for the plugin commands
    the CLI registers before it parses its options."""
    env = os.environ if environ is None else environ
    return _from_variable("load_plugins", LOAD_PLUGINS_ENV, env)


def _names(value: str) -> tuple[str, ...]:
    """Comma-separated plugin names, blanks dropped."""
    return tuple(name.strip() for name in value.split(",") if name.strip())


def _from_option(name: str, value: Any) -> Any:
    """An option's value as the field holds it (the CLI passes what click parsed)."""
    if name == "home":
        return Path(value).resolve()
    if name == "east_model":
        return Path(value).resolve()
    if name == "load_plugins":
        return _names(value) if isinstance(value, str) else tuple(value)
    return value


def _from_variable(name: str, variable: str, env: Mapping[str, str]) -> Any:
    """The field's value from its environment variable; None when unset (or empty, except for
    ``MANET_LOAD_PLUGINS``, where empty means built-ins only)."""
    raw = env.get(variable)
    if raw is None:
        return None
    if name == "load_plugins":
        return _names(raw)
    if not raw.strip():
        return None
    if name == "home":
        return Path(raw).expanduser().resolve()
    if name == "east_model":
        return Path(raw.strip())
    if name in ("max_pixels", "max_bytes"):
        return _positive_int(variable, raw, DEFAULT_MAX_PIXELS if name == "max_pixels" else DEFAULT_MAX_BYTES)
    if name == "file_timeout":
        return _positive_seconds(variable, raw)
    return raw


def _positive_int(variable: str, raw: str, default: int) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        value = 0
    if value < 1:
        noun = "pixel" if variable == MAX_PIXELS_ENV else "byte"
        raise ManetError(f"{variable}={raw!r} is not a positive integer; set it to a {noun} count "
                         f"(default {default}) or unset it")
    return value


def _positive_seconds(variable: str, raw: str) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ManetError(f"{variable}={raw!r} is not a positive number of seconds; set it to e.g. "
                         f"{DEFAULT_FILE_TIMEOUT:g} or unset it")
    return value


def _torchrun_variables(env: Mapping[str, str]) -> dict[str, str]:
    return {variable: env[variable] for variable in (*TORCHRUN_VARIABLES, DIST_TIMEOUT_ENV) if variable in env}


def _from_env(options: Mapping[str, Any], env: Mapping[str, str]) -> frozenset[str]:
    """Fields whose value is their variable's: not given as an option, or given as the same
    text (the CLI's options carry the variables click read for them)."""
    names = set()
    for name, variable in ENVIRONMENT_VARIABLES.items():
        raw, given = env.get(variable), options.get(name)
        if raw and (given is None or str(given) == raw):
            names.add(name)
    return frozenset(names)


#: manet serve's option -> the variable a worker process reads it from (see :func:`serve_options`).
SERVE_VARIABLES = {
    "model": config.SERVE_MODEL_ENV, "api_key": config.API_KEY_ENV, "max_batch": config.SERVE_MAX_BATCH_ENV,
    "batch_wait_ms": config.SERVE_BATCH_WAIT_MS_ENV, "max_upload_bytes": config.SERVE_MAX_UPLOAD_BYTES_ENV,
}


def export_for_workers(settings: Settings, serve: Mapping[str, Any]) -> None:
    """Put ``settings`` and ``manet serve``'s options (unset ones left out) into this process's
    environment, which the worker processes uvicorn starts inherit: uvicorn takes no other
    channel to them. Only the command that starts the workers calls this."""
    os.environ.update(settings.as_environment())
    os.environ.update({variable: str(serve[name]) for name, variable in SERVE_VARIABLES.items()
                       if serve.get(name) is not None})


def serve_options(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``manet serve``'s own options from their variables (``MANET_SERVE_*``, ``MANET_API_KEY``),
    as :func:`manet.serve.app.create_app` takes them: what each worker process of
    ``manet serve --workers N`` gets from the command that started it. Unset ones are left out."""
    env = os.environ if environ is None else environ
    kinds: dict[str, Any] = {"model": str, "api_key": str, "max_batch": int, "batch_wait_ms": float,
                             "max_upload_bytes": int}
    options: dict[str, Any] = {}
    for name, variable in SERVE_VARIABLES.items():
        kind = kinds[name]
        raw = env.get(variable, "").strip()
        if raw:
            try:
                options[name] = kind(raw)
            except ValueError:
                raise ManetError(f"{variable}={raw!r} is not a valid {kind.__name__}; fix it or unset it") from None
    return options
