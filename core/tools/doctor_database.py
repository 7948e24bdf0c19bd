"""``manet doctor``'s database checks: the server, pgvector, the schema, the server's settings."""

from __future__ import annotations

from manet import config
from manet.errors import one_line
from manet.tools.doctor_context import FAIL, OK, WARN, Check, DoctorContext

#: pgvector release production servers should run (DESIGN.md: docker/ uses >= 0.8.4).
RECOMMENDED_PGVECTOR = (0, 8, 4)
#: Server settings worth seeing next to the embedded server's tuning (embedded.server_settings).
SERVER_SETTINGS = ("shared_buffers", "effective_cache_size", "maintenance_work_mem", "jit")


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


def check_database(ctx: DoctorContext) -> Check:
    """Which server, and whether it answers (the embedded one is started, as every command does)."""
    from manet.errors import DatabaseError
    from manet.store.database import Database, redact, resolve_url

    settings = ctx.settings
    from_env = settings.database_url is None or "database_url" in settings.from_env
    where = (f"embedded, MANET_HOME={ctx.home_dir}" if ctx.embedded
             else config.DATABASE_URL_ENV if from_env else "--database-url")
    try:
        url = resolve_url(settings.database_url, ctx.home_dir)
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
