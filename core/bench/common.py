"""What every ``manet bench`` measurement shares: a scratch database, timing and memory figures.

Benchmarks never touch the user's catalogue: on the embedded server they run in their own
database (``manet_bench``, recreated each run); an external server must be given an empty
database made for the purpose.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path

import numpy as np
import sqlalchemy as sa

from manet import config
from manet.errors import ManetError, one_line
from manet.store import embedded

BENCH_DATABASE = "manet_bench"


def scratch_database_url(database_url: str | None, home: Path | None) -> str:
    """A database a benchmark may fill and empty: the embedded ``manet_bench`` (recreated),
    or ``database_url`` when that database holds no manet data yet."""
    if not database_url:
        return embedded.start(home or config.default_home(), BENCH_DATABASE, recreate=True)
    engine = sa.create_engine(config.sqlalchemy_url(database_url))
    try:
        with engine.connect() as conn:
            has_images = conn.execute(sa.text("SELECT to_regclass('images') IS NOT NULL")).scalar()
            rows = conn.execute(sa.text("SELECT count(*) FROM images")).scalar() if has_images else 0
    except sa.exc.OperationalError as exc:
        reason = one_line(exc)
        raise ManetError(f"cannot connect to the benchmark database: {reason}") from None
    finally:
        engine.dispose()
    if rows:
        raise ManetError(
            f"the database at MANET_DATABASE_URL already holds {rows} images; benchmarks write and delete "
            f"rows, so give them an empty one: createdb manet_bench and pass --database-url "
            f"postgresql://.../manet_bench (or unset MANET_DATABASE_URL to use the embedded server)"
        )
    return database_url


def peak_rss_mb(children: bool = False) -> float:
    """Peak resident set size of this process (or of its largest finished child) in MiB."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF)
    # Linux reports KiB, macOS bytes.
    return usage.ru_maxrss / (1024 * 1024 if sys.platform == "darwin" else 1024)


def latency_summary(seconds: list[float] | np.ndarray) -> dict[str, float]:
    """p50/p95/p99 in milliseconds and queries per second of one-at-a-time latencies."""
    values = np.asarray(seconds, dtype=np.float64)
    if values.size == 0:
        raise ValueError("no latencies to summarise")
    p50, p95, p99 = np.percentile(values, [50, 95, 99]) * 1000.0
    return {"p50_ms": round(float(p50), 3), "p95_ms": round(float(p95), 3), "p99_ms": round(float(p99), 3),
            "qps": round(float(values.size / values.sum()), 1)}
