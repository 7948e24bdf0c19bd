"""``manet bench serve``: latency and requests/s of ``manet serve`` against the in-process search.

In the scratch database (:mod:`manet.bench.common`) one run generates a small catalogue
(:mod:`manet.tools.synthetic`), creates a model (by default the default backbone and pooling
with random weights: speed does not depend on the weights' values), extracts and indexes it,
and writes shopper photos of its products that are not in the catalogue. Then, for each
number of concurrent clients, the same photos are searched three ways, a fixed number of
requests each (:mod:`manet.bench.serve_load`):

- **in process**: :meth:`manet.Retriever.search` called from N threads sharing one Retriever;
- **batched**: ``POST /v1/search`` to ``manet serve``'s app with micro-batching (its default
  ``max_batch``), from N threads with one keep-alive connection each;
- **unbatched**: the same app with ``max_batch=1``.

Both servers run in this process on loopback (:class:`manet.serve.runner.ServerThread`), so
the client threads share the process with them. A level's requests are split into rounds, and
the three modes take turns round by round in rotating order, so that a burst of other work on
a shared machine falls on all three. requests/s is the steady state's: the answers after every
client has had one and until the last request of the round was sent (not the fill before, nor
the drain after, with fewer clients left). Every answer is checked
against a one-at-a-time reference :meth:`Retriever.search` of its photo, and the batches each
server ran are read from its ``/metrics`` around each round.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from manet import config
from manet.bench.search_load import clear_scratch
from manet.bench.serve_load import (
    Answer,
    HttpClient,
    InProcessClient,
    LevelRun,
    agreement,
    level_figures,
    run_level,
    search_form,
)
from manet.bench.serve_metrics import Histogram, batch_figures, read_histograms, wait_ready
from manet.errors import ManetError
from manet.nn.pipeline import PipelineConfig
from manet.settings import Settings
from manet.store.database import Database

BENCH_MODEL = "bench-serve"
#: The three ways a level searches, in the report's order.
MODES = ("in_process", "batched", "unbatched")
#: Most concurrent clients one level may have (threads and connections of this process).
MAX_CLIENTS = 256


@dataclass(frozen=True)
class ServeBenchOptions:
    """What one ``manet bench serve`` run measures (see the CLI for each option)."""

    config: PipelineConfig
    images: int = 300
    photos: int = 32
    photo_size: int = 384
    catalogue_size: int = 256
    clients: tuple[int, ...] = (1, 8, 32)
    requests: int = 640
    #: Each level's requests are split into this many rounds of every mode, in rotating order.
    rounds: int = 2
    #: The batched server's micro-batch cap and wait (None: the server's defaults).
    max_batch: int | None = None
    batch_wait_ms: float | None = None
    k: int = config.DEFAULT_K
    #: Untimed requests per client before each round.
    warmup: int = 1
    seed: int = 0


def check_options(options: ServeBenchOptions) -> None:
    """A one-line ManetError for options that cannot be measured (before any database work)."""
    if options.images < options.k:
        raise ManetError(f"--images {options.images} is fewer than k={options.k}; use at least {options.k}")
    if options.photos < 1:
        raise ManetError("--photos must be at least 1")
    if not options.clients or not all(1 <= n <= MAX_CLIENTS for n in options.clients):
        raise ManetError(f"--clients takes numbers from 1 to {MAX_CLIENTS}, e.g. 1,8,32")
    if options.rounds < 1:
        raise ManetError("--rounds must be at least 1")
    if options.requests // options.rounds < max(options.clients):
        raise ManetError(f"--requests {options.requests} in {options.rounds} rounds is fewer than the "
                         f"{max(options.clients)} clients per round; give each client at least one request a round")
    if options.max_batch is not None and options.max_batch < 2:
        raise ManetError("--max-batch is the batched server's cap and must be at least 2 (the unbatched "
                         "server is measured anyway)")


# -- set up ------------------------------------------------------------------------------------
def write_photos(folder: Path, count: int, products: int, size: int, seed: int) -> list[Path]:
    """``count`` shopper photos (JPEG) of the first products of the catalogue generated with
    ``products`` and ``seed``: the packs of its products on clutter, never its own images."""
    import numpy as np
    from PIL import Image

    from manet.tools.synthetic import make_specs, render_pack, shopper_photo

    folder.mkdir(parents=True, exist_ok=True)
    specs = make_specs(products, seed)[:count]
    packs = [render_pack(spec, size) for spec in specs]
    paths = []
    for i in range(count):
        pixels = shopper_photo(packs[i % len(packs)], np.random.default_rng([seed, 5, i]))
        paths.append(folder / f"photo-{i:04d}.jpg")
        Image.fromarray(pixels).save(paths[-1], format="JPEG", quality=90)
    return paths


def _set_up(retriever: Any, options: ServeBenchOptions, workdir: Path, say: Callable[[str], None]) -> list[Path]:
    """The catalogue ingested, the model extracted and indexed; the photo files."""
    from manet.tools.synthetic import generate_catalogue

    say(f"generating and ingesting a catalogue of {options.images} images")
    manifest = generate_catalogue(workdir / "catalogue", products=options.images, photos_per_product=0,
                                  size=options.catalogue_size, seed=options.seed)
    retriever.ingest("manifest", manifest)
    retriever.create_model(BENCH_MODEL, **options.config.to_dict())
    say("extracting and indexing")
    report = retriever.extract(BENCH_MODEL)
    if getattr(report, "failed", 0):
        raise ManetError(f"{report.failed} catalogue images failed to extract; see manet failures")
    retriever.build_index(BENCH_MODEL)
    say(f"writing {options.photos} photos")
    return write_photos(workdir / "photos", options.photos, options.images, options.photo_size, options.seed)


@contextmanager
def _servers(settings: Settings, options: ServeBenchOptions) -> Iterator[dict[str, str]]:
    """The batched and the unbatched app, each on its own loopback port: mode -> base URL."""
    from manet.serve.app import create_app
    from manet.serve.runner import ServerThread

    batching: dict[str, Any] = {}
    if options.max_batch is not None:
        batching["max_batch"] = options.max_batch
    if options.batch_wait_ms is not None:
        batching["batch_wait_ms"] = options.batch_wait_ms
    with ExitStack() as stack:
        urls = {}
        for mode, extra in (("batched", batching), ("unbatched", {"max_batch": 1})):
            app = create_app(settings, model=BENCH_MODEL, **extra)
            urls[mode] = stack.enter_context(ServerThread(app, host="127.0.0.1", port=0)).url
            # One at a time: a network with random weights is built under a fixed seed of torch's
            # process-wide generator, which two threads building at once would share.
            wait_ready(urls[mode])
        yield urls


# -- measuring ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Targets:
    """What the clients of each mode search with."""

    retriever: Any
    paths: list[Path]
    forms: list[tuple[bytes, str]]
    urls: dict[str, str]


def _client_factory(mode: str, targets: _Targets, k: int) -> Callable[[], Any]:
    if mode == "in_process":
        return lambda: InProcessClient(targets.retriever, BENCH_MODEL, targets.paths, k)
    return lambda: HttpClient(targets.urls[mode], targets.forms)


@dataclass
class _ModeRuns:
    """One mode's rounds at one level, and the batches its server counted during them."""

    runs: list[LevelRun] = field(default_factory=list)
    batches: dict[str, Histogram] = field(default_factory=dict)


def _run_round(mode: str, targets: _Targets, clients: int, requests: int, options: ServeBenchOptions,
               into: _ModeRuns) -> None:
    """One round of one mode; a server's batches are read from its /metrics around it."""
    url = targets.urls.get(mode)
    before = read_histograms(url) if url else {}
    into.runs.append(run_level(_client_factory(mode, targets, options.k), clients, requests, len(targets.paths),
                               options.warmup))
    if url:
        after = read_histograms(url)
        into.batches = {name: into.batches.get(name, Histogram()) + (after[name] - before[name]) for name in after}


def _round_sizes(requests: int, rounds: int) -> list[int]:
    return [requests // rounds + (1 if i < requests % rounds else 0) for i in range(rounds)]


def _mode_figures(mode_runs: _ModeRuns, references: list[Answer]) -> dict[str, Any]:
    figures = level_figures(mode_runs.runs)
    figures["agreement"] = agreement(mode_runs.runs, references)
    if mode_runs.batches:
        # The warm-up requests are in the batches too (a few per client and round), and so is
        # their time: the busy share is over the warm-ups and the timed requests.
        seconds = sum(run.seconds + run.warmup_seconds for run in mode_runs.runs)
        figures.update(batch_figures(mode_runs.batches, seconds))
    return figures


def _measure_level(targets: _Targets, clients: int, turn: int, options: ServeBenchOptions,
                   references: list[Answer]) -> dict[str, Any]:
    """The three modes at one concurrency, round after round in rotating order (a burst of
    other load on the machine falls on all three), and the batched/unbatched ratio."""
    measured = {mode: _ModeRuns() for mode in MODES}
    orders = []
    for number, requests in enumerate(_round_sizes(options.requests, options.rounds)):
        shift = (turn + number) % len(MODES)
        orders.append(list(MODES[shift:] + MODES[:shift]))
        for mode in orders[-1]:
            _run_round(mode, targets, clients, requests, options, measured[mode])
    row: dict[str, Any] = {"clients": clients, "orders": orders}
    row.update({mode: _mode_figures(mode_runs, references) for mode, mode_runs in measured.items()})
    row["batched_over_unbatched"] = _ratio(row["batched"]["requests_per_s"], row["unbatched"]["requests_per_s"])
    row["batched_over_in_process"] = _ratio(row["batched"]["requests_per_s"], row["in_process"]["requests_per_s"])
    return row


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def _references(retriever: Any, paths: list[Path], k: int) -> list[Answer]:
    """Each photo's one-at-a-time :meth:`Retriever.search` (this also loads the model)."""
    client = InProcessClient(retriever, BENCH_MODEL, paths, k)
    return [client.search(i) for i in range(len(paths))]


def run_serve_bench(db: Database, settings: Settings, options: ServeBenchOptions,
                    say: Callable[[str], None] = lambda _m: None) -> dict[str, Any]:
    """Set up in the empty scratch database ``db`` and measure every level; the report.

    ``settings`` are the caller's (device, precision, read caps, plugins); the database is ``db``.
    """
    from manet.api import Retriever
    from manet.config import libpq_url

    check_options(options)
    settings = settings.with_options(database_url=libpq_url(db.url))
    with tempfile.TemporaryDirectory(prefix="manet-bench-serve-") as tmp, Retriever(settings=settings) as retriever:
        try:
            paths = _set_up(retriever, options, Path(tmp), say)
            references = _references(retriever, paths, options.k)
            fields = {"k": str(options.k), "model": BENCH_MODEL}
            forms = [search_form(path.read_bytes(), path.name, fields) for path in paths]
            levels = []
            with _servers(settings, options) as urls:
                targets = _Targets(retriever, paths, forms, urls)
                for turn, clients in enumerate(options.clients):
                    say(f"{clients} concurrent clients")
                    levels.append(_measure_level(targets, clients, turn, options, references))
            model = retriever.model(BENCH_MODEL)
        finally:  # the scratch database is left empty, so an external one can serve the next run
            retriever.delete_model(BENCH_MODEL)
            clear_scratch(db)
    return _report(options, settings, retriever, model, levels)


def _report(options: ServeBenchOptions, settings: Settings, retriever: Any, model: Any,
            levels: list[dict[str, Any]]) -> dict[str, Any]:
    """The figures of ``manet bench serve --json``."""
    import torch

    from manet.nn.device import use_bf16

    top = max(levels, key=lambda row: row["clients"])
    modes = [row[mode] for row in levels for mode in MODES]
    agreements = [figures["agreement"] for figures in modes if figures["agreement"] is not None]
    return {
        "device": retriever.device,
        "precision": "bf16" if use_bf16(retriever.device, settings.precision) else "fp32",
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "backbone": model.config.backbone,
        "pooling": model.config.pooling,
        "weights": model.config.weights,
        "image_size": model.config.image_size,
        "dim": model.dim,
        "catalogue_images": options.images,
        "photos": options.photos,
        "photo_size": options.photo_size,
        "k": options.k,
        "requests": options.requests,
        "rounds": options.rounds,
        "warmup_per_client_and_round": options.warmup,
        "clients": list(options.clients),
        "max_batch": options.max_batch or config.DEFAULT_SERVE_MAX_BATCH,
        "batch_wait_ms": (options.batch_wait_ms if options.batch_wait_ms is not None
                          else config.DEFAULT_SERVE_BATCH_WAIT_MS),
        "levels": levels,
        "max_clients": top["clients"],
        "batched_over_unbatched_at_max_clients": top["batched_over_unbatched"],
        "failed": sum(figures["failed"] for figures in modes),
        "agreement": min(agreements) if agreements else None,
    }


def format_report(r: dict[str, Any]) -> str:
    """The human-readable table of :func:`run_serve_bench`'s report."""
    lines = [
        f"serve benchmark: {r['backbone']} + {r['pooling']}, {r['image_size']} px, weights {r['weights']}, "
        f"{r['dim']}-d on {r['device']} ({r['threads']} torch threads, {r['precision']}); "
        f"{r['catalogue_images']} catalogue images, {r['photos']} photos of {r['photo_size']} px, k={r['k']}",
        f"{r['requests']} requests per level and mode in {r['rounds']} rounds (req/s: steady state); "
        f"batched server: max_batch {r['max_batch']}, batch wait {r['batch_wait_ms']} ms; unbatched: max_batch 1",
        "",
        f"{'clients':>7}  {'mode':<10} {'p50 ms':>9} {'p99 ms':>9} {'req/s':>8} {'failed':>6}  "
        f"{'batch mean, max':<16} {'fwd ms/img':>10} {'model busy':>10}",
    ]
    for row in r["levels"]:
        for mode in MODES:
            f = row[mode]
            batch = f"{f['mean_batch']}, <= {_num(f['max_batch_at_most'])}" if f.get("mean_batch") else "-"
            lines.append(f"{row['clients']:>7}  {mode.replace('_', ' '):<10} {_num(f['p50_ms']):>9} "
                         f"{_num(f['p99_ms']):>9} {_num(f['requests_per_s']):>8} {f['failed']:>6}  {batch:<16} "
                         f"{_num(f.get('forward_ms_per_image')):>10} {_num(f.get('model_busy')):>10}")
    lines += [
        "",
        "batched / unbatched req/s: " + ", ".join(
            f"{row['clients']} clients {_num(row['batched_over_unbatched'])}" for row in r["levels"]),
        f"answers agreeing with a one-at-a-time Retriever.search: {_num(r['agreement'])} (lowest share); "
        f"failed requests: {r['failed']}",
    ]
    return "\n".join(lines)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"
