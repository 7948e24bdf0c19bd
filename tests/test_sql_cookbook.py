"""docs/sql.md, run: every ```sql block of the SQL cookbook executes, in the order of the page,
against a database with model 'tiny' extracted, indexed and evaluated, and returns rows; the
EXPLAIN blocks show the model's HNSW index (recipe 3's exact path, its primary key); the read-only
role of `manet db grant-reader` runs every recipe but the one that creates a table; and the whole
page runs through psql itself."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "sql.md"
#: The numbered recipes ("## 1. ..." to "## 9. ...") and the fewest sql blocks the page may hold,
#: so that a broken parser cannot pass by finding nothing.
RECIPES = range(1, 10)
MIN_SQL_BLOCKS = 25
#: The recipe that creates the reader's own table (needs CREATE on the database).
WRITING_RECIPE = 5

FENCE = re.compile(r"^```(\w*)\n(.*?)^```[ \t]*$", re.M | re.S)
HEADING = re.compile(r"^## (\d+)\. ", re.M)
# psql's interpolation: :'name' (a literal), :"name" (an identifier), :name (as is); a cast's
# "::" is not a variable.
VARIABLE = re.compile(r"(?<!:):(?:'(\w+)'|\"(\w+)\"|([A-Za-z_]\w*))")


@dataclass(frozen=True)
class Block:
    lang: str
    text: str
    recipe: int | None
    line: int

    @property
    def where(self) -> str:
        return f"docs/sql.md line {self.line} (recipe {self.recipe})"


def doc_blocks() -> list[Block]:
    """The fenced blocks of docs/sql.md in order, each with the number of its recipe."""
    text = DOC.read_text()
    headings = [(m.start(), int(m.group(1))) for m in HEADING.finditer(text)]
    blocks = []
    for m in FENCE.finditer(text):
        recipe = None
        for pos, number in headings:
            if pos < m.start():
                recipe = number
        blocks.append(Block(m.group(1), m.group(2), recipe, text.count("\n", 0, m.start()) + 1))
    return blocks


def substitute(sql: str, variables: dict[str, Any], where: str) -> str:
    """``sql`` with its psql variables replaced as psql does; an unknown one fails the test."""

    def value(match: re.Match) -> str:
        literal, identifier, plain = match.groups()
        name = literal or identifier or plain
        assert name in variables, f"{where}: unknown psql variable :{name}; set it in the test"
        text = str(variables[name])
        if literal:
            return "'" + text.replace("'", "''") + "'"
        if identifier:
            return '"' + text.replace('"', '""') + '"'
        return text

    return VARIABLE.sub(value, sql)


def gset_queries(psql_block: str) -> list[str]:
    """The queries that a psql block ends with ``\\gset`` (its other meta-commands are skipped)."""
    queries, pending = [], []
    for line in psql_block.splitlines():
        if "\\gset" in line:
            queries.append("\n".join([*pending, line.split("\\gset")[0]]))
            pending = []
        elif line.lstrip().startswith("\\"):
            pending = []
        else:
            pending.append(line)
    return queries


def run_block(conn: psycopg.Connection, sql: str) -> list[tuple[str, list[tuple] | None]]:
    """Every statement of ``sql`` (sent at once, as psql -f sends them one by one): its command
    status and its rows (None for statements that return none)."""
    cur = conn.execute(sql)
    results = []
    while True:
        results.append((cur.statusmessage or "", cur.fetchall() if cur.description else None))
        if not cur.nextset():
            return results


def run_doc(conn: psycopg.Connection, variables: dict[str, Any], index_name: str,
            skip_recipes: tuple[int, ...] = ()) -> dict[int, list[tuple[str, list[tuple] | None]]]:
    """Run the page's \\gset queries and sql blocks in order on ``conn`` (autocommit), checking
    each block; returns each sql block's results by its line."""
    outcome = {}
    for block in doc_blocks():
        if block.recipe in skip_recipes:
            continue
        if block.lang == "psql":
            for query in gset_queries(block.text):
                cur = conn.execute(substitute(query, variables, block.where))
                rows = cur.fetchall()
                assert len(rows) == 1, f"{block.where}: \\gset needs exactly one row, got {len(rows)}"
                variables.update(zip([column.name for column in cur.description], rows[0]))
            continue
        if block.lang != "sql":
            continue
        meta = [line for line in block.text.splitlines() if line.lstrip().startswith("\\")]
        assert not meta, f"{block.where}: psql meta-commands belong in a ```psql block: {meta}"
        results = run_block(conn, substitute(block.text, variables, block.where))
        selects = [rows for status, rows in results if status.startswith("SELECT")]
        if selects:
            assert selects[-1], f"{block.where}: the block's last SELECT returned no rows"
        for status, rows in results:
            if status.startswith("INSERT"):
                assert int(status.split()[-1]) > 0, f"{block.where}: the INSERT inserted nothing"
            if status == "EXPLAIN":
                plan = "\n".join(row[0] for row in rows)
                if "ANY (ARRAY(" in block.text:  # recipe 3's exact path: the primary key, no HNSW scan
                    assert "descriptors_pkey" in plan and index_name not in plan, f"{block.where}:\n{plan}"
                elif "subvector(" in block.text:
                    # A category index's own expression: no such index here; tests/test_category_index_sql.py
                    # checks that this plan names it where it exists.
                    assert f"Index Scan using {index_name}" not in plan, f"{block.where}:\n{plan}"
                else:
                    assert f"Index Scan using {index_name} " in plan, f"{block.where}: no HNSW index scan:\n{plan}"
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE, (
            f"{block.where}: the block left a transaction open")
        outcome[block.line] = results
    return outcome


def block_lines(*snippets: str, lang: str = "sql") -> list[int]:
    """The lines of the blocks that contain every one of ``snippets``."""
    return [b.line for b in doc_blocks() if b.lang == lang and all(s in b.text for s in snippets)]


@pytest.fixture(scope="module")
def cookbook(populated, database_url) -> dict[str, Any]:
    """The variables a reader passes with ``psql -v``: model 'tiny', a stored shopper photo, and a
    brand and a category that catalogue images near it have (so the filtered recipes find rows)."""
    populated.evaluate("tiny")  # recipe 7 reads the stored evaluation runs
    with psycopg.connect(database_url) as conn:
        image_id = conn.execute(
            "SELECT min(i.id) FROM images i JOIN descriptors d ON d.image_id = i.id "
            "JOIN models m ON m.id = d.model_id AND m.name = 'tiny' WHERE i.domain = 'query'").fetchone()[0]
        third = conn.execute("SELECT product_id, brand FROM manet_similar('tiny', %s, 3) ORDER BY rank DESC",
                             [image_id]).fetchone()
        category = conn.execute("SELECT min(c.name) FROM product_categories pc JOIN categories c ON c.id = "
                                "pc.category_id WHERE pc.product_id = %s", [third[0]]).fetchone()[0]
    assert image_id and third[1] and category
    # The brand in upper case: the recipes compare brands case-insensitively, as manet search does.
    return {"model": "tiny", "image_id": image_id, "brand": third[1].upper(), "category": category}


def test_the_page_has_its_recipes():
    blocks = doc_blocks()
    headings = [int(n) for n in HEADING.findall(DOC.read_text())]
    assert headings == list(RECIPES)
    sql = [b for b in blocks if b.lang == "sql"]
    assert len(sql) >= MIN_SQL_BLOCKS
    assert {b.recipe for b in sql} == set(RECIPES), "every numbered recipe has a sql block"
    assert {b.lang for b in blocks} <= {"sql", "psql", "bash", "python"}


def test_substitution_fails_on_an_unknown_variable():
    assert substitute("SELECT x::vector(3), :'m', :n, :\"t\"", {"m": "it's", "n": 3, "t": "a"}, "here") == (
        "SELECT x::vector(3), 'it''s', 3, \"a\"")
    with pytest.raises(AssertionError, match="unknown psql variable :nope"):
        substitute("SELECT * FROM manet_similar(:'model', :nope)", {"model": "tiny"}, "here")


@pytest.mark.parametrize("layout", ["none", "halfvec"])
def test_every_block_runs_and_returns_rows(populated, cookbook, database_url, layout):
    populated.build_index("tiny", quantize=layout)
    record = populated.model("tiny")
    with psycopg.connect(database_url) as conn:
        vector = conn.execute("SELECT embedding::text FROM descriptors WHERE model_id = %s AND image_id = %s",
                              [record.id, cookbook["image_id"]]).fetchone()[0]
    # The vector recipe 2 reads from photo.vec: here the stored photo's own descriptor.
    variables = {**cookbook, "vector": vector}
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS my_shop CASCADE")
        outcome = run_doc(conn, variables, record.index_name)
    # What \gset fetched is the model's.
    assert (variables["model_id"], variables["dim"]) == (record.id, record.dim)
    assert (variables["layout"], variables["vtype"]) == (layout, "halfvec" if layout == "halfvec" else "vector")
    assert any(status == "EXPLAIN" for results in outcome.values() for status, _ in results)

    # The hand-written filtered query finds what `manet search --brand` finds.
    [line] = block_lines("lower(fp.brand) = lower(:'brand')", "LIMIT 7) AS t")
    rows = next(rows for status, rows in reversed(outcome[line]) if status.startswith("SELECT"))
    expected = populated.search("tiny", image_id=cookbook["image_id"], brand=cookbook["brand"], k=7)
    assert [row[0] for row in rows] == [hit.image_id for hit in expected]
    # manet_search with the stored photo's vector is manet_similar of the photo.
    [line] = block_lines("manet_search(:'model', :'vector', 7)")
    similar = populated.search("tiny", image_id=cookbook["image_id"], k=7)
    assert [row[1] for row in outcome[line][-1][1]] == [hit.sku for hit in similar]


def test_a_read_only_role_runs_the_reading_recipes(populated, cookbook, database_url):
    populated.db.grant_reader("cookbook_reader")
    variables = dict(cookbook, vector="[" + ",".join(["0.5"] * populated.model("tiny").dim) + "]")
    with psycopg.connect(database_url, user="cookbook_reader", autocommit=True) as conn:
        run_doc(conn, variables, populated.model("tiny").index_name, skip_recipes=(WRITING_RECIPE,))


def test_the_page_runs_in_psql(populated, cookbook, database_url, tmp_path, monkeypatch, capsys):
    """psql -f on every sql and psql block, with the variables of the page's own psql command
    line, and photo.vec written by the page's embed.py from a real photo file."""
    pgserver = pytest.importorskip("pgserver")
    psql = Path(pgserver.__file__).parent / "pginstall" / "bin" / "psql"
    if not psql.exists():
        pytest.skip("pgserver ships no psql here")
    populated.build_index("tiny", quantize="none")
    with psycopg.connect(database_url) as conn:
        photo = conn.execute("SELECT uri FROM images WHERE id = %s", [cookbook["image_id"]]).fetchone()[0]
    [embed] = [b for b in doc_blocks() if b.lang == "python"]
    monkeypatch.setenv("MANET_DATABASE_URL", database_url)
    monkeypatch.setenv("MANET_DEVICE", "cpu")
    monkeypatch.setattr(sys, "argv", ["embed.py", "tiny", photo])
    exec(compile(embed.text, "embed.py", "exec"), {"__name__": "__main__"})
    (tmp_path / "photo.vec").write_text(capsys.readouterr().out)

    script = tmp_path / "cookbook.sql"
    script.write_text("\n".join(b.text for b in doc_blocks() if b.lang in ("sql", "psql")))
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS my_shop CASCADE")
    settings = [arg for name, value in cookbook.items() for arg in ("-v", f"{name}={value}")]
    done = subprocess.run([str(psql), "-X", "-P", "pager=off", "-v", "ON_ERROR_STOP=1", *settings,
                           "-f", str(script), database_url], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr
    assert "(0 rows)" not in done.stdout
    assert f"id {populated.model('tiny').id}, 512 dimensions, index layout none, queries cast to vector(512)" in (
        done.stdout)
