"""Model aliases on a real database: `manet models alias|unalias|aliases`, name collisions, search,
eval, manet serve and the SQL functions through an alias, deletion refused while aliased, and 8
threads searching while the alias is re-pointed (no error, no result mixing the two models)."""

from __future__ import annotations

import json
import threading
import time

import psycopg
import pytest
import sqlalchemy as sa

from helpers import TINY_MODEL
from manet.errors import ManetError, NotFoundError
from manet.store.events import read_events

K = 7


@pytest.fixture(scope="module")
def two(populated):
    """Model 'tiny' (SR-MAC, from `populated`) and 'tiny-mac' (MAC), both extracted and indexed
    beforehand, as before a production switch."""
    populated.create_model("tiny-mac", pooling="mac", **TINY_MODEL)
    populated.extract("tiny-mac")
    populated.build_index("tiny-mac")
    return populated


def _query_ids(retriever) -> list[int]:
    with retriever.db.begin() as conn:
        return list(conn.execute(sa.text("SELECT id FROM images WHERE domain = 'query' ORDER BY id")).scalars())


def _one_error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert result.exit_code == 1 and len(lines) == 1, result.output
    return lines[0]


def test_alias_create_repoint_list_and_remove(two, run):
    made = run("models", "alias", "production", "tiny", "--json")
    assert made.exit_code == 0, made.output
    assert json.loads(made.output) == {"alias": "production", "model": "tiny", "model_id": two.model("tiny").id,
                                       "previous": None}
    moved = run("models", "alias", "production", "tiny-mac")
    assert moved.output.strip() == "alias 'production' -> model 'tiny-mac' (was 'tiny')"
    listed = json.loads(run("models", "aliases", "--json").output)
    assert [(row["alias"], row["model"]) for row in listed] == [("production", "tiny-mac")]
    models = {row["name"]: row for row in json.loads(run("models", "list", "--json").output)}
    assert models["tiny-mac"]["aliases"] == ["production"] and models["tiny"]["aliases"] == []
    assert "(alias: production)" in run("models", "list").output
    assert two.model("production").name == "tiny-mac"
    with two.db.begin() as conn:
        events = read_events(conn, action="alias.set")
    assert [(e["details"]["old"], e["details"]["new"]) for e in events[-2:]] == [(None, "tiny"), ("tiny", "tiny-mac")]
    removed = run("models", "unalias", "production", "--json")
    assert json.loads(removed.output) == {"alias": "production", "model": "tiny-mac"}
    assert json.loads(run("models", "aliases", "--json").output) == []
    with pytest.raises(NotFoundError, match="model 'production' does not exist"):
        two.model("production")


@pytest.mark.parametrize("args, message", [
    (("models", "alias", "tiny", "tiny-mac"), "'tiny' is a model's name, so it cannot be an alias"),
    (("models", "alias", "staging", "nope"), "model 'nope' does not exist"),
    (("models", "alias", "bad name", "tiny"), "alias 'bad name' is not allowed"),
    (("models", "alias", "--", "-x", "tiny"), "alias '-x' is not allowed"),
    (("models", "alias", "a" * 64, "tiny"), "is not allowed; use letters, digits"),
    (("models", "alias", "", "tiny"), "alias '' is not allowed"),
    (("models", "unalias", "nope"), "alias 'nope' does not exist"),
    (("models", "unalias", "tiny"), "'tiny' is a model, not an alias"),
])
def test_bad_aliases_are_one_line_errors_and_change_nothing(two, run, args, message):
    before = two.aliases()
    assert message in _one_error_line(run(*args))
    assert two.aliases() == before


def test_names_and_aliases_never_collide(two, run):
    two.alias_model("staging", "tiny")
    try:
        error = _one_error_line(run("models", "create", "staging", "--backbone", "resnet18", "--weights", "none"))
        assert "'staging' is an alias of model 'tiny'" in error and "manet models unalias staging" in error
        with pytest.raises(ManetError, match="'staging' is itself an alias \\(of model 'tiny'\\)"):
            two.alias_model("prod", "staging")
        assert [row["name"] for row in two.models()].count("staging") == 0
    finally:
        two.unalias_model("staging")


def test_deleting_an_aliased_model_is_refused(two, run):
    two.alias_model("production", "tiny")
    try:
        error = _one_error_line(run("models", "delete", "tiny", "--yes"))
        assert "model 'tiny' is what alias production points at" in error
        assert "manet models unalias production" in error
        error = _one_error_line(run("models", "delete", "production", "--yes"))
        assert "'production' is an alias of model 'tiny', not a model" in error
        assert {"tiny", "tiny-mac"} <= {row["name"] for row in two.models()}
        assert two.search("tiny", image_id=_query_ids(two)[0], k=K)  # index and descriptors intact
    finally:
        two.unalias_model("production")


def test_search_eval_and_sql_through_an_alias(two, run, small_catalogue):
    two.alias_model("production", "tiny")
    try:
        query = _query_ids(two)[0]
        assert two.search("production", image_id=query, k=K) == two.search("tiny", image_id=query, k=K)
        photo = sorted((small_catalogue.parent / "query").glob("*.jpg"))[0]
        by_file = json.loads(run("search", str(photo), "--model", "production", "--json").output)
        assert by_file == [hit.as_dict() for hit in two.search("tiny", image=photo, k=K)]
        through_alias = json.loads(run("eval", "--model", "production", "--json").output)
        direct = json.loads(run("eval", "--model", "tiny", "--json").output)
        assert through_alias["map@7"] == direct["map@7"] and through_alias["model"] == "tiny"
        with two.db.begin() as conn:
            similar = {name: conn.execute(sa.text("SELECT image_id, score FROM manet_similar(:m, :i, 7)"),
                                          {"m": name, "i": query}).all() for name in ("production", "tiny")}
            vector = conn.execute(sa.text("SELECT embedding::text FROM descriptors WHERE model_id = :m "
                                          "AND image_id = :i"), {"m": two.model("tiny").id, "i": query}).scalar()
            searched = {name: conn.execute(sa.text("SELECT image_id FROM manet_search(:m, CAST(:v AS vector), 7)"),
                                           {"m": name, "v": vector}).all() for name in ("production", "tiny")}
            resolved = conn.execute(sa.text("SELECT manet_model_id('production')")).scalar()
        assert similar["production"] == similar["tiny"] and searched["production"] == searched["tiny"]
        assert resolved == two.model("tiny").id
    finally:
        two.unalias_model("production")


def test_serve_follows_a_repointed_alias(two, monkeypatch):
    from manet.serve import service
    from manet.serve.app import create_app
    from manet.serve.runner import ServerThread
    from serve_client import search_json, wait_ready

    monkeypatch.setattr(service, "RECORD_SECONDS", 0.0)  # serve re-reads a record after this long
    two.alias_model("production", "tiny")
    query = _query_ids(two)[0]
    try:
        with ServerThread(create_app(two.settings, model="production")) as server:
            wait_ready(server.url)
            first = search_json(server.url, {"image_id": query, "k": K}).json()
            two.alias_model("production", "tiny-mac")
            second = search_json(server.url, {"image_id": query, "k": K, "model": "production"}).json()
        assert (first["model"], second["model"]) == ("tiny", "tiny-mac")
        for reply, name in ((first, "tiny"), (second, "tiny-mac")):
            assert [h["image_id"] for h in reply["hits"]] == [h.image_id for h in two.search(name, image_id=query)]
    finally:
        two.unalias_model("production")


# -- re-pointing under load -------------------------------------------------------------------
def _key(rows) -> tuple:
    """A result as (image id, score to 5 decimals) pairs: equal only for one model's search."""
    return tuple((int(image_id), round(float(score), 5)) for image_id, score in rows)


def _expected(two, queries: list[int], url: str) -> dict[str, dict]:
    """For each model alone: Retriever.search and manet_similar of each stored query, and
    manet_search of tiny's descriptor of each query (the same vector for both models)."""
    out: dict[str, dict] = {}
    with psycopg.connect(url) as conn:
        vectors = {q: conn.execute("SELECT embedding::text FROM descriptors d JOIN models m ON m.id = d.model_id "
                                   "WHERE m.name = 'tiny' AND d.image_id = %s", [q]).fetchone()[0] for q in queries}
        for name in ("tiny", "tiny-mac"):
            out[name] = {
                "api": {q: _key((h.image_id, h.score) for h in two.search(name, image_id=q, k=K)) for q in queries},
                "similar": {q: _key(conn.execute("SELECT image_id, score FROM manet_similar(%s, %s, 7)",
                                                 [name, q]).fetchall()) for q in queries},
                "search": {q: _key(conn.execute("SELECT image_id, score FROM manet_search(%s, %s::vector, 7)",
                                                [name, vectors[q]]).fetchall()) for q in queries},
            }
    return {"expected": out, "vectors": vectors}


def _searcher(two, url: str, kind: str, queries: list[int], vectors: dict, stop: threading.Event,
              results: list, errors: list) -> None:
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            i = 0
            while not stop.is_set():
                q = queries[i % len(queries)]
                i += 1
                if kind == "api":
                    got = _key((h.image_id, h.score) for h in two.search("production", image_id=q, k=K))
                elif kind == "similar":
                    got = _key(conn.execute("SELECT image_id, score FROM manet_similar('production', %s, 7)",
                                            [q]).fetchall())
                else:
                    got = _key(conn.execute("SELECT image_id, score FROM manet_search('production', %s::vector, 7)",
                                            [vectors[q]]).fetchall())
                results.append((kind, q, got))
    except Exception as exc:  # counted: the test requires none
        errors.append(repr(exc))


def test_eight_threads_search_while_the_alias_is_repointed(two, database_url):
    queries = _query_ids(two)[:6]
    prepared = _expected(two, queries, database_url)
    expected = prepared["expected"]
    for kind in ("api", "similar", "search"):  # the two models' answers differ, so a mixture shows
        assert all(expected["tiny"][kind][q] != expected["tiny-mac"][kind][q] for q in queries), kind
    two.alias_model("production", "tiny")
    stop, results, errors = threading.Event(), [], []
    kinds = ["api", "api", "api", "similar", "similar", "search", "search", "search"]
    threads = [threading.Thread(target=_searcher, args=(two, database_url, kind, queries, prepared["vectors"],
                                                        stop, results, errors)) for kind in kinds]
    try:
        for thread in threads:
            thread.start()
        for flip in range(30):
            time.sleep(0.05)
            two.alias_model("production", "tiny-mac" if flip % 2 == 0 else "tiny")
        time.sleep(0.05)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        two.unalias_model("production")
    assert errors == []
    seen = {"tiny": 0, "tiny-mac": 0}
    for kind, q, got in results:
        owner = [name for name in seen if expected[name][kind][q] == got]
        assert owner, f"{kind} query {q}: a result that neither model alone returns: {got}"
        seen[owner[0]] += 1
    assert len(results) >= 100 and min(seen.values()) > 0, (len(results), seen)
