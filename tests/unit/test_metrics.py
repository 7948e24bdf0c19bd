"""Hand-worked checks for manet.evaluate.metrics."""

from __future__ import annotations

import numpy as np
import pytest

from manet.evaluate.metrics import (
    average_precision,
    average_precision_at_k,
    evaluate_rankings,
    paired_difference,
    ranked_relevance,
    recall_at_k,
)


def test_ap_at_7_min_normaliser_two_hits() -> None:
    # hits at ranks 2 and 4: P(2) = 1/2, P(4) = 2/4; Z = min(2, 7) = 2
    # AP@7 = (1/2)(1/2 + 2/4) = 0.5
    rel = [0, 1, 0, 1, 0, 0, 0]
    assert average_precision_at_k(rel, n_relevant=2) == pytest.approx(0.5)


def test_ap_at_7_relevant_set_larger_than_hits() -> None:
    # same ranking, |G| = 5: Z = min(5, 7) = 5 -> AP@7 = (1/2 + 1/2) / 5 = 0.2
    rel = [0, 1, 0, 1, 0, 0, 0]
    assert average_precision_at_k(rel, n_relevant=5) == pytest.approx(0.2)
    # "hits" normaliser divides by the 2 hits instead: (1/2 + 1/2) / 2 = 0.5
    assert average_precision_at_k(rel, n_relevant=5, normaliser="hits") == pytest.approx(0.5)


def test_ap_at_7_hits_normaliser_differs_from_min() -> None:
    # hit only at rank 3, |G| = 3: P(3) = 1/3
    # min:  Z = min(3, 7) = 3 -> (1/3)/3 = 1/9
    # hits: Z = 1             -> (1/3)/1 = 1/3
    rel = [0, 0, 1, 0, 0, 0, 0]
    assert average_precision_at_k(rel, 3, normaliser="min") == pytest.approx(1 / 9)
    assert average_precision_at_k(rel, 3, normaliser="hits") == pytest.approx(1 / 3)


def test_ap_at_7_more_than_k_relevant() -> None:
    # |G| = 20 > 7, all top 7 relevant: every P(i) = 1, Z = min(20, 7) = 7 -> AP@7 = 7/7 = 1
    rel = [1] * 7 + [1, 0, 1]  # positions after 7 are ignored
    assert average_precision_at_k(rel, 20) == pytest.approx(1.0)
    # |G| = 10, hits at 1, 3, 7: (1/1 + 2/3 + 3/7) / 7 = (21 + 14 + 9) / 21 / 7 = 44/147
    rel = [1, 0, 1, 0, 0, 0, 1, 1, 1, 1]
    assert average_precision_at_k(rel, 10) == pytest.approx(44 / 147)


def test_ap_at_k_no_hits_and_zero_relevant() -> None:
    rel = [0] * 7 + [1]  # the hit at rank 8 is outside the top 7
    assert average_precision_at_k(rel, 1) == 0.0
    assert average_precision_at_k(rel, 1, normaliser="hits") == 0.0  # Z = 0 hits -> 0
    assert average_precision_at_k([0] * 7, 0) == 0.0  # Z = min(0, 7) = 0 -> 0


def test_ap_at_k_other_k_and_short_list() -> None:
    # k = 3, hits at 1 and 3: (1/1 + 2/3) / min(4, 3) = (5/3)/3 = 5/9
    assert average_precision_at_k([1, 0, 1, 1], 4, k=3) == pytest.approx(5 / 9)
    # gallery of 2 items (< k): missing positions count as not relevant; (1/2)/min(1,7) = 0.5
    assert average_precision_at_k([0, 1], 1) == pytest.approx(0.5)


def test_unknown_normaliser_raises() -> None:
    with pytest.raises(ValueError):
        average_precision_at_k([1, 0], 1, normaliser="mean")
    with pytest.raises(ValueError):
        evaluate_rankings(np.zeros((1, 3), bool), [1], normaliser="bogus")


def test_full_ranking_ap() -> None:
    # hits at 1, 3, 6 of 10, |G| = 3: (1/1 + 2/3 + 3/6) / 3 = (6 + 4 + 3)/6/3 = 13/18
    rel = [1, 0, 1, 0, 0, 1, 0, 0, 0, 0]
    assert average_precision(rel, 3) == pytest.approx(13 / 18)
    # |G| = 4 but one relevant item is missing from the ranking -> (13/6) / 4 = 13/24
    assert average_precision(rel, 4) == pytest.approx(13 / 24)
    assert average_precision(rel, 0) == 0.0
    # a hit beyond rank 7 counts for full AP: hit at rank 9 only -> (1/9)/1
    assert average_precision([0] * 8 + [1], 1) == pytest.approx(1 / 9)


def test_recall_at_k_is_hit_rate() -> None:
    rel = [0, 0, 1, 1, 0]
    assert recall_at_k(rel, 1) == 0.0
    assert recall_at_k(rel, 2) == 0.0
    assert recall_at_k(rel, 3) == 1.0  # one hit is enough, regardless of |G|
    assert recall_at_k(rel, 5) == 1.0


def test_ranked_relevance_orders_and_breaks_ties_by_index() -> None:
    sim = np.array(
        [
            [0.1, 0.9, 0.5, 0.9],  # order: 1, 3 (tie, lower index first), 2, 0
            [0.2, 0.2, 0.2, 0.2],  # all tied -> 0, 1, 2, 3
        ]
    )
    gallery = np.array(["a", "b", "a", "c"])
    queries = np.array(["c", "a"])
    rel = ranked_relevance(sim, queries, gallery)
    assert rel.dtype == np.bool_
    # query "c": ranked gallery labels b, c, a, a
    # query "a": ranked gallery labels a, b, a, c
    assert rel.tolist() == [[False, True, False, False], [True, False, True, False]]


def test_ranked_relevance_shape_errors() -> None:
    with pytest.raises(ValueError):
        ranked_relevance(np.zeros((2, 3)), [0, 1], [0, 1])


def test_evaluate_rankings_aggregates() -> None:
    rel = np.array(
        [
            [0, 1, 0, 1, 0, 0, 0, 0, 0, 0],  # AP@7 = 0.5 (|G|=2); AP = 0.5; first hit at 2
            [1, 0, 0, 0, 0, 0, 0, 0, 0, 0],  # AP@7 = 1 (|G|=1);   AP = 1;   first hit at 1
            [0, 0, 0, 0, 0, 0, 0, 0, 1, 0],  # AP@7 = 0 (|G|=1);   AP = 1/9; first hit at 9
            [0, 0, 0, 0, 0, 1, 0, 0, 0, 0],  # AP@7 = 1/6 / 2;     AP = 1/6 / 2 (|G|=2, one missing)
        ],
        dtype=bool,
    )
    n_rel = np.array([2, 1, 1, 2])
    out = evaluate_rankings(rel, n_rel)
    ap7 = [0.5, 1.0, 0.0, 1 / 12]
    ap = [0.5, 1.0, 1 / 9, 1 / 12]
    assert out["map@7"] == pytest.approx(np.mean(ap7))
    assert out["map"] == pytest.approx(np.mean(ap))
    assert out["recall@1"] == pytest.approx(1 / 4)  # only query 2 hits at rank 1
    assert out["recall@5"] == pytest.approx(2 / 4)  # queries 1, 2
    assert out["recall@7"] == pytest.approx(3 / 4)  # plus query 4 (rank 6)
    assert out["queries"] == 4
    assert out["normaliser"] == "min"
    pq = out["per_query"]
    assert len(pq) == 4
    assert [d["ap@k"] for d in pq] == pytest.approx(ap7)
    assert [d["ap"] for d in pq] == pytest.approx(ap)
    assert [d["hit@1"] for d in pq] == [0.0, 1.0, 0.0, 0.0]
    assert [d["hit@7"] for d in pq] == [1.0, 1.0, 0.0, 1.0]
    assert all(type(v) is float for d in pq for v in d.values())

    # "hits" normaliser: query 4 -> (1/6)/1 instead of (1/6)/2; full mAP unchanged
    hits = evaluate_rankings(rel, n_rel, normaliser="hits")
    assert hits["map@7"] == pytest.approx(np.mean([0.5, 1.0, 0.0, 1 / 6]))
    assert hits["map"] == pytest.approx(out["map"])
    assert hits["normaliser"] == "hits"


def test_evaluate_rankings_matches_single_query_functions() -> None:
    rng = np.random.default_rng(0)
    rel = rng.random((50, 40)) < 0.1
    n_rel = rel.sum(axis=1) + rng.integers(0, 3, size=50)  # some relevant items missing
    for k, norm in [(7, "min"), (3, "hits"), (10, "min")]:
        out = evaluate_rankings(rel, n_rel, k=k, normaliser=norm)
        for i, d in enumerate(out["per_query"]):
            assert d["ap@k"] == pytest.approx(average_precision_at_k(rel[i], int(n_rel[i]), k, norm))
            assert d["ap"] == pytest.approx(average_precision(rel[i], int(n_rel[i])))
            assert d["hit@5"] == recall_at_k(rel[i], 5)
        assert f"map@{k}" in out


def test_evaluate_rankings_empty() -> None:
    out = evaluate_rankings(np.zeros((0, 5), bool), np.zeros(0, int))
    assert out["queries"] == 0 and out["map@7"] == 0.0 and out["per_query"] == []


def test_paired_difference_four_queries_by_hand() -> None:
    # differences 1, 0, 0, 1: mean 0.5. A resample of 4 is all zeros with probability
    # (1/2)^4 = 0.0625 and all ones likewise, both above 0.025, so the 95 % percentile
    # interval is [0, 1] exactly.
    result = paired_difference([1.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 0.0])
    assert result.difference == pytest.approx(0.5)
    assert (result.low, result.high) == (pytest.approx(0.0), pytest.approx(1.0))
    assert result.queries == 4 and result.confidence == 0.95


def test_paired_difference_constant_shift_has_no_spread() -> None:
    # every query gains 0.1: any resample's mean difference is 0.1
    b = np.array([0.2, 0.5, 0.7])
    result = paired_difference(b + 0.1, b)
    assert (result.difference, result.low, result.high) == pytest.approx((0.1, 0.1, 0.1))


def test_paired_difference_is_seeded_and_orders_its_bounds() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.random(50), rng.random(50)
    first, again = paired_difference(a, b, seed=1), paired_difference(a, b, seed=1)
    assert first == again
    assert first.low <= first.difference <= first.high
    assert first.difference == pytest.approx(a.mean() - b.mean())
    flipped = paired_difference(b, a, seed=1)
    assert flipped.difference == pytest.approx(-first.difference)


def test_paired_difference_rejects_unpaired_input() -> None:
    with pytest.raises(ValueError, match="same queries"):
        paired_difference([1.0, 0.0], [1.0])
    with pytest.raises(ValueError, match="at least one query"):
        paired_difference([], [])
    with pytest.raises(ValueError, match="confidence"):
        paired_difference([1.0], [0.0], confidence=1.5)
