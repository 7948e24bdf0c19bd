"""Later revisions write a SQL function as an earlier revision's text with edits, rather than a
copy, so that each revision's change to it stays visible and a drifted anchor fails loudly."""

from __future__ import annotations


def edited(sql: str, edits: dict[str, str], base: str, revision: str) -> str:
    """``sql`` (revision ``base``'s function text) with each anchor of ``edits`` replaced; each
    anchor must occur exactly once, else a RuntimeError tells to update ``revision``."""
    for anchor, replacement in edits.items():
        if sql.count(anchor) != 1:
            raise RuntimeError(f"revision {base}'s manet_search changed ({anchor.strip()!r} is not there "
                               f"exactly once); update revision {revision}")
        sql = sql.replace(anchor, replacement)
    return sql
