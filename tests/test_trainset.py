"""Few-shot training sets: balanced, reproducible, never built from evaluation photos."""

from __future__ import annotations

import json
from typing import Any

import pytest
import sqlalchemy as sa
from test_categories import cli_runner, write_catalogue

from manet.catalog.categories import categories_from_column, mine_categories
from manet.catalog.trainset import build_training_set, show_training_set, training_images
from manet.errors import ManetError

# Trainable images (catalogue image + train photos): juice 5 + 5 = 10, milk 3 + 3 = 6,
# yoghurt 2 + 1 = 3. The val/test photos and the broken train photos must never be used.
PRODUCTS = [
    {"sku": "j1", "title": "Apple Juice", "description": "Apple juice.", "category": "Drinks",
     "photos": {"train": 4, "val": 2, "test": 1}, "broken": 1},
    {"sku": "j2", "title": "Orange Juice", "description": "Orange juice.", "category": "Drinks",
     "photos": {"train": 4, "val": 2}},
    {"sku": "m1", "title": "Whole Milk", "description": "Whole milk.", "category": "Dairy",
     "photos": {"train": 2, "val": 1}},
    {"sku": "m2", "title": "Skimmed Milk", "description": "Skimmed milk.", "category": "Dairy",
     "photos": {"train": 2, "test": 2}},
    {"sku": "y1", "title": "Vanilla Yoghurt", "description": "Vanilla yoghurt.", "category": "Dairy",
     "photos": {"train": 1, "val": 3}, "extra": {"shelf": "Cultured"}},
    {"sku": "y2", "title": "Greek Yoghurt", "description": "Greek yoghurt.", "category": "Dairy",
     "extra": {"shelf": "Cultured"}},
]  # fmt: skip


@pytest.fixture(scope="module")
def db(retriever, tmp_path_factory: pytest.TempPathFactory):
    report = retriever.ingest("manifest", write_catalogue(tmp_path_factory.mktemp("train"), PRODUCTS))
    assert report.failed == 1
    assert {row["name"] for row in mine_categories(retriever.db, 3)} == {"juice", "milk", "yoghurt"}
    return retriever.db


def _rows(db, name: str = "default") -> set[tuple[int, str, int, str]]:
    return {
        (*row[:1], split, *row[2:]) for split in ("train", "val") for row in training_images(db, name, split)
    }


def _eval_or_failed_ids(db) -> set[int]:
    with db.begin() as conn:
        return set(
            conn.execute(
                sa.text("SELECT id FROM images WHERE status <> 'ok' OR split IN ('val', 'test')")
            ).scalars()
        )


def test_balanced_counts(db) -> None:
    summary = build_training_set(db, per_category=5, val_fraction=0.2, seed=0)
    assert summary["per_category"] == {"juice": {"train": 4, "val": 1}, "milk": {"train": 4, "val": 1},
                                       "yoghurt": {"train": 2, "val": 1}}  # fmt: skip
    assert (summary["categories"], summary["train"], summary["val"]) == (3, 10, 3)
    assert summary["config"] == {"per_category": 5, "val_fraction": 0.2, "seed": 0, "source": "tfidf",
                                 "min_per_category": 2}  # fmt: skip
    assert show_training_set(db) == summary


def test_never_uses_evaluation_or_failed_images(db) -> None:
    build_training_set(db, per_category=100, seed=3)
    used = {row[0] for row in _rows(db)}
    assert len(used) == 19 and not used & _eval_or_failed_ids(db)


def test_training_images_have_class_indexes_in_name_order(db) -> None:
    build_training_set(db, per_category=5, seed=0)
    train = training_images(db, split="train")
    assert [(index, name) for _, _, index, name in train] == [(0, "juice")] * 4 + [(1, "milk")] * 4 + [
        (2, "yoghurt")
    ] * 2
    assert all(uri.endswith(".png") for _, uri, _, _ in train)
    assert {row[2:] for row in training_images(db, split="val")} == {
        (0, "juice"),
        (1, "milk"),
        (2, "yoghurt"),
    }
    with pytest.raises(ManetError, match="unknown split"):
        training_images(db, split="test")


def test_reproducible_for_a_seed_and_different_for_another(db) -> None:
    build_training_set(db, per_category=5, seed=0)
    first = _rows(db)
    build_training_set(db, per_category=5, seed=0)
    assert _rows(db) == first
    build_training_set(db, per_category=5, seed=1)
    assert _rows(db) != first


def test_named_sets_are_independent(db) -> None:
    build_training_set(db, name="small", per_category=3, seed=0)
    build_training_set(db, name="default", per_category=5, seed=0)
    assert show_training_set(db, "small")["train"] == 2 + 2 + 2
    assert show_training_set(db)["train"] == 10


def test_product_in_several_categories_counts_once(db) -> None:
    # Manual categories: Drinks (10), Dairy (9) and Cultured (3, the yoghurts also in Dairy).
    categories_from_column(db, "shelf")
    summary = build_training_set(db, name="manual", per_category=100, source="manual")
    assert summary["per_category"] == {"Cultured": {"train": 2, "val": 1}, "Dairy": {"train": 5, "val": 1},
                                       "Drinks": {"train": 8, "val": 2}}  # fmt: skip
    assert len(_rows(db, "manual")) == 19


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"min_per_category": 7}, "only 1 tfidf categories have at least 7 trainable images"),
        ({"val_fraction": 0.0}, "the val split would be empty; raise --val-fraction above 0"),
        ({"val_fraction": 1.0}, r"--val-fraction must be in \[0, 1\)"),
        ({"per_category": 0}, "--per-category must be at least 1"),
        ({"seed": -1}, "--seed must be 0 or more"),
        ({"source": "other"}, "unknown category source"),
    ],
)
def test_bad_requests_change_nothing(db, params: dict[str, Any], message: str) -> None:
    build_training_set(db, per_category=5, seed=0)
    before = (show_training_set(db), _rows(db))
    with pytest.raises(ManetError, match=message):
        build_training_set(db, **params)
    assert (show_training_set(db), _rows(db)) == before


def test_missing_set(db) -> None:
    with pytest.raises(
        ManetError, match="training set 'nope' does not exist; build it with: manet dataset build"
    ):
        show_training_set(db, "nope")


def test_cli_build_and_show(db, database_url: str) -> None:
    run = cli_runner(database_url)
    result = run("dataset", "build", "--per-category", "5", "--seed", "0", "--json", "--yes")
    assert result.exit_code == 0, result.output
    assert (json.loads(result.output)["train"], json.loads(result.output)["val"]) == (10, 3)
    result = run("dataset", "show")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1].split() == ["total", "10", "3"]
    assert "yoghurt" in result.output
    result = run("dataset", "build", "--val-fraction", "0", "--yes")
    assert result.exit_code == 1 and result.output.startswith("Error: the val split would be empty")
    result = run("dataset", "show", "--name", "nope")
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
