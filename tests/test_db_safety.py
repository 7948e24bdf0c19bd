"""Database safety: a read-only role, descriptor dimensions, schema drift."""

from __future__ import annotations

import numpy as np
import psycopg
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from manet.cli.main import cli


def manet(database_url: str, *args: str):
    return CliRunner().invoke(cli, ["--quiet", "--database-url", database_url, *args])


def test_reader_role_can_search_but_not_write(populated, database_url):
    result = manet(database_url, "db", "grant-reader", "analyst")
    assert result.exit_code == 0, result.output
    reader_url = database_url.replace("postgres:@", "analyst@", 1)
    with psycopg.connect(reader_url) as conn:
        image_id = conn.execute("SELECT id FROM images WHERE domain = 'query' LIMIT 1").fetchone()[0]
        rows = conn.execute("SELECT sku FROM manet_similar('tiny', %s, 3)", [image_id]).fetchall()
        assert len(rows) == 3
        for statement in ("INSERT INTO products (sku) VALUES ('intruder')", "DELETE FROM descriptors",
                          "UPDATE models SET name = 'x'", "DROP TABLE images", "CREATE TABLE mine (x int)"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
            conn.rollback()
    # Granting again is harmless.
    assert manet(database_url, "db", "grant-reader", "analyst").exit_code == 0


def test_descriptor_of_the_wrong_dimension_is_rejected(populated):
    model = populated.model("tiny")
    with populated.db.begin() as conn:
        image_id = conn.execute(sa.text("SELECT min(id) FROM images WHERE status = 'ok'")).scalar()
        before = conn.execute(sa.text("SELECT count(*) FROM descriptors")).scalar()
    with pytest.raises(sa.exc.IntegrityError, match=r"has 3 dimensions but model \d+ has 512"):
        with populated.db.begin() as conn:
            conn.execute(sa.text("UPDATE descriptors SET embedding = '[1,2,3]' WHERE model_id = :m AND image_id = :i"),
                         {"m": model.id, "i": image_id})
    with populated.db.raw() as conn:
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute("INSERT INTO descriptors (model_id, image_id, gallery, embedding) VALUES (%s, %s, true, %s)",
                         [model.id, image_id, np.ones(7, dtype=np.float32)])
        conn.rollback()
    with populated.db.begin() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM descriptors")).scalar() == before


def test_db_check_reports_drift(pg_home):
    from manet.store import embedded
    from manet.store.database import Database

    url = embedded.start(pg_home, "t_drift", recreate=True)
    assert manet(url, "db", "check").exit_code == 1  # not migrated yet
    Database(url).upgrade()
    clean = manet(url, "db", "check")
    assert clean.exit_code == 0 and "no drift" in clean.output
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ALTER TABLE products ADD COLUMN colour text")
    drifted = manet(url, "db", "check")
    assert drifted.exit_code == 1 and "colour" in drifted.output


def test_migrations_round_trip_keeps_rows(populated):
    def counts() -> dict[str, int]:
        with populated.db.begin() as conn:
            tables = ("products", "images", "descriptors", "models", "categories", "product_categories")
            return {t: conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar() for t in tables}

    before = counts()
    head = populated.db.head_revision()
    for revision in ("0002", "0001"):  # every table here exists on both sides of these steps
        populated.db.downgrade(revision)
        assert counts() == before
        populated.db.upgrade()
        assert populated.db.current_revision() == head and counts() == before


def test_a_revision_this_manet_does_not_know_is_one_line(pg_home):
    """A database migrated by a newer manet (or an edited alembic_version), and a migration target
    that names no revision: one line and exit 1, and the database is left as it was."""
    from manet.store import embedded
    from manet.store.database import Database

    url = embedded.start(pg_home, "t_revisions", recreate=True)
    Database(url).upgrade()
    with psycopg.connect(url, autocommit=True) as conn:
        head = conn.execute("SELECT version_num FROM alembic_version").fetchone()[0]
        for target in ("nope", "9999"):
            for args in (("db", "upgrade", target), ("db", "downgrade", target, "--yes")):
                result = manet(url, *args)
                assert result.exit_code == 1 and f"cannot migrate to '{target}'" in result.output, result.output
                assert "use 'head', 'base' or one of 0001" in result.output and result.output.count("\n") == 1
        conn.execute("UPDATE alembic_version SET version_num = 'f00d'")
        for args in (("models", "list"), ("db", "upgrade"), ("db", "downgrade", "base", "--yes"), ("db", "check")):
            result = manet(url, *args)
            assert result.exit_code == 1, (args, result.output)
            assert f"schema is at revision 'f00d', which this manet does not know (its newest is {head})" in result.output
            assert "Traceback" not in result.output and result.output.count("\n") == 1
        assert conn.execute("SELECT count(*) FROM products").fetchone()[0] == 0  # the tables are still there
        conn.execute("UPDATE alembic_version SET version_num = %s", [head])
        conn.execute("INSERT INTO alembic_version VALUES ('0001')")
        result = manet(url, "models", "list")
        assert result.exit_code == 1 and "alembic_version table is not one revision" in result.output


def test_a_model_with_damaged_settings_is_one_line_and_can_be_deleted(pg_home):
    from manet.store import embedded
    from manet.store.database import Database

    url = embedded.start(pg_home, "t_damaged", recreate=True)
    Database(url).upgrade()
    assert manet(url, "models", "create", "x", "--backbone", "resnet18", "--weights", "none").exit_code == 0
    with psycopg.connect(url, autocommit=True) as conn:
        good = conn.execute("SELECT config FROM models WHERE name = 'x'").fetchone()[0]
        for damaged, says in (([], "pipeline settings must be a JSON object, not list"),
                              ("text", "pipeline settings must be a JSON object, not str"),
                              ({**good, "image_size": "big"}, "pipeline setting image_size is 'big', not int"),
                              ({**good, "image_size": -5}, "image size -5 is out of range"),
                              ({**good, "manet": [1]}, "pipeline setting manet is [1], not dict"),
                              ({**good, "colour": "red"}, "unknown pipeline settings colour")):
            conn.execute("UPDATE models SET config = %s WHERE name = 'x'", [psycopg.types.json.Jsonb(damaged)])
            for args in (("models", "list"), ("extract", "--model", "x")):
                result = manet(url, *args)
                assert result.exit_code == 1 and "model 'x' has damaged settings in the database" in result.output
                assert says in result.output and "manet models delete x" in result.output, result.output
        deleted = manet(url, "models", "delete", "x", "--yes")
        assert deleted.exit_code == 0 and "model 'x' deleted" in deleted.output
