"""``manet bench search``: HNSW latency and recall@7 of the project's SQL against exact search.

Descriptors come from a ``.npy`` file (e.g. a model's real descriptors) or from
:class:`DescriptorGenerator`, and are streamed chunk by chunk into the scratch database
(products, images, a filter category, descriptors by binary COPY) while the exact top-7 of
every query is accumulated in numpy, so no stage holds more than one chunk (FAISS, when
asked for, keeps one copy). Then the model's HNSW index is built with the project's own
:func:`manet.search.index.build_index` and, for each ``ef_search``, four query series are timed one
query at a time: the project's search (:func:`manet.search.query.search_vector`, the SQL top-7
with the products join), the same with a category filter, raw pgvector (a bare
``ORDER BY ... LIMIT 7`` on the same index, session-level ``SET``, as pgvector-python's
examples do), and, once, the exact sequential scan. Recall is measured on ids.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa

from manet.bench.common import latency_summary, peak_rss_mb
from manet.errors import ManetError
from manet.search.index import build_index, index_layout
from manet.search.query import FILTERED_EF_SEARCH, execute_search, search_query, search_vector
from manet.store import descriptors
from manet.store.database import Database
from manet.store.models import ModelRecord, create_vector_model, delete_model, get_model

K = 7
#: pgvector's default hnsw.ef_search: the top-level figures are measured there.
DEFAULT_EF_SEARCH = 40
#: Rows per streamed chunk (a multiple of IMAGES_PER_PRODUCT).
CHUNK_ROWS = 8192
IMAGES_PER_PRODUCT = 4
BENCH_MODEL = "bench-search"
BENCH_CATEGORY = "bench-filter"
#: Each timed series first runs this many of its queries untimed (caches, prepared statements).
WARMUP_QUERIES = 50
#: The exact scan is timed on a sample: at least this many queries, then until this budget is spent.
EXACT_MIN_QUERIES = 5
EXACT_BUDGET_S = 15.0
#: pgvector's vector type holds at most 16,000 dimensions.
MAX_DIM = 16000


# -- data -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DescriptorGenerator:
    """Seeded synthetic descriptors shaped like a CNN's: clusters in a low-dimensional subspace.

    A row is ``normalise(B.T @ (c + spread * z) + noise * sqrt(intrinsic_dim / dim) * e)`` where
    ``B`` is a random orthonormal basis of an ``intrinsic_dim``-dimensional subspace of R^dim,
    ``c`` one of ``clusters`` centres drawn from N(0, I), ``z ~ N(0, I_intrinsic)`` and
    ``e ~ N(0, I_dim)``: the full-dimensional noise is ``noise`` times as long as a unit-variance
    subspace component. Gallery rows come in chunks of :data:`CHUNK_ROWS`, chunk ``i`` from its
    own seeded stream, and queries from another stream: fresh draws from the same
    distribution, never stored rows or perturbed copies of them.

    ``spread`` sets how hard the data is for HNSW. Measured with FAISS HNSW (m=16,
    ef_construction=64) at 100K x 512, recall@7 at ef_search 10/40/100/200 is 0.94/1.0/1.0/1.0 at
    spread 0.5 (well-separated clusters), 0.76/0.92/0.96/0.98 at 1.25 (the default: the sweep
    shows a trade-off) and 0.18/0.45/0.68/0.83 at 2.0 (almost an isotropic 64-d Gaussian).
    """

    dim: int
    intrinsic_dim: int = 64
    clusters: int = 1000
    spread: float = 1.25
    noise: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.intrinsic_dim <= self.dim:
            raise ManetError(f"--intrinsic-dim {self.intrinsic_dim} must be between 1 and --dim {self.dim}")

    @functools.cached_property
    def basis(self) -> np.ndarray:
        """(intrinsic_dim, dim) orthonormal rows spanning the subspace."""
        rng = np.random.default_rng([self.seed, 0])
        q, _ = np.linalg.qr(rng.standard_normal((self.dim, self.intrinsic_dim)))
        return q.T.astype(np.float32)

    @functools.cached_property
    def centres(self) -> np.ndarray:
        return np.random.default_rng([self.seed, 1]).standard_normal((self.clusters, self.intrinsic_dim))

    def _draw(self, rng: np.random.Generator, count: int) -> np.ndarray:
        coords = self.centres[rng.integers(0, self.clusters, count)]
        coords = coords + self.spread * rng.standard_normal((count, self.intrinsic_dim))
        rows = (coords.astype(np.float32) @ self.basis
                + np.float32(self.noise * np.sqrt(self.intrinsic_dim / self.dim))
                * rng.standard_normal((count, self.dim), dtype=np.float32))
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)

    def gallery(self, n: int) -> Iterator[np.ndarray]:
        """The first ``n`` gallery rows, chunk by chunk (float32, unit norm); a whole chunk is
        always drawn, so the first rows are the same whatever ``n``."""
        for index, start in enumerate(range(0, n, CHUNK_ROWS)):
            yield self._draw(np.random.default_rng([self.seed, 2, index]), CHUNK_ROWS)[: n - start]

    def queries(self, count: int) -> np.ndarray:
        return self._draw(np.random.default_rng([self.seed, 3]), count)

    def describe(self) -> dict[str, Any]:
        return {"source": "generator", **asdict(self)}


def _normalised(rows: np.ndarray, what: str) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float32)
    if not np.isfinite(rows).all():
        raise ManetError(f"{what} contains NaN or infinity; clean the array and re-run")
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    if (norms == 0).any():
        raise ManetError(f"{what} contains an all-zero row; descriptors must have a direction")
    return rows / norms


def _load_array(path: Path, option: str) -> np.ndarray:
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ManetError(f"cannot read {option} {path}: {exc}; give a .npy file saved with numpy.save") from None
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] < 2:
        raise ManetError(f"{option} {path} has shape {array.shape}; expected a 2-D float array (rows x dims)")
    if not np.issubdtype(array.dtype, np.floating):
        raise ManetError(f"{option} {path} holds {array.dtype}; expected float32 descriptors")
    return array


@dataclass
class VectorFile:
    """Descriptors from a ``.npy`` file (memory-mapped, read chunk by chunk, L2-normalised).

    Without a queries file, ``queries`` rows chosen at random (seeded) are held out of the
    gallery and used as queries: unseen rows from the same distribution.
    """

    path: Path
    query_count: int
    queries_path: Path | None = None
    seed: int = 0
    dim: int = 0

    def __post_init__(self) -> None:
        self.array = _load_array(self.path, "--vectors")
        self.dim = int(self.array.shape[1])
        if self.queries_path is not None:
            held = _load_array(self.queries_path, "--queries-file")
            if held.shape[1] != self.dim:
                raise ManetError(f"--queries-file has {held.shape[1]} dimensions but --vectors has {self.dim}; "
                                 f"give queries from the same model")
            self._queries = _normalised(held[: self.query_count], f"--queries-file {self.queries_path}")
            self.held_out = np.zeros(len(self.array), dtype=bool)
        else:
            if len(self.array) <= self.query_count + K:
                raise ManetError(f"--vectors has {len(self.array)} rows, too few to hold out {self.query_count} "
                                 f"queries; lower --queries or give --queries-file")
            self.held_out = np.zeros(len(self.array), dtype=bool)
            picks = np.random.default_rng([self.seed, 4]).choice(len(self.array), self.query_count, replace=False)
            self.held_out[picks] = True
            self._queries = _normalised(self.array[np.sort(picks)], f"--vectors {self.path}")

    @property
    def available(self) -> int:
        return int(len(self.array) - self.held_out.sum())

    def gallery(self, n: int) -> Iterator[np.ndarray]:
        done = 0
        for start in range(0, len(self.array), CHUNK_ROWS):
            if done >= n:
                return
            block = self.array[start:start + CHUNK_ROWS][~self.held_out[start:start + CHUNK_ROWS]][: n - done]
            done += len(block)
            yield _normalised(block, f"--vectors {self.path} (rows {start}..{start + CHUNK_ROWS - 1})")

    def queries(self, count: int) -> np.ndarray:
        return self._queries[:count]

    def describe(self) -> dict[str, Any]:
        queries = (f"first rows of {self.queries_path}" if self.queries_path is not None
                   else f"{self.query_count} rows held out of the file (seed {self.seed})")
        return {"source": str(self.path), "queries": queries, "normalised": "L2, like manet's descriptors"}


# -- exact search and recall (pure) -----------------------------------------------------------
def merge_top_k(scores_a: np.ndarray, ids_a: np.ndarray, scores_b: np.ndarray, ids_b: np.ndarray,
                k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the ``k`` highest scores (and their ids) of two candidate sets, best first.

    ``scores_*`` are (queries, m) arrays; ``ids_b`` may be one (m,) row shared by all queries.
    """
    scores = np.concatenate([scores_a, scores_b], axis=1)
    ids = np.concatenate([ids_a, np.broadcast_to(ids_b, scores_b.shape)], axis=1)
    if scores.shape[1] > k:
        keep = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        scores, ids = np.take_along_axis(scores, keep, 1), np.take_along_axis(ids, keep, 1)
    order = np.argsort(-scores, axis=1, kind="stable")
    return np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)


class RunningTopK:
    """Exact top-``k`` by inner product of fixed queries over rows that arrive in chunks."""

    def __init__(self, queries: np.ndarray, k: int = K) -> None:
        self.queries = queries
        self.k = k
        self.scores = np.full((len(queries), 0), -np.inf, dtype=np.float32)
        self.ids = np.zeros((len(queries), 0), dtype=np.int64)

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        if len(ids):
            self.scores, self.ids = merge_top_k(self.scores, self.ids, self.queries @ vectors.T, ids, self.k)


def recall_at_k(found: Sequence[Sequence[int]], truth: np.ndarray, k: int = K) -> float:
    """Mean over queries of |found top-k ∩ true top-k| / k (a missing row counts as a miss)."""
    hits = [len(set(list(f)[:k]) & set(t[:k].tolist())) / k for f, t in zip(found, truth, strict=True)]
    return float(np.mean(hits))


def category_members(product_ids: np.ndarray, fraction: float) -> np.ndarray:
    """Whether each product (ids from 1) is in the filter category: an evenly spaced
    ``fraction`` of all ids, so any prefix of the catalogue holds that fraction."""
    ids = np.asarray(product_ids, dtype=np.float64)
    return np.floor(ids * fraction) != np.floor((ids - 1) * fraction)


def filtered_rows(n: int, fraction: float) -> int:
    """Gallery rows in the filter category when ``n`` rows are loaded."""
    products = np.arange(1, (n - 1) // IMAGES_PER_PRODUCT + 2)
    images = np.minimum(IMAGES_PER_PRODUCT, n - (products - 1) * IMAGES_PER_PRODUCT)
    return int(images[category_members(products, fraction)].sum())


# -- loading ----------------------------------------------------------------------------------
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
    filtered_truth: np.ndarray
    filtered_rows: int
    seconds: float
    vectors: np.ndarray | None


def load_gallery(db: Database, model: ModelRecord, chunks: Iterator[np.ndarray], queries: np.ndarray, *,
                 n: int, selectivity: float, keep_vectors: bool) -> Loaded:
    """Stream ``chunks`` into the scratch database (one transaction per chunk) while
    accumulating each query's exact top-7, over all rows and over the filter category."""
    truth, filtered = RunningTopK(queries), RunningTopK(queries)
    kept = np.empty((n, model.dim), dtype=np.float32) if keep_vectors else None
    started, done, products_done, filtered_rows = time.perf_counter(), 0, 0, 0
    with db.begin() as conn:
        category_id = conn.execute(sa.text("INSERT INTO categories (name) VALUES (:n) RETURNING id"),
                                   {"n": BENCH_CATEGORY}).scalar_one()
    with db.raw() as conn:
        for chunk in chunks:
            ids = np.arange(done + 1, done + len(chunk) + 1, dtype=np.int64)
            first_new_product = products_done + 1
            products_done = insert_catalogue_rows(conn, done + 1, len(chunk), products_done)
            new_products = np.arange(first_new_product, products_done + 1)
            conn.execute("INSERT INTO product_categories (product_id, category_id) SELECT unnest(%s::bigint[]), %s",
                         (new_products[category_members(new_products, selectivity)].tolist(), category_id))
            with conn.cursor() as cur:
                descriptors.copy_rows(cur, model.id, ids.tolist(), [True] * len(ids), chunk)
            conn.commit()
            member = category_members((ids - 1) // IMAGES_PER_PRODUCT + 1, selectivity)
            truth.add(chunk, ids)
            filtered.add(chunk[member], ids[member])
            filtered_rows += int(member.sum())
            if kept is not None:
                kept[done:done + len(chunk)] = chunk
            done += len(chunk)
        conn.execute("ANALYZE products, images, product_categories, categories")  # planner: filter selectivity
    return Loaded(done, truth.ids, filtered.ids, filtered_rows, time.perf_counter() - started, kept)


def clear_scratch(db: Database) -> None:
    """Leave the scratch database empty again (an external one is checked for emptiness)."""
    with db.begin() as conn:
        conn.execute(sa.text("TRUNCATE descriptors, extraction_work, product_categories, categories, images, "
                             "products RESTART IDENTITY CASCADE"))
    delete_model(db, BENCH_MODEL)


# -- timing -----------------------------------------------------------------------------------
Runner = Callable[[np.ndarray], list[int]]


def timed_series(runners: dict[str, Runner], queries: np.ndarray
                 ) -> dict[str, tuple[list[float], list[list[int]]]]:
    """Latencies and result ids of every query through every runner, one query at a time.

    The runners take turns on each query, in an order that rotates from query to query, so
    load drift on a shared machine hits them alike and none always meets the index pages cold
    (the next runner with the same query finds them cached). :data:`WARMUP_QUERIES` queries go
    through every runner untimed first.
    """
    names = list(runners)
    for query in queries[:WARMUP_QUERIES]:
        for name in names:
            runners[name](query)
    timed: dict[str, tuple[list[float], list[list[int]]]] = {name: ([], []) for name in names}
    for index, query in enumerate(queries):
        for turn in range(len(names)):
            name = names[(index + turn) % len(names)]
            started = time.perf_counter()
            ids = runners[name](query)
            timed[name][0].append(time.perf_counter() - started)
            timed[name][1].append(ids)
    return timed


def _figures(latencies: list[float], results: list[list[int]], truth: np.ndarray, prefix: str = ""
             ) -> dict[str, Any]:
    figures = {f"{prefix}{key}": value for key, value in latency_summary(latencies).items()}
    figures[f"{prefix}recall_at_7"] = round(recall_at_k(results, truth), 4)
    if prefix:
        figures[f"{prefix}rows_min"] = min(len(r) for r in results)
    return figures


def _raw_sql(model: ModelRecord) -> str:
    """pgvector's README query for the model's index: a bare ORDER BY ... LIMIT 7 (with the
    README's re-rank for a binary index); the partial index's predicate, no join."""
    layout = index_layout(model)
    return descriptors.bare_top_k_sql(model.id, K, layout.distance("embedding", "%(q)s"),
                                      binary=layout.quantize == "binary", rerank_factor=layout.rerank_factor)


def _psycopg(db: Database, autocommit: bool) -> Any:
    import psycopg
    from pgvector.psycopg import register_vector

    from manet.config import libpq_url

    conn = psycopg.connect(libpq_url(db.url), autocommit=autocommit)
    register_vector(conn)
    return conn


def _exact_series(db: Database, model: ModelRecord, queries: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    """The project's SQL ordered by the exact inner product, index scans off (a parallel
    sequential scan), on a time-bounded sample."""
    latencies, results, spent, applied = [], [], 0.0, {}
    with _psycopg(db, autocommit=True) as conn:
        for query in queries:
            if len(latencies) >= EXACT_MIN_QUERIES and spent > EXACT_BUDGET_S:
                break
            sql, params = search_query(model, query, k=K, exact=True)
            params["q"] = query
            started = time.perf_counter()
            rows = execute_search(conn, sql, params, {"enable_indexscan": "off", "enable_bitmapscan": "off"},
                                  applied)
            latencies.append(time.perf_counter() - started)
            spent += latencies[-1]
            results.append([row[0] for row in rows])
    summary = latency_summary(latencies)
    return {"exact_p50_ms": summary["p50_ms"], "exact_p99_ms": summary["p99_ms"], "exact_queries": len(latencies),
            "exact_recall_at_7": round(recall_at_k(results, truth[: len(results)]), 4)}


def _faiss(vectors: np.ndarray, queries: np.ndarray, truth: np.ndarray, ef_values: list[int], m: int,
           ef_construction: int) -> dict[str, Any]:
    """FAISS IndexFlatIP and IndexHNSWFlat on the same vectors, one query at a time, one thread."""
    import faiss

    def series(index: Any) -> dict[str, Any]:
        timed = timed_series({"faiss": lambda q: index.search(q[None, :], K)[1][0].tolist()}, queries)
        figures = _figures(*timed["faiss"], truth - 1)  # faiss numbers rows from 0, the database from 1
        return {key: figures[key] for key in ("p50_ms", "p99_ms", "qps", "recall_at_7")}

    flat = faiss.IndexFlatIP(vectors.shape[1])
    flat.add(vectors)
    started = time.perf_counter()
    hnsw = faiss.IndexHNSWFlat(vectors.shape[1], m, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = ef_construction
    hnsw.add(vectors)
    build_s = time.perf_counter() - started
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        result = {"version": faiss.__version__, "build_threads": threads, "flat": series(flat),
                  "hnsw_build_s": round(build_s, 2), "hnsw": []}
        for ef in ef_values:
            hnsw.hnsw.efSearch = ef
            result["hnsw"].append({"ef_search": ef, **series(hnsw)})
    finally:
        faiss.omp_set_num_threads(threads)
    return result


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


# -- the benchmark ----------------------------------------------------------------------------
@dataclass(frozen=True)
class SearchBenchOptions:
    n: int | None = None
    dim: int | None = None
    queries: int = 1000
    filter_selectivity: float = 0.05
    ef_search: tuple[int, ...] = (40, 100, 200, 400)
    vectors: Path | None = None
    queries_file: Path | None = None
    intrinsic_dim: int = 64
    seed: int = 0
    m: int = 16
    ef_construction: int = 64
    quantize: str | None = None
    faiss: bool | None = None


def _check(options: SearchBenchOptions) -> None:
    if options.queries < 1:
        raise ManetError("--queries must be at least 1")
    if not 0 < options.filter_selectivity <= 1:
        raise ManetError(f"--filter-selectivity {options.filter_selectivity} must be in (0, 1], e.g. 0.05")
    if not options.ef_search or not all(1 <= ef <= 1000 for ef in options.ef_search):
        raise ManetError("--ef-search takes values between 1 and 1000, e.g. 40,100,200,400")
    if options.queries_file is not None and options.vectors is None:
        raise ManetError("--queries-file needs --vectors (generated data draws its own queries)")
    if options.faiss and not faiss_available():
        raise ManetError("--faiss needs faiss; install it with: pip install 'manet-retrieval[bench]'")


def _source(options: SearchBenchOptions) -> tuple[Any, int, int]:
    """The vector source, n and dim, checked."""
    if options.vectors is not None:
        source = VectorFile(options.vectors, options.queries, options.queries_file, options.seed)
        if options.dim is not None and options.dim != source.dim:
            raise ManetError(f"--vectors {options.vectors} has {source.dim} dimensions, not --dim {options.dim}; "
                             f"drop --dim or give a file of that dimension")
        n = source.available if options.n is None else options.n
        if n > source.available:
            raise ManetError(f"--n {n} exceeds the {source.available} gallery rows of --vectors {options.vectors}")
    else:
        source = DescriptorGenerator(options.dim or 512, options.intrinsic_dim, seed=options.seed)
        n = 100_000 if options.n is None else options.n
    if not 2 <= source.dim <= MAX_DIM:
        raise ManetError(f"descriptors have {source.dim} dimensions; pgvector stores 2..{MAX_DIM}")
    if filtered_rows(n, options.filter_selectivity) < K:
        raise ManetError(f"--n {n} at --filter-selectivity {options.filter_selectivity} leaves fewer than {K} "
                         f"filtered rows; raise --n or the selectivity")
    return source, n, source.dim


def _sweep_row(db: Database, model: ModelRecord, raw: Any, queries: np.ndarray, loaded: Loaded, ef: int
               ) -> dict[str, Any]:
    """The project's search, raw pgvector and the filtered search at one ef_search."""
    # Iterative scan on the raw session too: a binary index's re-rank asks for more rows than ef_search.
    raw.execute("SELECT set_config('hnsw.ef_search', %s, false), "
                "set_config('hnsw.iterative_scan', 'strict_order', false)", (str(ef),))
    raw_sql = _raw_sql(model)
    timed = timed_series({
        "": lambda q: [h.image_id for h in search_vector(db, model, q, k=K, ef_search=ef)],
        "raw_": lambda q: [r[0] for r in raw.execute(raw_sql, {"q": q}).fetchall()],
        "filtered_": lambda q: [h.image_id for h in search_vector(db, model, q, k=K, category=BENCH_CATEGORY,
                                                                  ef_search=ef)],
    }, queries)
    row: dict[str, Any] = {"ef_search": ef}
    for prefix, (latencies, results) in timed.items():
        row.update(_figures(latencies, results, loaded.filtered_truth if prefix == "filtered_" else loaded.truth,
                            prefix))
    return row


def _headline(sweep: list[dict[str, Any]], ef: int) -> dict[str, Any]:
    return next((row for row in sweep if row["ef_search"] == ef), sweep[0])


def run_search_bench(db: Database, options: SearchBenchOptions, say: Callable[[str], None] = lambda _: None
                     ) -> dict[str, Any]:
    """Load, index and query; the figures of ``manet bench search --json``."""
    _check(options)
    source, n, dim = _source(options)
    use_faiss = faiss_available() if options.faiss is None else options.faiss
    queries = source.queries(options.queries)
    clear_scratch(db)
    model = create_vector_model(db, BENCH_MODEL, dim, {"bench": source.describe()})
    try:
        say(f"loading {n} x {dim} descriptors")
        loaded = load_gallery(db, model, source.gallery(n), queries, n=n,
                              selectivity=options.filter_selectivity, keep_vectors=use_faiss)
        say("building the HNSW index")
        index = build_index(db, model, m=options.m, ef_construction=options.ef_construction,
                            quantize=options.quantize)
        model = get_model(db, BENCH_MODEL)  # now with the index options search reads
        sweep = []
        with _psycopg(db, autocommit=True) as raw:
            for ef in options.ef_search:
                say(f"ef_search {ef}")
                sweep.append(_sweep_row(db, model, raw, queries, loaded, ef))
        say("exact scan")
        exact = _exact_series(db, model, queries, loaded.truth)
        faiss_report = None
        if use_faiss:
            say("FAISS")
            faiss_report = _faiss(loaded.vectors, queries, loaded.truth, list(options.ef_search), options.m,
                                  options.ef_construction)
    finally:
        clear_scratch(db)
    return _report(options, source, loaded, index, sweep, exact, faiss_report, db.server_versions())


def _report(options: SearchBenchOptions, source: Any, loaded: Loaded, index: Any, sweep: list[dict[str, Any]],
            exact: dict[str, Any], faiss_report: dict[str, Any] | None, versions: dict[str, Any]) -> dict[str, Any]:
    headline = _headline(sweep, DEFAULT_EF_SEARCH)
    good = [row for row in sweep if row["recall_at_7"] >= 0.95]
    at95 = min(good, key=lambda row: row["ef_search"]) if good else None
    compared = at95 or headline
    filtered_default = next((row for row in sweep if row["ef_search"] == FILTERED_EF_SEARCH), headline)
    filtered_good = [row for row in sweep if row["filtered_recall_at_7"] >= 0.9]
    filtered90 = min(filtered_good, key=lambda row: row["ef_search"]) if filtered_good else None
    report = {
        "n": loaded.n, "dim": source.dim, "queries": options.queries, "k": K,
        "data": source.describe(),
        "versions": versions,
        "load_s": round(loaded.seconds, 2),
        "build_s": round(index.seconds, 2),
        "index": {key: value for key, value in index.as_dict().items() if key not in ("name", "seconds")},
        "ef_search": headline["ef_search"],
        **{key: headline[key] for key in ("p50_ms", "p95_ms", "p99_ms", "qps", "recall_at_7")},
        "sweep": sweep,
        "ef_at_recall_95": at95["ef_search"] if at95 else None,
        "p50_ms_at_recall_95": at95["p50_ms"] if at95 else None,
        "p99_ms_at_recall_95": at95["p99_ms"] if at95 else None,
        "raw_p50_ms_at_recall_95": at95["raw_p50_ms"] if at95 else None,
        **exact,
        "filter_selectivity": options.filter_selectivity,
        "filtered_gallery_rows": loaded.filtered_rows,
        "filtered_rows_min": min(row["filtered_rows_min"] for row in sweep),
        # At the ef_search manet's search uses for a filtered query that sets none (when swept).
        "filtered_ef_search": filtered_default["ef_search"],
        "filtered_recall_at_7": filtered_default["filtered_recall_at_7"],
        "filtered_p50_ms": filtered_default["filtered_p50_ms"],
        "filtered_p99_ms": filtered_default["filtered_p99_ms"],
        "filtered_ef_at_recall_90": filtered90["ef_search"] if filtered90 else None,
        "filtered_p50_ms_at_recall_90": filtered90["filtered_p50_ms"] if filtered90 else None,
        "ratios": {
            "measured_at_ef_search": compared["ef_search"],
            "sql_over_raw": round(compared["p50_ms"] / compared["raw_p50_ms"], 3),
            "exact_over_sql": round(exact["exact_p50_ms"] / compared["p50_ms"], 1),
        },
        "warmup": f"per ef_search, the first {min(WARMUP_QUERIES, options.queries)} queries run untimed through "
                  f"the SQL, raw and filtered searches, then all {options.queries} are timed one at a time, the "
                  f"three taking turns on each query in rotating order; the exact scan is timed on a sample "
                  f"(>= {EXACT_MIN_QUERIES} queries, about {EXACT_BUDGET_S:.0f} s)",
        "faiss": faiss_report,
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    return report


def format_report(report: dict[str, Any]) -> str:
    """The human-readable table of ``manet bench search``."""
    data = report["data"]
    source = data["source"] if data["source"] != "generator" else (
        f"generator (intrinsic dim {data['intrinsic_dim']}, {data['clusters']} clusters, spread {data['spread']}, "
        f"noise {data['noise']}, seed {data['seed']})")
    index = report["index"]
    lines = [
        f"{report['n']} x {report['dim']} descriptors from {source}; {report['queries']} queries",
        f"PostgreSQL {report['versions']['postgresql']}, pgvector {report['versions']['pgvector']}; "
        f"load {report['load_s']} s, HNSW build {report['build_s']} s ({index['quantize']}, m={index['m']}, "
        f"ef_construction={index['ef_construction']}, maintenance_work_mem {index['maintenance_work_mem']}, "
        f"parallel workers {index['parallel_workers']}: {index['parallel_reason']})",
        "",
        f"{'ef':>5} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'QPS':>8} {'R@7':>6} | {'raw p50':>8} {'raw R@7':>7} "
        f"| {'filt p50':>8} {'filt p99':>8} {'rows':>4} {'filt R@7':>8}",
    ]
    for row in report["sweep"]:
        lines.append(
            f"{row['ef_search']:>5} {row['p50_ms']:>8.3f} {row['p95_ms']:>8.3f} {row['p99_ms']:>8.3f} "
            f"{row['qps']:>8.1f} {row['recall_at_7']:>6.3f} | {row['raw_p50_ms']:>8.3f} "
            f"{row['raw_recall_at_7']:>7.3f} | {row['filtered_p50_ms']:>8.3f} {row['filtered_p99_ms']:>8.3f} "
            f"{row['filtered_rows_min']:>4} {row['filtered_recall_at_7']:>8.3f}")
    ratios = report["ratios"]
    lines += [
        "",
        f"exact scan: p50 {report['exact_p50_ms']} ms over {report['exact_queries']} queries "
        f"(recall {report['exact_recall_at_7']})",
        f"recall@7 >= 0.95 first at ef_search {report['ef_at_recall_95']}; at ef_search "
        f"{ratios['measured_at_ef_search']}: SQL / raw p50 = {ratios['sql_over_raw']}, "
        f"exact / SQL p50 = {ratios['exact_over_sql']}",
        f"filter: {report['filter_selectivity']:.1%} of the gallery ({report['filtered_gallery_rows']} rows); "
        f"filtered recall@7 >= 0.9 first at ef_search {report['filtered_ef_at_recall_90']}; at manet search's "
        f"default for filtered queries (ef_search {report['filtered_ef_search']}): recall "
        f"{report['filtered_recall_at_7']}, p50 {report['filtered_p50_ms']} ms",
    ]
    if report["faiss"]:
        faiss = report["faiss"]
        lines.append(f"FAISS {faiss['version']} (1 search thread): flat p50 {faiss['flat']['p50_ms']} ms; "
                     f"HNSW build {faiss['hnsw_build_s']} s; " + ", ".join(
                         f"ef {row['ef_search']}: p50 {row['p50_ms']} ms R@7 {row['recall_at_7']}"
                         for row in faiss["hnsw"]))
    lines.append(f"peak RSS {report['peak_rss_mb']} MB; {report['warmup']}")
    return "\n".join(lines)
