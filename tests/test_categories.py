"""Category mining: the pure TF-IDF ranking and assignment, then storage and the CLI."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from PIL import Image

from manet.catalog.categories import (
    assign_products,
    categories_from_column,
    list_categories,
    mine_categories,
    mine_keywords,
)
from manet.errors import ManetError

# -- helpers shared with test_trainset.py -----------------------------------------------------


def write_catalogue(folder: Path, products: Sequence[dict[str, Any]]) -> Path:
    """Write a manifest CSV and small PNGs, every image different (ingest de-duplicates by hash).

    Each product: sku, title, description, category, optional extra columns (``extra``),
    ``photos`` = {split: count} of query photos, ``broken`` = undecodable train photos.
    Every product also gets one catalogue image (domain catalog, no split).
    """
    folder.mkdir(parents=True, exist_ok=True)
    extra = sorted({key for p in products for key in p.get("extra", {})})
    columns = ["sku", "image", "title", "description", "category", "domain", "split", *extra]
    rows: list[dict[str, str]] = []
    count = 0
    for p in products:
        images = [("catalog", "")] + [
            ("query", split) for split, n in p.get("photos", {}).items() for _ in range(n)
        ]
        for domain, split in images:
            count += 1
            name = f"{p['sku']}_{count}.png"
            Image.new("RGB", (16, 16), (count % 256, count // 256, 7)).save(folder / name)
            rows.append({"sku": p["sku"], "image": name, "title": p["title"], "description": p["description"],
                         "category": p.get("category", ""), "domain": domain, "split": split,
                         **p.get("extra", {})})  # fmt: skip
        for j in range(p.get("broken", 0)):
            name = f"{p['sku']}_broken{j}.png"
            (folder / name).write_bytes(b"not a png")
            rows.append({"sku": p["sku"], "image": name, "title": p["title"], "description": p["description"],
                         "category": p.get("category", ""), "domain": "query", "split": "train"})  # fmt: skip
    manifest = folder / "manifest.csv"
    with manifest.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def cli_runner(database_url: str):
    """A function running ``manet`` commands against ``database_url``."""
    from manet.cli.main import cli

    def run(*args: str) -> Any:
        return CliRunner().invoke(cli, ["--quiet", "--device", "cpu", "--database-url", database_url, *args])

    return run


# -- pure ---------------------------------------------------------------------------------

CORPUS = [
    ("Fresh Apple Juice 1L", "Apple juice from concentrate, ready to drink."),
    ("Orange Juice Premium", "Freshly squeezed orange juice with pulp."),
    ("Mango Juices Organic", "A tropical juice of ripe mangoes."),
    ("Whole Milk 3%", "Fresh whole milk from Swedish farms."),
    ("Skimmed Milk Light", "Skimmed milk with 0.5% fat, fresh every day."),
    ("Organic Milk Classic", "Organic milk from grass-fed cows."),
    ("Vanilla Yoghurt", "Creamy yoghurt with real vanilla."),
    ("Strawberry Yoghurt Fresh", "A fruity yoghurt with strawberries."),
    ("Greek Yoghurt Natural", "Thick natural yoghurt, strained."),
    ("Apple Granny Smith Class 1", "A green apple with firm, sour flesh."),
    ("Apple Royal Gala Class 1", "A sweet, crispy apple."),
    ("Apple Pink Lady Class 1", "A crisp and juicy apple, fresh from the orchard."),
]


def test_mining_finds_the_product_kinds() -> None:
    keywords = mine_keywords(CORPUS, 4)
    assert {word for word, _ in keywords} == {"juice", "milk", "yoghurt", "apple"}
    scores = [score for _, score in keywords]
    assert scores == sorted(scores, reverse=True) and all(s > 0 for s in scores)


def test_mining_skips_stop_marketing_and_unit_words() -> None:
    words = {word for word, _ in mine_keywords(CORPUS, 50)}
    assert {"juice", "milk", "yoghurt", "apple"} <= words
    assert not words & {"fresh", "organic", "class", "premium", "light", "the", "with", "from"}
    assert all(word.isalpha() and len(word) >= 3 for word in words)


def test_mining_folds_plurals_and_is_deterministic() -> None:
    texts = ["Tomatoes on the vine", "Cherry tomato", "Beef tomato", "Peppers mixed", "Red pepper",
             "Apple pie", "Baked apples"]  # fmt: skip
    first = mine_keywords(texts, 5)
    words = [w for w, _ in first]
    assert words[0] == "tomato" and set(words) == {"tomato", "pepper", "apple"}  # no "tomatoes"
    assert mine_keywords(list(texts), 5) == first


def test_mining_drops_words_in_most_products() -> None:
    texts = [f"Brand {kind} {n}" for kind in ("soap", "soap", "shampoo", "shampoo") for n in ("one", "two")]
    words = [w for w, _ in mine_keywords(texts, 5)]
    assert "brand" not in words and {"soap", "shampoo"} <= set(words)


def test_mining_skips_keywords_that_would_split_a_category() -> None:
    texts = ["Skimmed milk", "Skimmed milk lactose-free", "Skimmed milk 0.5%", "Apple juice", "Orange juice",
             "Rye bread", "Wheat bread"]  # fmt: skip
    words = {w for w, _ in mine_keywords(texts, 10)}
    assert {"juice", "bread"} <= words and len(words & {"milk", "skimmed"}) == 1


def test_mining_needs_the_kind_in_title_and_description() -> None:
    texts = [("Apple Klass 1", "A sweet apple."), ("Apple Gala", "A crisp apple."),
             ("Pear Klass 1", "A juicy pear."), ("Pear Conference", "A soft pear."),
             ("Plum Klass 1", "Ripe plum."), ("Kiwi", "Kiwi fruit."), ("Lime", "Sour lime.")]  # fmt: skip
    assert {w for w, _ in mine_keywords(texts, 10)} == {"apple", "pear"}  # not "klass": titles only
    assert "klass" in {w for w, _ in mine_keywords([title for title, _ in texts], 10)}


def test_mining_validates_top() -> None:
    with pytest.raises(ManetError, match="--top"):
        mine_keywords(CORPUS, 0)


def test_assignment_title_wins_over_description() -> None:
    texts = [
        ("Milk Chocolate", "made with yoghurt"),
        ("Granny Smith", "a green apple"),
        ("Bread", "a sourdough loaf"),
    ]
    assert assign_products(texts, ["yoghurt", "milk", "apple"]) == ["milk", "apple", None]


def test_assignment_prefers_the_rarest_keyword_then_keyword_order() -> None:
    titles = ["Apple Juice", "Orange Juice", "Mango Juice", "Apple Pie"]
    assert assign_products(titles, ["juice", "apple"]) == ["apple", "juice", "juice", "apple"]
    assert assign_products(["Apple Juice", "Apple Juice"], ["juice", "apple"]) == ["juice", "juice"]


def test_assignment_matches_whole_words_and_plurals() -> None:
    titles = ["Pineapple slices", "Cherry TOMATOES", "Mixed berries", "Orange juices", None]
    assert assign_products(titles, ["apple", "tomato", "berry", "juice"]) == [
        None,
        "tomato",
        "berry",
        "juice",
        None,
    ]


# -- database -----------------------------------------------------------------------------

PRODUCTS = [
    {"sku": "j1", "title": "Apple Juice", "description": "Fresh apple juice.", "category": "Drinks",
     "photos": {"train": 2, "val": 1}},
    {"sku": "j2", "title": "Orange Juice", "description": "Orange juice with pulp.", "category": "Drinks",
     "photos": {"train": 2, "val": 1}, "extra": {"shelf": "chilled"}},
    {"sku": "m1", "title": "Whole Milk", "description": "Whole milk from the farm.", "category": "Dairy",
     "photos": {"train": 1, "test": 1}, "extra": {"shelf": "chilled"}},
    {"sku": "m2", "title": "Skimmed Milk", "description": "Low fat milk.", "category": "Dairy",
     "photos": {"train": 1}},
    {"sku": "y1", "title": "Vanilla Yoghurt", "description": "Creamy yoghurt.", "category": "Dairy"},
    {"sku": "y2", "title": "Greek Yoghurt", "description": "Thick yoghurt.", "category": "Dairy"},
    {"sku": "b1", "title": "Sourdough Bread", "description": "A crusty loaf.", "category": "Bakery",
     "photos": {"val": 1}},
]  # fmt: skip


@pytest.fixture(scope="module")
def db(retriever, tmp_path_factory: pytest.TempPathFactory):
    report = retriever.ingest("manifest", write_catalogue(tmp_path_factory.mktemp("cats"), PRODUCTS))
    assert report.failed == 0 and report.products_added == len(PRODUCTS)
    return retriever.db


def _by_name(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {row["name"]: row for row in rows}


def test_mine_stores_tfidf_categories_with_counts(db) -> None:
    rows = _by_name(mine_categories(db, 3))
    assert set(rows) == {"juice", "milk", "yoghurt"}
    assert rows["juice"] == {
        "name": "juice",
        "keywords": ["juice"],
        "source": "tfidf",
        "products": 2,
        "images": 8,
    }
    assert (rows["milk"]["products"], rows["milk"]["images"]) == (2, 5)  # every ok image, any split
    assert (rows["yoghurt"]["products"], rows["yoghurt"]["images"]) == (2, 2)
    assert _by_name(list_categories(db, "tfidf")) == rows
    manual = _by_name(list_categories(db, "manual"))  # ingest's categories are untouched
    assert set(manual) == {"Drinks", "Dairy", "Bakery"} and manual["Dairy"]["products"] == 4


def test_remining_replaces_the_tfidf_categories(db) -> None:
    mine_categories(db, 3)
    assert set(_by_name(mine_categories(db, 3, keywords=["Juice", "bread"]))) == {"juice", "bread"}
    assert set(_by_name(list_categories(db, "tfidf"))) == {"juice", "bread"}
    assert len(list_categories(db, "manual")) == 3


def test_min_images_drops_small_categories(db) -> None:
    # Trainable images (catalogue + train photos): juice 6, milk 4, yoghurt 2.
    assert set(_by_name(mine_categories(db, 3, min_images=3))) == {"juice", "milk"}


def test_keywords_matching_nothing_keep_earlier_categories(db) -> None:
    before = mine_categories(db, 3)
    with pytest.raises(ManetError, match="matched no product"):
        mine_categories(db, 3, keywords=["caviar", "truffle"])
    with pytest.raises(ManetError, match="matched no product"):
        mine_categories(db, 3, min_images=100)
    assert list_categories(db, "tfidf") == before


def test_categories_from_columns(db) -> None:
    assert set(_by_name(categories_from_column(db, "category"))) == {"Drinks", "Dairy", "Bakery"}
    shelf = _by_name(categories_from_column(db, "shelf"))
    assert shelf == {
        "chilled": {"name": "chilled", "keywords": [], "source": "manual", "products": 2, "images": 7}
    }
    assert categories_from_column(db, "shelf") == list(shelf.values())  # idempotent
    with pytest.raises(ManetError, match="no product has a 'aisle' column; columns found: category, shelf"):
        categories_from_column(db, "aisle")


def test_cli_mine_and_list(db, database_url: str) -> None:
    run = cli_runner(database_url)
    result = run("categories", "mine", "--top", "3", "--json", "--yes")
    assert result.exit_code == 0, result.output
    assert {row["name"] for row in json.loads(result.output)} == {"juice", "milk", "yoghurt"}
    result = run("categories", "list", "--source", "tfidf")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert len(lines) == 3 and lines[0].split()[:3] == ["juice", "juice", "2"]
    result = run("categories", "mine", "--keyword", "caviar", "--yes")
    assert result.exit_code == 1
    assert result.output.startswith("Error: category keywords caviar matched no product")
    assert len(result.output.strip().splitlines()) == 1
    result = run("categories", "mine", "--from-column", "category", "--json")
    assert result.exit_code == 0 and all(row["source"] == "manual" for row in json.loads(result.output))
