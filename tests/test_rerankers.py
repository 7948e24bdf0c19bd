"""Re-rankers (AQE, alpha-QE) and the catalogue augmenter DBA: the math by hand, the plugins, and
--rerank in eval and search."""

from __future__ import annotations

import json

import numpy as np
import pytest
import sqlalchemy as sa

from manet.errors import PluginError
from manet.plugin_base import CatalogueAugmenter, Reranker
from manet.plugin_manager import default_registry
from manet.search.reranking import (
    database_side_augmentation,
    expand_query,
    expansion_weights,
    query_expansion_scores,
    rerank_plugin,
    rerank_shortlist,
)

SQRT10 = 10 ** 0.5
# A query and three unit candidates: scores 0.8, 0.62, 0.6.
QUERY = np.array([1.0, 0.0, 0.0], np.float32)
CANDIDATES = np.array([[0.8, 0.6, 0.0], [0.62, 0.0, (1 - 0.62 ** 2) ** 0.5], [0.6, 0.8, 0.0]], np.float32)
SCORES = CANDIDATES @ QUERY


# -- the math, by hand ---------------------------------------------------------------------------
def test_expansion_weights():
    scores = np.array([0.9, 0.5, 0.8, -0.2])
    assert np.allclose(expansion_weights(scores, 2, 0.0), [1, 0, 1, 0])          # AQE: the best two
    assert np.allclose(expansion_weights(scores, 2, 2.0), [0.81, 0, 0.64, 0])    # alpha-QE: s ** 2
    assert np.allclose(expansion_weights(scores, 4, 2.0), [0.81, 0.25, 0.64, 0])  # negative -> 0


def test_expand_query_adds_weighted_candidates_then_normalises():
    out = expand_query(np.array([1.0, 0.0]), np.array([[0.0, 1.0], [1.0, 0.0]]), np.array([1.0, 0.0]))
    assert np.allclose(out, [2 ** -0.5, 2 ** -0.5])


def test_average_query_expansion_by_hand():
    # top_n = 1: q' = L2(q + c1) = L2(1.8, 0.6, 0) = (3, 1, 0) / sqrt(10)
    new = query_expansion_scores(QUERY, CANDIDATES, SCORES, top_n=1, alpha=0.0)
    assert np.allclose(new, [3 / SQRT10, 1.86 / SQRT10, 2.6 / SQRT10], atol=1e-6)
    # so the third candidate (0.6) now beats the second (0.62)
    reranker = default_registry().create("reranker", "aqe", top_n=1)
    permutation, scores = rerank_shortlist(reranker, QUERY, CANDIDATES, SCORES)
    assert permutation.tolist() == [0, 2, 1] and np.allclose(scores, new)


def test_alpha_query_expansion_by_hand():
    # top_n = 1, alpha = 2: q' = L2(q + 0.64 c1) = L2(1.512, 0.384, 0)
    expanded = np.array([1.512, 0.384, 0.0]) / np.hypot(1.512, 0.384)
    reranker = default_registry().create("reranker", "alpha-qe", top_n=1, alpha=2)
    assert np.allclose(reranker.rerank(QUERY, CANDIDATES, SCORES), CANDIDATES @ expanded, atol=1e-6)
    # alpha = 0 is AQE
    aqe = default_registry().create("reranker", "aqe", top_n=2)
    alpha0 = default_registry().create("reranker", "alpha-qe", top_n=2, alpha=0)
    assert np.allclose(aqe.rerank(QUERY, CANDIDATES, SCORES), alpha0.rerank(QUERY, CANDIDATES, SCORES))


def test_database_side_augmentation_by_hand():
    # g1.g2 = 0.6, g1.g3 = 0, g2.g3 = 0.8: nearest other rows are g2, g3, g2.
    gallery = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]], np.float32)
    out = database_side_augmentation(gallery, top_n=1, alpha=1.0, chunk=2)  # two blocks
    expected = np.array([[1.36, 0.48], [0.6, 1.6], [0.48, 1.64]])
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    assert np.allclose(out, expected, atol=1e-6)
    # alpha = 0 weighs neighbours 1 each; top_n beyond the catalogue takes every other row
    everything = database_side_augmentation(gallery, top_n=10, alpha=0.0)
    total = gallery.sum(axis=0)
    assert np.allclose(everything, np.tile(total / np.linalg.norm(total), (3, 1)), atol=1e-6)


def test_dba_plugin_augments_the_catalogue_and_is_no_reranker():
    dba = default_registry().create("catalogue_augmenter", "dba", top_n=1, alpha=1)
    gallery = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]], np.float32)
    assert np.allclose(dba.augment(gallery), database_side_augmentation(gallery, 1, 1.0))
    # Its own kind: no no-op rerank(); --rerank dba finds it next to the re-rankers.
    assert isinstance(dba, CatalogueAugmenter) and not isinstance(dba, Reranker) and not hasattr(dba, "rerank")
    assert isinstance(rerank_plugin(default_registry(), "dba", {"top_n": 1}), CatalogueAugmenter)
    assert isinstance(rerank_plugin(default_registry(), "aqe"), Reranker)


@pytest.mark.parametrize("kind, name, params, fragment", [
    ("reranker", "aqe", {"top_n": 0}, "top_n=0 must be at least 1"),
    ("reranker", "alpha-qe", {"alpha": -1}, "alpha=-1.0 must be 0 or more"),
    ("catalogue_augmenter", "dba", {"top_n": "many"}, "parameter top_n='many' should be int"),
    ("catalogue_augmenter", "dba", {"top_n": 0}, "catalogue augmenter 'dba': top_n=0 must be at least 1"),
    ("reranker", "aqe", {"alpha": 3}, "has no parameter alpha; accepted: top_n"),
    ("reranker", "nope", {}, "unknown reranker 'nope'; known: alpha-qe, aqe (see"),
    ("catalogue_augmenter", "nope", {}, "unknown catalogue augmenter 'nope'; known: dba (see"),
    ("reranker", "dba", {}, "unknown reranker 'dba'; known: alpha-qe, aqe (see"),
])
def test_bad_reranker_names_and_parameters(kind, name, params, fragment):
    with pytest.raises(PluginError) as error:
        default_registry().create(kind, name, **params)
    assert fragment in str(error.value)


@pytest.mark.parametrize("name, params, fragment", [
    ("dba", {"top_n": "many"}, "parameter top_n='many' should be int"),
    ("aqe", {"top_n": 0}, "top_n=0 must be at least 1"),
    ("nope", {}, "unknown reranker 'nope'; known: alpha-qe, aqe, dba"),  # --rerank takes both kinds
])
def test_bad_rerank_names_and_parameters(name, params, fragment):
    with pytest.raises(PluginError) as error:
        rerank_plugin(default_registry(), name, params)
    assert fragment in str(error.value)


# -- eval --rerank and search --rerank on the generated catalogue -----------------------------------
def one_line_error(result, fragment: str) -> None:
    assert result.exit_code != 0, result.output
    lines = [line for line in result.output.strip().splitlines() if line.startswith("Error")]
    assert len(lines) == 1 and fragment in lines[0], result.output


@pytest.mark.parametrize("name, params", [("aqe", ["-r", "top_n=2"]), ("alpha-qe", []), ("dba", ["-r", "top_n=2"])])
def test_eval_rerank_reports_and_stores_the_reranker(populated, run, name, params):
    result = run("eval", "--model", "tiny", "--split", "val", "--rerank", name, *params, "--shortlist", "8", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["reranker"]["name"] == name and data["reranker"]["shortlist"] == 8 and data["queries"] == 20
    assert {"rank_ms_per_query", "rerank_ms_per_query", "augment_s"} <= set(data["timing"])
    with populated.db.begin() as conn:
        stored = conn.execute(sa.text("SELECT metrics FROM eval_runs WHERE id = :i"), {"i": data["run_id"]}).scalar()
    assert stored["reranker"] == data["reranker"]
    plain = run("eval", "--model", "tiny", "--split", "val", "--rerank", name, "--shortlist", "8")
    assert plain.exit_code == 0 and f"re-ranked by {name}" in plain.output


def test_eval_with_dba_equals_the_augmented_model(populated, run):
    via_eval = json.loads(run("eval", "--model", "tiny", "--split", "val", "--rerank", "dba", "-r", "top_n=2",
                              "--json").output)
    made = run("models", "augment", "tiny", "--name", "tiny-dba", "-r", "top_n=2", "--json")
    assert made.exit_code == 0, made.output
    assert json.loads(made.output)["metrics"]["augmented"]["rows"] == 10
    via_model = json.loads(run("eval", "--model", "tiny-dba", "--split", "val", "--json").output)
    for key in ("map@7", "map", "recall@1", "recall@7"):
        assert via_eval[key] == pytest.approx(via_model[key], abs=1e-6), key
    one_line_error(run("models", "augment", "tiny", "--name", "never", "--rerank", "aqe"),
                   "reranker 'aqe' re-scores a search shortlist and does not augment a catalogue")


def test_search_rerank_reorders_the_shortlist(populated, run):
    from manet.search.query import stored_descriptor
    from manet.search.shortlist import candidate_descriptors

    with populated.db.begin() as conn:
        image_id = conn.execute(sa.text("SELECT min(id) FROM images WHERE domain = 'query'")).scalar()
    shortlist = json.loads(run("search", "--image-id", str(image_id), "--model", "tiny", "-k", "10", "--json").output)
    result = run("search", "--image-id", str(image_id), "--model", "tiny", "-k", "5", "--rerank", "aqe",
                 "-r", "top_n=2", "--shortlist", "10", "--json")
    assert result.exit_code == 0, result.output
    hits = json.loads(result.output)
    assert [h["rank"] for h in hits] == [1, 2, 3, 4, 5]
    # The same re-ranking by hand: the plugin on the shortlist's stored descriptors.
    model = populated.model("tiny")
    ids = [h["image_id"] for h in shortlist]
    vector = stored_descriptor(populated.db, model, image_id)
    reranker = populated.reranker("aqe", {"top_n": 2})
    permutation, scores = rerank_shortlist(reranker, vector, candidate_descriptors(populated.db, model, ids),
                                           np.array([h["score"] for h in shortlist], np.float32))
    assert [h["image_id"] for h in hits] == [ids[p] for p in permutation[:5]]
    assert np.allclose([h["score"] for h in hits], scores[permutation[:5]], atol=1e-6)


def test_rerank_errors_are_one_line(populated, run):
    with populated.db.begin() as conn:
        image_id = str(conn.execute(sa.text("SELECT min(id) FROM images WHERE domain = 'query'")).scalar())
    one_line_error(run("search", "--image-id", image_id, "--model", "tiny", "--rerank", "nope"),
                   "unknown reranker 'nope'; known: alpha-qe, aqe, dba")
    one_line_error(run("search", "--image-id", image_id, "--model", "tiny", "--rerank", "dba"),
                   "manet models augment BASE --name NEW --rerank dba")
    one_line_error(run("search", "--image-id", image_id, "--model", "tiny", "--rerank", "aqe", "--shortlist", "3"),
                   "--shortlist 3 is out of range; use k (7) to 1000")
    one_line_error(run("eval", "--model", "tiny", "--rerank", "aqe", "-r", "top_n=x"),
                   "parameter top_n='x' should be int")
    one_line_error(run("eval", "--model", "tiny", "--rerank", "alpha-qe", "-r", "beta=1"),
                   "has no parameter beta")
    one_line_error(run("eval", "--model", "tiny", "--rerank", "aqe", "--shortlist", "2"),
                   "--shortlist 2 is out of range")
    one_line_error(run("eval", "--model", "tiny", "-k", "0"), "k=0 is out of range; use k >= 1")
    one_line_error(run("eval", "--compare", "tiny", "tiny", "--against", "tiny", "-k", "-3"), "k=-3 is out of range")
    usage = run("eval", "--model", "tiny", "-r", "top_n=2")
    assert usage.exit_code == 2 and "add --rerank NAME" in usage.output
    bad_pair = run("eval", "--model", "tiny", "--rerank", "aqe", "-r", "top_n")
    assert bad_pair.exit_code == 2 and "-r/--rerank-param" in bad_pair.output


def test_plugins_list_shows_the_rerankers(run):
    result = run("plugins", "list", "--kind", "reranker", "--json")
    assert sorted(p["name"] for p in json.loads(result.output)) == ["alpha-qe", "aqe"]
    augmenters = json.loads(run("plugins", "list", "--kind", "catalogue_augmenter", "--json").output)
    assert [(p["name"], p["source"], p["parameters"]) for p in augmenters] == [
        ("dba", "manet.plugins.rerankers", {"top_n": 3, "alpha": 3.0})]
