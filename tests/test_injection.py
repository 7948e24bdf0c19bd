"""Hostile strings in every filter and name option: no rows or a clear error, nothing changes."""

from __future__ import annotations

import json

import psycopg
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from manet.cli.main import cli

HOSTILE = [
    "'; DROP TABLE products; --",
    "x' OR '1'='1",
    '" OR 1=1 --',
    "1; DELETE FROM images",
    "$$; DROP TABLE images; $$",
    "tiny'--",
    "tiny\x00",
]




def snapshot(retriever) -> dict[str, int]:
    with retriever.db.begin() as conn:
        tables = ("products", "images", "descriptors", "models", "categories", "eval_runs")
        return {t: conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar() for t in tables}


@pytest.mark.parametrize("hostile", HOSTILE)
def test_hostile_strings_change_nothing(populated, database_url, hostile):
    def manet(*args: str):
        return CliRunner().invoke(cli, ["--quiet", "--device", "cpu", "--database-url", database_url, *args])

    before = snapshot(populated)
    with populated.db.begin() as conn:
        query_id = str(conn.execute(sa.text("SELECT min(id) FROM images WHERE domain = 'query'")).scalar())

    for option in ("--category", "--brand"):  # filters: bound parameters, so simply no match
        result = manet("search", "--image-id", query_id, "--model", "tiny", option, hostile, "--json")
        assert result.exit_code == 1, result.output
        if "\x00" in hostile:
            assert result.output.startswith("Error")
        else:  # an empty list on stdout, and why on stderr
            assert json.loads(result.stdout) == []
            assert result.stderr.startswith("Error: no catalogue image of model 'tiny' matches"), result.stderr
            assert len(result.stderr.splitlines()) == 1
    for args in (["search", "--image-id", query_id, "--model", hostile], ["eval", "--model", hostile],
                 ["extract", "--model", hostile], ["index", "build", "--model", hostile],
                 ["models", "create", hostile, "--backbone", "resnet18", "--weights", "none"],
                 ["models", "create", "x", "--from", hostile], ["ingest", hostile, "."],
                 ["db", "grant-reader", hostile], ["status", "--model", hostile]):
        result = manet(*args)
        assert result.exit_code == 1, (args, result.output)
        assert len([line for line in result.output.splitlines() if line.startswith("Error")]) == 1

    if "\x00" not in hostile:
        with psycopg.connect(database_url) as conn, pytest.raises(psycopg.errors.RaiseException, match="unknown model|no descriptor for model"):
            conn.execute("SELECT * FROM manet_similar(%s, %s, 7)", [hostile, int(query_id)])
    assert snapshot(populated) == before
