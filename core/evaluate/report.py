"""Self-contained HTML pages of a search and of a stored evaluation run.

A page is one file that works offline: inline CSS, no script, no external URL. Thumbnails are
base64 JPEG data URIs, each distinct image embedded once as a CSS class (an evaluation shows the
same catalogue images under many queries), so a page of 200 queries stays a few MB. Every text
value goes through :func:`html.escape`. An image that cannot be read (moved, deleted, corrupt)
shows a placeholder with the reason; it never fails the page.

:func:`render_search` and :func:`render_eval` (:mod:`manet.evaluate.report_html`) are pure (data
in, HTML out, apart from reading the image files); :func:`search_report` and :func:`eval_report`
read the database and write the file.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa

from manet.catalog.images import inspect_image
from manet.errors import ManetError, NotFoundError, one_line
from manet.evaluate.report_html import render_eval, render_search
from manet.evaluate.report_items import EvalRun, Item, QueryRow, Result
from manet.safe_files import ReadLimits, refuse_special_output
from manet.store import descriptors
from manet.store.database import Database

#: Query rows an evaluation page shows (worst AP@k first).
DEFAULT_REPORT_LIMIT = 200


# -- database --------------------------------------------------------------------------------
_ITEMS_SQL = """
    SELECT i.id, i.uri, i.product_id, p.sku, p.title, p.brand,
           ARRAY(SELECT c.name FROM product_categories pc JOIN categories c ON c.id = pc.category_id
                  WHERE pc.product_id = i.product_id ORDER BY c.name) AS categories
      FROM images i LEFT JOIN products p ON p.id = i.product_id
"""


def _item(row: Any) -> Item:
    return Item(int(row.id), row.uri, row.product_id, row.sku, row.title, row.brand, tuple(row.categories or ()))


def _items(conn: sa.Connection, ids: Iterable[int]) -> dict[int, Item]:
    ids = sorted({int(i) for i in ids})
    rows = conn.execute(sa.text(_ITEMS_SQL + " WHERE i.id = ANY(:ids)"), {"ids": ids}).all() if ids else []
    return {int(row.id): _item(row) for row in rows}


def _vectors(conn: sa.Connection, model_id: int, ids: Iterable[int]) -> dict[int, np.ndarray]:
    return descriptors.read_vectors(conn, model_id, sorted({int(i) for i in ids}))


def load_eval_run(db: Database, run_id: int, limit: int = DEFAULT_REPORT_LIMIT) -> EvalRun:
    """Stored run ``run_id`` with its ``limit`` worst queries (AP@k, then AP, ascending) and
    their top k; scores are the inner products of the stored descriptors."""
    if limit < 0:
        raise ManetError(f"report limit {limit} is negative; give 0 (summary only) or more query rows")
    with db.begin() as conn:
        run = conn.execute(
            sa.text("""SELECT r.id, r.model_id, m.name, r.split, r.k, r.normaliser, r.queries, r.metrics, r.created_at
                         FROM eval_runs r JOIN models m ON m.id = r.model_id WHERE r.id = :r"""),
            {"r": int(run_id)},
        ).first()
        if run is None:
            raise NotFoundError(f"evaluation run {run_id} does not exist; list runs with SQL: "
                                "SELECT id, model_id, created_at FROM eval_runs")
        # A miss has no image of the query's product in its top k (counted over every query).
        totals = conn.execute(
            sa.text("""SELECT count(*) AS queries, count(*) FILTER (WHERE e.hit_at_1) AS hits_at_1,
                              count(*) FILTER (WHERE NOT EXISTS (
                                  SELECT 1 FROM images t WHERE t.id = ANY(e.top_image_ids)
                                     AND t.product_id = q.product_id)) AS misses
                         FROM eval_results e JOIN images q ON q.id = e.image_id WHERE e.run_id = :r"""),
            {"r": run.id},
        ).one()
        rows = conn.execute(
            sa.text("""SELECT image_id, ap_at_k, ap, hit_at_1, top_image_ids FROM eval_results
                        WHERE run_id = :r ORDER BY ap_at_k, ap, image_id LIMIT :limit"""),
            {"r": run.id, "limit": int(limit)},
        ).all()
        ids = {int(row.image_id) for row in rows} | {int(i) for row in rows for i in row.top_image_ids}
        items = _items(conn, ids)
        vectors = _vectors(conn, run.model_id, ids)
    query_rows = []
    for row in rows:
        query = items.get(int(row.image_id), Item(int(row.image_id), None))
        results = []
        for rank, image_id in enumerate(row.top_image_ids, start=1):
            item = items.get(int(image_id), Item(int(image_id), None))
            q, g = vectors.get(query.image_id), vectors.get(item.image_id)
            score = float(np.dot(q, g)) if q is not None and g is not None else None
            hit = query.product_id is not None and item.product_id == query.product_id
            results.append(Result(rank, item, score, hit))
        query_rows.append(QueryRow(query, float(row.ap_at_k), float(row.ap), bool(row.hit_at_1), tuple(results)))
    return EvalRun(int(run.id), run.name, run.split, int(run.k), run.normaliser, int(totals.queries or run.queries),
                   dict(run.metrics), run.created_at, int(totals.hits_at_1), int(totals.misses), tuple(query_rows))


def check_output_path(path: Path) -> Path:
    """``path`` if a page can be written there, else a :class:`ManetError` saying why."""
    path = Path(path)
    if path.is_dir():
        raise ManetError(f"report path {path} is a folder; give a file name such as {path / 'report.html'}")
    folder = path.parent
    if not folder.exists():
        raise ManetError(f"folder {folder} does not exist; create it (mkdir -p {folder}) or choose another path")
    if not folder.is_dir():
        raise ManetError(f"{folder} is not a folder; choose a report path inside a folder")
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ManetError(f"cannot write {path} (permission denied); choose a writable folder")
    refuse_special_output(path, "report path", "give a file name to write the page to")
    return path


def write_page(path: Path, page: str) -> Path:
    """Write ``page`` to ``path`` (checked with :func:`check_output_path` before the page was
    built); OS errors become one-line :class:`ManetError`."""
    path = Path(path)
    try:
        path.write_text(page, encoding="utf-8")
    except OSError as exc:
        raise ManetError(f"cannot write {path}: {exc.strerror or one_line(exc)}; choose another path") from exc
    return path


def eval_report(db: Database, run_id: int, path: Path, limit: int = DEFAULT_REPORT_LIMIT,
                limits: ReadLimits | None = None) -> Path:
    """Write the page of stored evaluation run ``run_id`` (its ``limit`` worst queries) to ``path``;
    thumbnails are read under ``limits``."""
    check_output_path(path)
    return write_page(path, render_eval(load_eval_run(db, run_id, limit), limits))


def _file_item(conn: sa.Connection, image: Path, limits: ReadLimits | None = None) -> tuple[Item, str]:
    """The query file as an item: a stored image with the same bytes lends it its product."""
    label = f"file {image}"
    try:
        digest = inspect_image(image, limits=limits).sha256  # the content hash ingest stored
    except ManetError:  # the search itself reported a bad file; the page shows the placeholder
        return Item(None, str(image)), label
    row = conn.execute(sa.text(_ITEMS_SQL + " WHERE i.sha256 = :h"), {"h": digest}).first()
    if row is None:
        return Item(None, str(image)), label
    stored = _item(row)
    # Keyed by the stored image's id, so the picture is embedded once if it is also a result.
    return replace(stored, uri=str(image)), f"{label} (stored image {stored.image_id})"


def search_report(db: Database, path: Path, hits: Sequence[Any], *, model: str, k: int,
                  image: Path | None = None, image_id: int | None = None,
                  filters: Mapping[str, Any] | None = None, reranker: Mapping[str, Any] | None = None,
                  limits: ReadLimits | None = None) -> Path:
    """Write the page of a search's ``hits`` (:class:`manet.search.query.Hit`) for ``image`` (a file)
    or stored ``image_id`` to ``path``; every file is read under ``limits``."""
    if (image is None) == (image_id is None):
        raise ManetError("give an image path or an image id (one of them)")
    check_output_path(path)
    with db.begin() as conn:
        if image is not None:
            query, label = _file_item(conn, Path(image), limits)
        else:
            found = _items(conn, [int(image_id)])  # type: ignore[arg-type]
            query = found.get(int(image_id), Item(int(image_id), None))  # type: ignore[arg-type]
            label = f"stored image {image_id}"
        items = _items(conn, [hit.image_id for hit in hits])
    results = []
    for hit in hits:
        item = items.get(int(hit.image_id)) or Item(int(hit.image_id), hit.uri, hit.product_id, hit.sku, hit.title,
                                                     hit.brand)
        marked = None if query.product_id is None else hit.product_id == query.product_id
        results.append(Result(int(hit.rank), item, float(hit.score), marked))
    page = render_search(query, results, model=model, query_label=label, k=k, filters=filters, reranker=reranker,
                         limits=limits)
    return write_page(path, page)
