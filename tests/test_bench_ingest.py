"""`manet bench ingest`: binary COPY vs executemany INSERT into descriptors, on the real database."""

from __future__ import annotations

import json

import sqlalchemy as sa
from click.testing import CliRunner

from manet.cli.main import cli
from manet.config import sqlalchemy_url


def test_bench_ingest_json_and_table(database_url, monkeypatch):
    monkeypatch.setenv("MANET_DATABASE_URL", database_url)
    result = CliRunner().invoke(cli, ["--quiet", "bench", "ingest", "--rows", "600", "--dim", "32",
                                      "--insert-rows", "300", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["rows"] == 600 and report["insert_rows"] == 300 and report["dim"] == 32
    assert report["copy_rows_per_s"] > 0 and report["insert_rows_per_s"] > 0 and report["row_insert_rows_per_s"] > 0
    assert report["ratio"] == round(report["copy_rows_per_s"] / report["insert_rows_per_s"], 2)
    engine = sa.create_engine(sqlalchemy_url(database_url))
    with engine.connect() as conn:  # the scratch database is left empty
        assert conn.execute(sa.text("SELECT count(*) FROM images")).scalar() == 0
        assert conn.execute(sa.text("SELECT count(*) FROM models")).scalar() == 0
    engine.dispose()
    table = CliRunner().invoke(cli, ["--quiet", "bench", "ingest", "--rows", "200", "--dim", "16"])
    assert table.exit_code == 0 and "row-by-row INSERT" in table.output, table.output


def test_bench_ingest_rejects_more_insert_rows_than_rows(database_url, monkeypatch):
    monkeypatch.setenv("MANET_DATABASE_URL", database_url)
    result = CliRunner().invoke(cli, ["--quiet", "bench", "ingest", "--rows", "10", "--insert-rows", "20"])
    assert result.exit_code == 1 and "1 <= --insert-rows <= --rows" in result.output
