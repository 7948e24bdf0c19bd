"""Loading ``manet bench search``'s scratch database: products, catalogue images, a filter
category and descriptors, one chunk per transaction, with the exact top-7 kept alongside."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import sqlalchemy as sa

from manet.bench.search_truth import IMAGES_PER_PRODUCT, RunningTopK, category_members
from manet.store import descriptors
from manet.store.database import Database
from manet.store.models import ModelRecord, delete_model

BENCH_MODEL = "bench-search"
BENCH_CATEGORY = "bench-filter"


def insert_catalogue_rows(conn: Any, first_image: int, count: int, products_done: int) -> int:
    """Products (IMAGES_PER_PRODUCT images each) and catalogue images ``first_image`` ..
    ``first_image + count - 1`` with set-based SQL; returns the last product id written."""
    last_image = first_image + count - 1
    last_product = (last_image - 1) // IMAGES_PER_PRODUCT + 1
    conn.execute(
        "INSERT INTO products (id, sku, title, brand) "
        "SELECT g, 'B' || g, 'Bench product ' || g, 'Brand ' || (g %% 50) FROM generate_series(%s::bigint, %s::bigint) g",
        (products_done + 1, last_product))
    conn.execute(
        f"INSERT INTO images (id, product_id, uri, domain) "
        f"SELECT g, (g - 1) / {IMAGES_PER_PRODUCT} + 1, 'bench://' || g, 'catalog' FROM generate_series(%s::bigint, %s::bigint) g",
        (first_image, last_image))
    return last_product


@dataclass
class Loaded:
    n: int
    truth: np.ndarray
    #: Per filter selectivity: the exact top-7 within its category, and its catalogue rows.
    filtered_truth: dict[float, np.ndarray]
    filtered_rows: dict[float, int]
    seconds: float
    vectors: np.ndarray | None


def category_name(selectivity: float) -> str:
    """The scratch category holding ``selectivity`` of the products."""
    return f"{BENCH_CATEGORY}-{selectivity:g}"


def load_gallery(db: Database, model: ModelRecord, chunks: Iterator[np.ndarray], queries: np.ndarray, *,
                 n: int, selectivities: tuple[float, ...], keep_vectors: bool) -> Loaded:
    """Stream ``chunks`` into the scratch database (one transaction per chunk) while
    accumulating each query's exact top-7, over all rows and within each filter category."""
    truth = RunningTopK(queries)
    filtered = {s: RunningTopK(queries) for s in selectivities}
    filtered_rows = dict.fromkeys(selectivities, 0)
    kept = np.empty((n, model.dim), dtype=np.float32) if keep_vectors else None
    started, done, products_done = time.perf_counter(), 0, 0
    with db.begin() as conn:
        category_ids = {s: conn.execute(sa.text("INSERT INTO categories (name) VALUES (:n) RETURNING id"),
                                        {"n": category_name(s)}).scalar_one() for s in selectivities}
    with db.raw() as conn:
        for chunk in chunks:
            ids = np.arange(done + 1, done + len(chunk) + 1, dtype=np.int64)
            first_new_product = products_done + 1
            products_done = insert_catalogue_rows(conn, done + 1, len(chunk), products_done)
            new_products = np.arange(first_new_product, products_done + 1)
            for s, category_id in category_ids.items():
                conn.execute("INSERT INTO product_categories (product_id, category_id) "
                             "SELECT unnest(%s::bigint[]), %s",
                             (new_products[category_members(new_products, s)].tolist(), category_id))
            with conn.cursor() as cur:
                descriptors.copy_rows(cur, model.id, ids.tolist(), [True] * len(ids), chunk)
            conn.commit()
            truth.add(chunk, ids)
            for s in selectivities:
                member = category_members((ids - 1) // IMAGES_PER_PRODUCT + 1, s)
                filtered[s].add(chunk[member], ids[member])
                filtered_rows[s] += int(member.sum())
            if kept is not None:
                kept[done:done + len(chunk)] = chunk
            done += len(chunk)
        conn.execute("ANALYZE products, images, product_categories, categories")  # planner: filter selectivity
    return Loaded(done, truth.ids, {s: f.ids for s, f in filtered.items()}, filtered_rows,
                  time.perf_counter() - started, kept)


def clear_scratch(db: Database) -> None:
    """Leave the scratch database empty again (an external one is checked for emptiness)."""
    with db.begin() as conn:
        conn.execute(sa.text("TRUNCATE descriptors, extraction_work, product_categories, categories, images, "
                             "products RESTART IDENTITY CASCADE"))
    delete_model(db, BENCH_MODEL)
