"""The embedded server is sized for vector search once, and operators' settings win."""

from __future__ import annotations

import psycopg

from manet.store import embedded

MIB = 2**20


def test_server_settings_scale_with_memory():
    # a quarter of memory for shared buffers, half as the cache estimate, JIT off
    assert embedded.server_settings(24 * 1024 * MIB) == {
        "shared_buffers": "6144MB", "effective_cache_size": "12288MB", "jit": "off"}
    # small machines keep PostgreSQL's floor of 128 MB; large ones stop at 8 GB
    assert embedded.server_settings(256 * MIB)["shared_buffers"] == "128MB"
    assert embedded.server_settings(256 * MIB)["effective_cache_size"] == "128MB"
    assert embedded.server_settings(128 * 1024 * MIB)["shared_buffers"] == "8192MB"


def test_new_server_runs_with_the_settings(pg_home):
    expected = embedded.server_settings(embedded.physical_memory_bytes())
    with psycopg.connect(embedded.start(pg_home)) as conn:
        live = {name: conn.execute(f"SHOW {name}").fetchone()[0] for name in expected}
    assert live["jit"] == "off"
    # SHOW rounds to the largest exact unit (6144MB shows as 6GB)
    assert live["shared_buffers"] in (expected["shared_buffers"], f"{int(expected['shared_buffers'][:-2]) // 1024}GB")


def test_operator_settings_are_kept(pg_home):
    url = embedded.start(pg_home)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET jit = on")
        conn.execute("SELECT pg_reload_conf()")
    try:
        embedded.start(pg_home)  # attaching again must not undo the operator's choice
        with psycopg.connect(url) as conn:
            assert conn.execute("SHOW jit").fetchone()[0] == "on"
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET jit = off")
            conn.execute("SELECT pg_reload_conf()")
