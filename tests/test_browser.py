"""The HTML pages of manet.evaluate.report as a browser shows them: headless Chromium screenshots and
rendered DOM. Skipped where no Chromium is installed (apt-get install chromium).

The pages are rendered from the generated catalogue's files with made-up rankings (no
database, no model): the database side is covered by test_report.py.
"""

from __future__ import annotations

import csv
import shutil
import subprocess
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import pytest
from PIL import Image

from helpers import parse_html

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.slow,  # each test starts Chromium
              pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on PATH (apt-get install chromium)")]

WINDOW = (1280, 1600)
HIT_GREEN = (0x18, 0x80, 0x38)  # --hit in manet.evaluate.report.CSS
MISS_RED = (0xC5, 0x22, 0x1F)  # --miss


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """Run headless Chromium with a fresh profile, no network services, no GPU."""
    profile = tempfile.mkdtemp(prefix="chromium-profile-", dir=tmp_path)
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", f"--window-size={WINDOW[0]},{WINDOW[1]}", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def screenshot(tmp_path: Path, page: Path, png: Path) -> Image.Image:
    chromium(tmp_path, f"--screenshot={png}", page.resolve().as_uri())
    assert png.is_file(), f"no screenshot at {png}"
    image = Image.open(png)
    image.load()
    return image.convert("RGB")


def pixels_near(image: Image.Image, colour: tuple[int, int, int], tolerance: int = 10) -> int:
    """How many pixels are within ``tolerance`` of ``colour`` on every channel."""
    return sum(count for count, pixel in image.getcolors(maxcolors=WINDOW[0] * WINDOW[1])
               if all(abs(a - b) <= tolerance for a, b in zip(pixel, colour, strict=True)))


@pytest.fixture(scope="module")
def catalogue_items(small_catalogue):
    """(catalogue items by product index, query items by product index) from the manifest."""
    from manet.evaluate.report import Item

    root = small_catalogue.parent
    with open(small_catalogue, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    skus = sorted({row["sku"] for row in rows})
    gallery, queries = {}, {}
    for n, row in enumerate(rows):
        p = skus.index(row["sku"])
        item = Item(1000 + n, str(root / row["image"]), p + 1, row["sku"], row["title"], row["brand"],
                    (row["category"],))
        if row["domain"] == "catalog":
            gallery[p] = item
        else:
            queries.setdefault(p, []).append(item)
    return gallery, queries


@pytest.fixture(scope="module")
def eval_page(catalogue_items, tmp_path_factory):
    """An evaluation page of 20 queries: 5 hits at rank 1, 5 first hits at rank 3, 10 misses."""
    from manet.evaluate.report import EvalRun, QueryRow, Result, render_eval

    gallery, queries = catalogue_items
    n = len(gallery)
    rows = []
    for p, photos in queries.items():
        for j, query in enumerate(photos):
            others = [(p + step) % n for step in range(1, n)]
            order = others[:7] if j == 1 else ([p, *others[:6]] if p % 2 == 0 else [*others[:2], p, *others[2:6]])
            results = tuple(Result(rank, gallery[g], 0.9 - 0.01 * rank, g == p) for rank, g in enumerate(order, 1))
            ap = 0.0 if j == 1 else (1.0 if p % 2 == 0 else 1 / 3)
            rows.append(QueryRow(query, ap, ap, order[0] == p, results))
    rows.sort(key=lambda row: (row.ap_at_k, row.query.image_id))
    metrics = {"map@7": 1 / 3, "map": 0.4, "recall@1": 0.25, "recall@5": 0.5, "recall@7": 0.5,
               "queries_without_relevant": 0, "reranker": None}
    run = EvalRun(7, "tiny <model>", "val", 7, "min", len(rows), metrics, datetime(2026, 1, 2, 3, 4, tzinfo=UTC),
                  sum(row.hit_at_1 for row in rows), sum(row.miss for row in rows), tuple(rows))
    path = tmp_path_factory.mktemp("pages") / "eval-report.html"
    path.write_text(render_eval(run), encoding="utf-8")
    return path, run


@pytest.fixture(scope="module")
def search_page(catalogue_items, tmp_path_factory):
    """A search page: the query's product at rank 1, an image that cannot be read at rank 7."""
    from manet.evaluate.report import Item, Result, render_search

    gallery, queries = catalogue_items
    query = queries[3][0]
    order = [3, 0, 1, 2, 4, 5]
    results = [Result(rank, gallery[p], 0.95 - 0.02 * rank, p == 3) for rank, p in enumerate(order, 1)]
    results.append(Result(7, Item(999, "/nonexistent/gone.jpg", 77, "gone-sku", "Moved away", "Nobody"), 0.5, False))
    page = render_search(query, results, model="tiny", query_label=f"file {query.uri}", k=7,
                         filters={"category": "bottle", "brand": None})
    path = tmp_path_factory.mktemp("pages") / "search.html"
    path.write_text(page, encoding="utf-8")
    return path


def test_eval_report_screenshot(eval_page, tmp_path):
    page, _ = eval_page
    image = screenshot(tmp_path, page, tmp_path / "eval-report.png")
    assert image.size == WINDOW
    assert len(image.getcolors(maxcolors=WINDOW[0] * WINDOW[1])) > 500  # thumbnails and text, not a blank page
    assert pixels_near(image, MISS_RED) > 2000  # the misses come first, their rows marked red


def test_search_screenshot(search_page, tmp_path):
    image = screenshot(tmp_path, search_page, tmp_path / "search.png")
    assert image.size == WINDOW
    assert len(image.getcolors(maxcolors=WINDOW[0] * WINDOW[1])) > 500
    assert pixels_near(image, HIT_GREEN) > 300  # the hit card's border and tag
    assert pixels_near(image, MISS_RED) > 100  # the unreadable image's placeholder


def test_rendered_dom_has_the_query_rows(eval_page, tmp_path):
    page, run = eval_page
    dom = chromium(tmp_path, "--dump-dom", page.resolve().as_uri()).stdout
    root = parse_html(dom)
    # (image id, miss?, cards in the row) of each query row
    rows = [(int(q.attrs["data-image-id"]), "miss" in q.classes, len(q.find("div", "card")))
            for q in root.find("section", "q")]
    assert [row[0] for row in rows] == [row.query.image_id for row in run.rows]
    assert sum(row[1] for row in rows) == 10
    assert all(row[2] == 8 for row in rows)  # the query and its top 7
    text = root.content()
    assert "MAP@7 0.3333" in text and "20 of 20 queries shown" in text
    assert "model tiny <model> · run 7" in text  # escaped in the file, shown as text
    assert "<script" not in dom
