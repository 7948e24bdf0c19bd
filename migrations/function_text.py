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


def drop_category_indexes(condition: str, join: str = "") -> str:
    """A DO block that drops the category indexes (``descriptors_hnsw_model_M_category_C``) for which
    ``condition`` holds (SQL over ``x`` pg_index, ``ic`` its pg_class row and ``join``'s tables),
    each with a NOTICE that says how to rebuild it."""
    return rf"""
DO $drop$
DECLARE
    name text;
BEGIN
    FOR name IN
        SELECT ic.relname FROM pg_index x JOIN pg_class ic ON ic.oid = x.indexrelid{join}
         WHERE x.indrelid = 'descriptors'::regclass
           AND ic.relname ~ '^descriptors_hnsw_model_[0-9]+_category_[0-9]+$'
           AND {condition}
    LOOP
        EXECUTE format('DROP INDEX %I', name);
        RAISE NOTICE 'dropped category index %; rebuild with: manet index build --model <model> --by-category --categories-only', name;
    END LOOP;
END
$drop$;
"""
