"""``manet doctor``: check the installation, one :class:`Check` per item (pure data).

Each check is a small function of a :class:`DoctorContext`; :func:`run_checks` runs them in
order and turns an exception in one into that check's ``fail``, so the rest still run. The
checks only read: the embedded server is started (as every command does) but the schema is
never migrated, and nothing is downloaded. The checks live in :mod:`manet.tools.doctor_database`
and :mod:`manet.tools.doctor_runtime`; what they share in :mod:`manet.tools.doctor_context`.
"""

from __future__ import annotations

from collections.abc import Callable

from manet.errors import one_line
from manet.tools.doctor_context import FAIL, OK, SKIP, WARN, Check, DoctorContext, Skipped
from manet.tools.doctor_database import (
    check_database,
    check_migrations,
    check_pgvector,
    check_postgresql,
    check_server_settings,
)
from manet.tools.doctor_runtime import (
    check_device,
    check_east,
    check_home,
    check_plugins,
    check_text_detector,
    check_torch,
    check_weights,
)

__all__ = ["CHECKS", "FAIL", "OK", "SKIP", "WARN", "Check", "DoctorContext", "Skipped", "check_database",
           "check_device", "check_east", "check_home", "check_migrations", "check_pgvector", "check_plugins",
           "check_postgresql", "check_server_settings", "check_text_detector", "check_torch", "check_weights",
           "overall", "run_checks"]

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
