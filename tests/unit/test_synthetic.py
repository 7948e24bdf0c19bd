"""Tests for the synthetic catalogue generator (small: 6 products at 96 px)."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from manet.tools.synthetic import (
    MANIFEST_COLUMNS,
    SHAPES,
    generate_catalogue,
    make_specs,
    render_pack,
    shopper_photo,
)

PRODUCTS, PHOTOS, SIZE = 6, 2, 96


def _rows(manifest: Path) -> list[dict[str, str]]:
    with manifest.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_catalogue(tmp_path_factory.mktemp("synth"), PRODUCTS, PHOTOS, SIZE, seed=7)


def test_manifest_columns_and_counts(manifest: Path) -> None:
    assert manifest.name == "manifest.csv"
    header = manifest.read_text(encoding="utf-8").splitlines()[0]
    assert header == "sku,image,title,brand,description,category,domain,split"
    assert tuple(header.split(",")) == MANIFEST_COLUMNS
    rows = _rows(manifest)
    assert len(rows) == PRODUCTS * (1 + PHOTOS)
    domains = Counter(r["domain"] for r in rows)
    assert domains == {"catalog": PRODUCTS, "query": PRODUCTS * PHOTOS}
    for r in rows:
        assert r["split"] == ("" if r["domain"] == "catalog" else "val")
        assert r["category"] in SHAPES
        assert r["title"].startswith(r["brand"] + " ")
        assert r["description"].endswith(".") and r["brand"] in r["description"]
        assert not Path(r["image"]).is_absolute()


def test_every_sku_has_one_catalog_and_n_queries(manifest: Path) -> None:
    rows = _rows(manifest)
    per_sku: dict[str, Counter[str]] = {}
    meta: dict[str, set[tuple[str, str, str]]] = {}
    for r in rows:
        per_sku.setdefault(r["sku"], Counter())[r["domain"]] += 1
        meta.setdefault(r["sku"], set()).add((r["title"], r["brand"], r["category"]))
    assert len(per_sku) == PRODUCTS
    assert all(c == {"catalog": 1, "query": PHOTOS} for c in per_sku.values())
    assert all(len(m) == 1 for m in meta.values())  # photos carry their product's metadata
    assert len({r["brand"] for r in rows}) == PRODUCTS  # brand words are unique per product


def test_images_decode_with_requested_size(manifest: Path) -> None:
    for r in _rows(manifest):
        with Image.open(manifest.parent / r["image"]) as im:
            assert im.format == "JPEG"
            assert im.size == (SIZE, SIZE)
            im.convert("RGB").load()


def test_same_seed_is_identical(tmp_path: Path, manifest: Path) -> None:
    again = generate_catalogue(tmp_path / "again", PRODUCTS, PHOTOS, SIZE, seed=7)
    assert again.read_bytes() == manifest.read_bytes()
    for r in _rows(manifest):
        a = np.asarray(Image.open(manifest.parent / r["image"]))
        b = np.asarray(Image.open(again.parent / r["image"]))
        assert np.array_equal(a, b), r["image"]


def test_different_seed_differs(tmp_path: Path, manifest: Path) -> None:
    other = generate_catalogue(tmp_path / "other", 2, 1, SIZE, seed=8)
    assert {r["brand"] for r in _rows(other)} != {r["brand"] for r in _rows(manifest)[:3]}


def test_products_differ(manifest: Path) -> None:
    rows = [r for r in _rows(manifest) if r["domain"] == "catalog"]
    imgs = [np.asarray(Image.open(manifest.parent / r["image"]), dtype=np.float32) for r in rows]
    for i in range(len(imgs)):
        for j in range(i + 1, len(imgs)):
            assert np.abs(imgs[i] - imgs[j]).mean() > 5.0, (rows[i]["sku"], rows[j]["sku"])


def test_photos_differ_from_each_other_and_from_catalogue(manifest: Path) -> None:
    rows = _rows(manifest)
    sku = rows[0]["sku"]
    imgs = [np.asarray(Image.open(manifest.parent / r["image"]), dtype=np.float32) for r in rows if r["sku"] == sku]
    for i in range(len(imgs)):
        for j in range(i + 1, len(imgs)):
            assert np.abs(imgs[i] - imgs[j]).mean() > 5.0


def test_render_pack_and_photo_shapes() -> None:
    specs = make_specs(8, seed=1)
    assert {s.shape for s in specs} == set(SHAPES)  # shapes come in balanced blocks
    pack = render_pack(specs[0], 64)
    assert pack.shape == (64, 64, 4) and pack.dtype == np.uint8
    alpha = pack[..., 3]
    assert alpha[0, 0] == 0 and alpha[32, 32] == 255  # transparent corner, solid centre
    photo = shopper_photo(pack, np.random.default_rng(0))
    assert photo.shape == (64, 64, 3) and photo.dtype == np.uint8
    assert np.array_equal(photo, shopper_photo(pack, np.random.default_rng(0)))


def test_global_rng_untouched(tmp_path: Path) -> None:
    state = np.random.get_state()[1].copy()  # type: ignore[index]
    generate_catalogue(tmp_path, 1, 1, 64, seed=0)
    assert np.array_equal(np.random.get_state()[1], state)  # type: ignore[index]


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        generate_catalogue(tmp_path, products=0)
