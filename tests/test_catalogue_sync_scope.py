"""`manet ingest --sync` is scoped by the dataset an image came from (``images.source``), not by
folder: a manifest whose folder holds another dataset's folder never removes that dataset's images
or products; rows stored before sources were recorded are left alone and reported; a product with
images from two datasets loses only the synced dataset's images."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import sqlalchemy as sa


def _write(manifest: Path, rows: list[dict[str, str]]) -> None:
    with manifest.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["sku", "image", "title"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def _dataset(root: Path, skus: list[str], seed: int, name: str = "manifest.csv") -> Path:
    """A manifest ``root/name`` with one random 48 px image per SKU in ``root``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for sku in skus:
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(root / f"{sku}.png")
        rows.append({"sku": sku, "image": f"{sku}.png", "title": f"title {sku}"})
    _write(root / name, rows)
    return root / name


def _drop(manifest: Path, sku: str) -> None:
    with manifest.open(newline="", encoding="utf-8") as handle:
        rows = [row for row in csv.DictReader(handle) if row["sku"] != sku]
    _write(manifest, rows)


def _query(retriever, sql: str, **params) -> list[tuple]:
    with retriever.db.begin() as conn:
        return [tuple(row) for row in conn.execute(sa.text(sql), params)]


def _skus(retriever, like: str) -> list[str]:
    return [sku for (sku,) in _query(retriever, "SELECT sku FROM products WHERE sku LIKE :l ORDER BY sku", l=like)]


def _uris(retriever, sku: str) -> list[str]:
    return [uri for (uri,) in _query(retriever, "SELECT i.uri FROM images i JOIN products p ON p.id = i.product_id "
                                                "WHERE p.sku = :s ORDER BY i.uri", s=sku)]


def _sync(run, manifest: Path) -> dict:
    done = run("ingest", "manifest", str(manifest), "--sync", "--yes", "--json")
    assert done.exit_code == 0, done.output
    return json.loads(done.stdout)


def test_nested_datasets_never_touch_each_others_images(retriever, run, tmp_path):
    outer = _dataset(tmp_path / "outer", ["NO1", "NO2", "NO3"], seed=1)
    inner = _dataset(tmp_path / "outer" / "inner", ["NI1", "NI2", "NI3"], seed=2)
    # The QA case: a manifest in the parent folder listing a few of another dataset's images.
    stray = tmp_path / "stray.csv"
    _write(stray, [{"sku": "NO1", "image": "outer/NO1.png", "title": "title NO1"}])
    for manifest in (outer, inner, stray):
        retriever.ingest("manifest", manifest)
    assert _query(retriever, "SELECT DISTINCT source FROM images WHERE uri LIKE :p ORDER BY source",
                  p=f"{tmp_path}/%") == [(f"manifest:{inner}",), (f"manifest:{outer}",)]

    dry = run("ingest", "manifest", str(stray), "--sync", "--dry-run")
    assert dry.exit_code == 0 and "would delete 0 products and 0 images" in dry.output, dry.output
    assert _sync(run, stray)["removed"]["images_deleted"] == 0

    _drop(outer, "NO2")  # the outer dataset's folder holds the inner one's: its sync stays out of it
    dry = run("ingest", "manifest", str(outer), "--sync", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "would delete 1 products and 1 images" in dry.output and "product NO2" in dry.output
    assert "NI" not in dry.output and "note:" not in dry.output
    removed = _sync(run, outer)["removed"]
    assert [p["sku"] for p in removed["products"]] == ["NO2"] and removed["unsourced_left"] == 0
    assert _skus(retriever, "N%") == ["NI1", "NI2", "NI3", "NO1", "NO3"]

    _drop(inner, "NI3")
    removed = _sync(run, inner)["removed"]
    assert [p["sku"] for p in removed["products"]] == ["NI3"]
    assert [Path(i["uri"]).name for i in removed["images"]] == ["NI3.png"]
    assert _skus(retriever, "N%") == ["NI1", "NI2", "NO1", "NO3"]
    [event] = retriever.history(sku="NI3", action="product.delete")
    assert event["details"]["reason"] == "sync"


def test_images_without_a_source_are_left_alone_reported_then_adopted(retriever, run, tmp_path):
    manifest = _dataset(tmp_path / "legacy", ["LG1", "LG2", "LG3"], seed=3)
    retriever.ingest("manifest", manifest)
    _query(retriever, "UPDATE images SET source = NULL WHERE uri LIKE :p RETURNING id", p=f"{tmp_path}/%")
    _drop(manifest, "LG2")

    dry = run("ingest", "manifest", str(manifest), "--sync", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "would delete 0 products and 0 images" in dry.output
    assert "would leave alone 1 images" in dry.output and "without --sync" in dry.output
    assert "manet images delete" in dry.output

    done = run("ingest", "manifest", str(manifest), "--sync", "--yes")
    assert done.exit_code == 0, done.output
    assert "2 stored images adopted" in done.output and "deleted 0 products and 0 images" in done.output
    assert "left alone 1 images" in done.output
    assert _skus(retriever, "LG%") == ["LG1", "LG2", "LG3"]
    assert _query(retriever, "SELECT p.sku, i.source IS NULL FROM images i JOIN products p ON p.id = i.product_id "
                             "WHERE p.sku LIKE 'LG%' ORDER BY p.sku") == [("LG1", False), ("LG2", True), ("LG3", False)]

    _drop(manifest, "LG3")  # adopted rows are the dataset's own: sync now removes them
    removed = _sync(run, manifest)["removed"]
    assert [p["sku"] for p in removed["products"]] == ["LG3"] and removed["unsourced_left"] == 1
    assert _skus(retriever, "LG%") == ["LG1", "LG2"]


def test_a_product_with_images_of_two_datasets_loses_only_the_synced_ones(retriever, run, tmp_path):
    first = _dataset(tmp_path / "first", ["TW1", "TWA"], seed=5)
    second = tmp_path / "second"
    _dataset(second, ["TWB"], seed=6)
    _dataset(second, ["TW1x"], seed=7)  # a second image of TW1, in the second dataset
    _write(second / "manifest.csv", [{"sku": "TW1", "image": "TW1x.png", "title": "title TW1"},
                                     {"sku": "TWB", "image": "TWB.png", "title": "title TWB"}])
    for manifest in (first, second / "manifest.csv"):
        retriever.ingest("manifest", manifest)
    assert [Path(uri).name for uri in _uris(retriever, "TW1")] == ["TW1.png", "TW1x.png"]

    _write(second / "manifest.csv", [{"sku": "TWB", "image": "TWB.png", "title": "title TWB"}])
    removed = _sync(run, second / "manifest.csv")["removed"]
    assert removed["products"] == [] and [Path(i["uri"]).name for i in removed["images"]] == ["TW1x.png"]
    assert [Path(uri).name for uri in _uris(retriever, "TW1")] == ["TW1.png"]
    assert retriever.history(sku="TW1", action="product.delete") == []

    # A file replaced in place: the new row is the dataset's that stored it.
    from PIL import Image

    Image.fromarray(np.full((48, 48, 3), 7, dtype=np.uint8)).save(tmp_path / "first" / "TWA.png")
    assert retriever.ingest("manifest", first).images_replaced == 1
    assert _query(retriever, "SELECT source FROM images WHERE uri = :u",
                  u=str(tmp_path / "first" / "TWA.png")) == [(f"manifest:{first}",)]
