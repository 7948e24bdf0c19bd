"""Category indexes: a large category's own HNSW graph, so a search filtered to it costs an
unfiltered search of a smaller catalogue.

pgvector filters an HNSW scan after the fact: with a category that holds a fraction f of the
catalogue, its iterative scan visits about 1/f times the nodes of an unfiltered search, and loses
recall on the way. Qdrant answers this with extra graph links per payload value; in PostgreSQL a
partial HNSW index per category (``WHERE ... category_ids @> ARRAY[C]``, see
:mod:`manet.store.category_indexes`) is the same idea: the filter planner
(:mod:`manet.search.planner`) sends a filter past its exact threshold to the category's index
when there is one. Small categories need none: the planner ranks them exactly.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from manet import config
from manet.errors import ManetError
from manet.search.index import (auto_build_memory, build_workers, check_graph_options, create_hnsw_index,
                                index_layout)
from manet.store import category_indexes
from manet.store.database import Database
from manet.store.events import record_event
from manet.store.models import ModelRecord


@dataclass(frozen=True)
class CategoryIndexReport:
    name: str
    category: str
    rows: int
    seconds: float
    m: int
    ef_construction: int
    #: The layout it holds (:meth:`manet.search.index.IndexLayout.for_category`).
    quantize: str
    rerank_factor: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def chosen_categories(per_category: dict[int, tuple[str, int]], names: list[str] | None, min_rows: int
                      ) -> list[tuple[int, str, int]]:
    """``(id, name, rows)`` of the categories to index: those named (each must exist and hold rows),
    else every category with more than ``min_rows`` catalogue descriptors (smaller ones are ranked
    exactly), largest first."""
    if names is None:
        chosen = [(cid, name, rows) for cid, (name, rows) in per_category.items() if rows > min_rows]
        return sorted(chosen, key=lambda c: (-c[2], c[1]))
    by_name = {name: (cid, rows) for cid, (name, rows) in per_category.items()}
    missing = [name for name in names if name not in by_name]
    if missing:
        raise ManetError(f"no catalogue descriptors of this model are in categories {', '.join(missing)}; "
                         f"list the categories with: manet categories")
    return [(by_name[name][0], name, by_name[name][1]) for name in dict.fromkeys(names)]


def build_category_indexes(db: Database, model: ModelRecord, *, categories: list[str] | None = None,
                           min_rows: int | None = None, m: int = config.DEFAULT_CATEGORY_HNSW_M,
                           ef_construction: int = config.DEFAULT_CATEGORY_EF_CONSTRUCTION,
                           maintenance_work_mem: str | None = None, parallel_workers: int = 2,
                           progress: bool = False) -> list[CategoryIndexReport]:
    """(Re)build the category indexes of ``model``: for the ``categories`` named, else for every
    category with more than ``min_rows`` (default :data:`manet.config.DEFAULT_CATEGORY_INDEX_MIN_ROWS`)
    catalogue descriptors. They take the layout of the model's index, which must exist (halfvec
    where it is float32), on their own expression (:meth:`IndexLayout.for_category`), and a graph denser than the model's
    (``m``, ``ef_construction``): recall 0.99 then needs fewer candidates (:func:`manet.search.planner.category_ef_search`)."""
    if not model.index_options:
        raise ManetError(f"model '{model.name}' has no HNSW index yet; build it first: "
                         f"manet index build --model {model.name}")
    check_graph_options(m, ef_construction)
    layout = index_layout(model).for_category()
    min_rows = config.DEFAULT_CATEGORY_INDEX_MIN_ROWS if min_rows is None else int(min_rows)
    workers, _ = build_workers(db, parallel_workers)
    with db.begin() as conn:
        category_indexes.fill_missing(conn, model.id)
        category_indexes.drop_for_model(conn, model.id, stale_only=True)
        chosen = chosen_categories(category_indexes.gallery_rows_per_category(conn, model.id), categories, min_rows)
    reports = []
    for category_id, name, rows in chosen:
        index = category_indexes.index_name(model.id, category_id)
        started = time.perf_counter()
        # One transaction per category: a failure keeps the indexes already built.
        with db.begin() as conn:
            create_hnsw_index(db, conn, index, layout, m=m, ef_construction=ef_construction,
                              where=category_indexes.predicate(model.id, category_id), rows=rows,
                              memory=maintenance_work_mem or auto_build_memory(rows, layout, m),
                              workers=workers, progress=progress, label=f"{model.name} / {name}")
            record_event(conn, "index.build_category", model_id=model.id,
                         details={"model": model.name, "index": index, "category": name, "rows": rows, "m": m,
                                  "ef_construction": ef_construction, "quantize": layout.quantize})
        reports.append(CategoryIndexReport(index, name, rows, time.perf_counter() - started, m, ef_construction,
                                           layout.quantize, layout.rerank_factor))
    return reports
