"""HTML result pages (manet.evaluate.report): `manet search --html` and `manet eval --report`, parsed
with the stdlib HTML parser and checked against the JSON output and the stored eval rows."""

from __future__ import annotations

import base64
import io
import json
import re
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa
from PIL import Image

from helpers import Node, parse_html

THUMB_RULE = re.compile(r"\.(i\w+)\{background-image:url\(data:image/jpeg;base64,([A-Za-z0-9+/=]+)\)\}")


def parse(path: Path) -> tuple[Node, str]:
    page = path.read_text(encoding="utf-8")
    return parse_html(page), page


def check_self_contained(root: Node, page: str) -> dict[str, bytes]:
    """No external reference; each thumbnail defined once, used, and a JPEG of <= 128 px.
    Returns the thumbnails by CSS class."""
    for node in root.walk():
        for name in ("src", "href", "action", "data"):
            value = node.attrs.get(name, "")
            assert not re.match(r"\s*(https?:)?//", value), (node.tag, name, value)
    assert not root.find("script") and not root.find("link") and not root.find("img")
    assert not re.search(r"url\(\s*['\"]?(https?:)?//", page) and "@import" not in page
    rules = THUMB_RULE.findall(page)
    counts = Counter(key for key, _ in rules)
    assert counts and max(counts.values()) == 1, counts
    thumbs = {}
    for key, data in rules:
        image = Image.open(io.BytesIO(base64.b64decode(data, validate=True)))
        image.load()
        assert image.format == "JPEG" and max(image.size) <= 128, (key, image.format, image.size)
        thumbs[key] = data
    used = {cls for node in root.find("div", "th") for cls in node.classes if re.fullmatch(r"i\w+", cls)}
    assert used == set(thumbs), (used, set(thumbs))
    return thumbs


def query_photo(small_catalogue: Path) -> Path:
    return small_catalogue.parent / "query" / "syn00001_0.jpg"


def image_row(retriever, uri: str):
    with retriever.db.begin() as conn:
        return conn.execute(sa.text("SELECT i.id, i.product_id, p.sku FROM images i JOIN products p "
                                    "ON p.id = i.product_id WHERE i.uri = :u"), {"u": uri}).one()


def products_of(retriever, image_ids) -> dict[int, int]:
    with retriever.db.begin() as conn:
        rows = conn.execute(sa.text("SELECT id, product_id FROM images WHERE id = ANY(:ids)"),
                            {"ids": list(image_ids)}).all()
    return {row.id: row.product_id for row in rows}


def result_cards(root: Node) -> list[Node]:
    return root.one("div", "results").find("div", "card")


def check_search_page(root: Node, hits: list[dict], query_product: int | None, retriever) -> None:
    cards = result_cards(root)
    assert [int(c.attrs["data-image-id"]) for c in cards] == [h["image_id"] for h in hits]
    assert [c.one("span", "score").content() for c in cards] == [f"{h['score']:.4f}" for h in hits]
    assert [c.one("div", "sku").content() for c in cards] == [h["sku"] for h in hits]
    expected = [h["product_id"] == query_product for h in hits]
    assert ["hit" in c.classes for c in cards] == expected
    assert [bool(c.find("span", "tag")) for c in cards] == expected
    summary = root.one(id="summary").content()
    assert f"{sum(expected)} of {len(hits)} results" in summary, summary


# -- search ----------------------------------------------------------------------------------
def test_search_html_with_a_file(populated, run, small_catalogue, tmp_path):
    photo = query_photo(small_catalogue)
    page_path = tmp_path / "search.html"
    result = run("search", str(photo), "--model", "tiny", "--html", str(page_path), "--json")
    assert result.exit_code == 0, result.output
    hits = json.loads(result.stdout)
    assert result.stderr.strip() == f"wrote {page_path}"
    root, page = parse(page_path)
    check_self_contained(root, page)
    # The file is a stored query photo (same bytes): its product is known, so hits are marked.
    stored = image_row(populated, str(photo))
    check_search_page(root, hits, stored.product_id, populated)
    query = root.one("div", "query")
    assert query.attrs["data-image-id"] == str(stored.id) and stored.sku in query.content()
    assert str(photo) in root.one("table", "info").content()


def test_search_html_with_an_image_id_text_mode(populated, run, small_catalogue, tmp_path):
    stored = image_row(populated, str(small_catalogue.parent / "query" / "syn00004_1.jpg"))
    page_path = tmp_path / "by-id.html"
    result = run("search", "--image-id", str(stored.id), "--model", "tiny", "-k", "5", "--brand", "zzz-none",
                 "--html", str(page_path))
    assert result.exit_code == 1, result.output  # the page is written, then why nothing matched
    assert result.stdout.strip().splitlines()[-1] == f"wrote {page_path}"
    assert result.stderr.startswith("Error: no catalogue image of model 'tiny' matches brand 'zzz-none'")
    root, page = parse(page_path)
    assert "brand = zzz-none" in root.one("table", "info").content()
    assert "no results" in page
    hits = json.loads(run("search", "--image-id", str(stored.id), "--model", "tiny", "-k", "5", "--json").stdout)
    assert run("search", "--image-id", str(stored.id), "--model", "tiny", "-k", "5",
               "--html", str(page_path)).exit_code == 0
    root, page = parse(page_path)
    check_self_contained(root, page)
    check_search_page(root, hits, stored.product_id, populated)
    assert "stored image" in root.one("table", "info").content()


def test_titles_are_escaped_and_bad_images_get_placeholders(populated, run, small_catalogue, tmp_path):
    photo = query_photo(small_catalogue)
    hits = json.loads(run("search", str(photo), "--model", "tiny", "-k", "4", "--json").stdout)
    evil = '<script>alert("x")</script> & <b>bold</b>'
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"this is not a JPEG")
    moved = {hits[1]["image_id"]: str(tmp_path / "gone" / "missing.jpg"), hits[2]["image_id"]: str(corrupt)}
    with populated.db.begin() as conn:
        old_title = conn.execute(sa.text("SELECT title FROM products WHERE id = :p"),
                                 {"p": hits[0]["product_id"]}).scalar_one()
        old_uris = dict(conn.execute(sa.text("SELECT id, uri FROM images WHERE id = ANY(:ids)"),
                                     {"ids": list(moved)}).all())
        conn.execute(sa.text("UPDATE products SET title = :t WHERE id = :p"), {"t": evil, "p": hits[0]["product_id"]})
        for image_id, uri in moved.items():
            conn.execute(sa.text("UPDATE images SET uri = :u WHERE id = :i"), {"u": uri, "i": image_id})
    try:
        page_path = tmp_path / "evil.html"
        result = run("search", str(photo), "--model", "tiny", "-k", "4", "--html", str(page_path))
        assert result.exit_code == 0, result.output
    finally:
        with populated.db.begin() as conn:
            conn.execute(sa.text("UPDATE products SET title = :t WHERE id = :p"),
                         {"t": old_title, "p": hits[0]["product_id"]})
            for image_id, uri in old_uris.items():
                conn.execute(sa.text("UPDATE images SET uri = :u WHERE id = :i"), {"u": uri, "i": image_id})
    root, page = parse(page_path)
    assert not root.find("script") and "<script>" not in page and "&lt;script&gt;" in page
    cards = result_cards(root)
    title = cards[0].one("div", "title")
    assert title.content() == evil and not title.find("b")  # the text survives, as text only
    placeholders = {int(c.attrs["data-image-id"]): c.one("div", "missing").content() for c in cards
                    if c.find("div", "missing")}
    assert set(placeholders) == set(moved)
    assert "does not exist" in placeholders[hits[1]["image_id"]]
    assert "not an image file" in placeholders[hits[2]["image_id"]]
    check_self_contained(root, page)  # the placeholders embed nothing


def test_bad_report_paths_are_one_line_errors(populated, run, small_catalogue, tmp_path):
    photo = str(query_photo(small_catalogue))
    for args in (["search", photo, "--model", "tiny", "--html", str(tmp_path / "no" / "such" / "s.html")],
                 ["eval", "--model", "tiny", "--report", str(tmp_path / "nope" / "r.html")]):
        result = run(*args)
        assert result.exit_code == 1
        errors = [line for line in result.output.splitlines() if line.startswith("Error")]
        assert len(errors) == 1 and "does not exist" in errors[0] and "mkdir -p" in errors[0], result.output
    result = run("search", photo, "--model", "tiny", "--html", str(tmp_path))
    assert result.exit_code == 2  # click rejects a folder for a file option
    result = run("eval", "--compare", "tiny", "--report", str(tmp_path / "c.html"))
    assert result.exit_code == 2 and "--report shows one run" in result.output
    result = run("eval", "--model", "tiny", "--report-limit", "5")
    assert result.exit_code == 2 and "add --report FILE" in result.output


# -- eval ------------------------------------------------------------------------------------
def stored_results(retriever, run_id: int) -> dict[int, dict]:
    with retriever.db.begin() as conn:
        rows = conn.execute(sa.text("SELECT e.image_id, e.ap_at_k, e.hit_at_1, e.top_image_ids, i.product_id "
                                    "FROM eval_results e JOIN images i ON i.id = e.image_id WHERE e.run_id = :r"),
                            {"r": run_id}).all()
    return {row.image_id: row._asdict() for row in rows}


def test_eval_report_matches_the_run(populated, run, tmp_path):
    page_path = tmp_path / "eval.html"
    result = run("eval", "--model", "tiny", "--split", "val", "--report", str(page_path), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert result.stderr.strip() == f"wrote {page_path}"
    root, page = parse(page_path)
    check_self_contained(root, page)
    for key in ("map@7", "map", "recall@1", "recall@5", "recall@7"):
        assert root.one("div", "metric", data_metric=key).one("div", "value").content() == f"{data[key]:.4f}"
    assert root.one("div", "metric", data_metric="queries").one("div", "value").content() == str(data["queries"])
    assert f"run {data['run_id']}" in root.one("div", "sub").content()

    stored = stored_results(populated, data["run_id"])
    products = products_of(populated, {i for row in stored.values() for i in row["top_image_ids"]})
    sections = root.find("section", "q")
    assert len(sections) == len(stored) == data["queries"] == 20
    assert "20 of 20 queries shown" in root.one(id="shown").content()
    shown_ap = [float(s.attrs["data-ap-at-k"]) for s in sections]
    assert shown_ap == sorted(shown_ap)  # worst first
    misses = hits_at_1 = 0
    for section in sections:
        row = stored[int(section.attrs["data-image-id"])]
        cards = section.one("div", "cards").find("div", "card")
        assert [int(c.attrs["data-image-id"]) for c in cards] == row["top_image_ids"]
        expected = [products[i] == row["product_id"] for i in row["top_image_ids"]]
        assert ["hit" in c.classes for c in cards] == expected
        assert section.attrs["data-hit-at-1"] == str(int(row["hit_at_1"])) and expected[0] == row["hit_at_1"]
        assert ("miss" in section.classes) == (not any(expected))
        assert section.attrs["data-ap-at-k"] == f"{row['ap_at_k']:.4f}"
        scores = [float(c.one("span", "score").content()) for c in cards]
        assert scores == sorted(scores, reverse=True)  # exact ranking: inner products decrease
        misses += not any(expected)
        hits_at_1 += row["hit_at_1"]
    summary = root.one("table", "summary-table")
    assert summary.one("td", data_count="hits_at_1").content() == str(hits_at_1)
    assert summary.one("td", data_count="misses").content() == str(misses)
    chips = root.one("div", "nav").find("a", "chip")
    assert {a.attrs["href"] for a in chips} == {f"#{s.attrs['id']}" for s in sections if "miss" in s.classes}


def test_eval_report_limit_and_any_stored_run(populated, run, tmp_path):
    from manet.evaluate.report import eval_report

    result = run("eval", "--model", "tiny", "--report", str(tmp_path / "few.html"), "--report-limit", "3")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1] == f"wrote {tmp_path / 'few.html'}"
    root, _ = parse(tmp_path / "few.html")
    sections = root.find("section", "q")
    assert len(sections) == 3 and "3 of 20 queries shown" in root.one(id="shown").content()
    with populated.db.begin() as conn:
        run_id, worst = conn.execute(sa.text(
            "SELECT run_id, array_agg(image_id ORDER BY ap_at_k, ap, image_id) FROM eval_results "
            "WHERE run_id = (SELECT max(id) FROM eval_runs) GROUP BY run_id")).one()
    assert [int(s.attrs["data-image-id"]) for s in sections] == worst[:3]
    # Any stored run, via the API; limit 0 keeps just the summary.
    eval_report(populated.db, run_id, tmp_path / "summary.html", limit=0)
    root, page = parse(tmp_path / "summary.html")
    assert not root.find("section", "q") and "0 of 20 queries shown" in page
    from manet.errors import ManetError

    with pytest.raises(ManetError, match="evaluation run 99999 does not exist"):
        eval_report(populated.db, 99999, tmp_path / "none.html")
