"""``manet bench``: extraction, search, ingest and serving speed, each against its own ceiling.

``manet.cli.main`` registers this group with ``cli.add_command``. Every command prints a short
table, or with ``--json`` one object whose keys stay stable across versions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from manet.cli.common import BATCH_SIZE, JSON_OPTION, State, _echo_json, pass_state
from manet.cli.options import HNSW_EF_CONSTRUCTION, HNSW_M, SEED, FiniteFloat
from manet.config import DEFAULT_BACKBONE, DEFAULT_CATEGORY_INDEX_MIN_ROWS


@click.group()
def bench() -> None:
    """Measure extraction, search, ingest and serving speed (in a scratch database)."""


def _int_list(value: str) -> list[int]:
    try:
        return [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of integers") from None


def _float_list(value: str) -> list[float]:
    try:
        return [float(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of numbers") from None


def _emit(report: dict[str, Any], as_json: bool, human: Any) -> None:
    if as_json:
        _echo_json(report)
    else:
        human(report)


def _say(state: State):
    return (lambda message: click.echo(message, err=True)) if state.progress else (lambda message: None)


#: The pipeline a speed benchmark measures: a stored model, or one built from these options.
#: Weights default to none (also with --manet): no figure depends on their values (the same tensor
#: operations run, and the text detector sees the images), while imagenet is installed offline for
#: the default backbone only: another --backbone would need a download to be measured.
_PIPELINE_OPTIONS = [
    click.option("--model", "model", default=None,
                 help="A stored model of your database to measure (its config is recreated in the scratch database)."),
    click.option("--backbone", default=DEFAULT_BACKBONE, show_default=True, help="Without --model: the backbone."),
    click.option("--pooling", default="srmac", show_default=True, help="Without --model: the pooling."),
    click.option("--image-size", default=224, show_default=True, type=click.IntRange(32, 4096),
                 help="Without --model: input size in pixels."),
    click.option("--weights", default="none", show_default=True,
                 help="Without --model: imagenet, none (random) or a checkpoint path; speed does not depend on it."),
]


def pipeline_choice(command: Any) -> Any:
    """--model, --backbone, --pooling, --image-size, --weights (see :data:`_PIPELINE_OPTIONS`)."""
    for option in reversed(_PIPELINE_OPTIONS):
        command = option(command)
    return command


@bench.command("extract")
@pipeline_choice
@click.option("--manet", "manet", is_flag=True,
              help="An untrained MANet on --backbone (saliency + text branches with the default text "
                   "detector, SR-MAC): MANet's own cost, with its text detection's share.")
@click.option("--images", "n_images", default=500, show_default=True, type=click.IntRange(min=2),
              help="Images to extract end to end (generated, or the first N of --image-dir).")
@click.option("--image-dir", type=click.Path(path_type=Path, exists=True, file_okay=False),
              help="Real images instead of generated ones, laid out as for `manet ingest folder`.")
@click.option("--device", "bench_device", default=None,
              help="cpu or cuda[:N]  [default: the global --device, else the best available]")
@click.option("--batch-size", type=BATCH_SIZE, default="auto", show_default=True,
              help="Images per forward pass, or auto (measured on CUDA; 8 on the CPU).")
@click.option("--decode-workers", type=click.IntRange(min=0), default=None,
              help="DataLoader decoding processes  [default: auto]")
@click.option("--gpu-decode", "device_decode", type=click.Choice(["auto", "on", "off"]), default="auto",
              show_default=True, help="Decode JPEGs in batches on the device; auto = on CUDA only.")
@click.option("--compile", "compile_model", is_flag=True, help="torch.compile the pipeline (not the naive loop).")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]), default=None,
              help="Forward passes of the pipeline (not the naive loop, which is fp32)  [default: the global "
                   "--precision, else auto]")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="torch intra-op threads  [default: torch's, one per core]")
@click.option("--naive-images", default=32, show_default=True, type=click.IntRange(min=1),
              help="Images in the naive one-at-a-time loop (it is slow).")
@click.option("--source-size", default=384, show_default=True, type=click.IntRange(32, 4096),
              help="Side of the generated JPEG files in pixels.")
@click.option("--rounds", default=3, show_default=True, type=click.IntRange(min=1),
              help="Rounds of model-only, text-detection and end-to-end measurements; the report gives medians.")
@JSON_OPTION
@pass_state
def bench_extract(state: State, model: str | None, backbone: str, pooling: str, image_size: int, weights: str,
                  manet: bool, n_images: int, image_dir: Path | None, bench_device: str | None,
                  batch_size: int | None, decode_workers: int | None, device_decode: str, compile_model: bool,
                  precision: str | None, threads: int | None, naive_images: int, source_size: int,
                  rounds: int, as_json: bool) -> None:
    """Model-only forward vs end-to-end pipeline vs a naive one-image loop.

    \b
    model_only_ips   the pipeline on decoded batches already on the device
    text_detection_ips, text_detection_share
                     its text detector alone on the same batches, and its share
                     of the model-only time (null without a text branch)
    end_to_end_ips   files -> decode -> model -> pooling -> committed rows (manet extract)
    naive_ips        PIL decode, one image per forward, one INSERT per row
    peak_rss_mb      peak resident memory of this process during the end-to-end phase
                     (Linux; elsewhere the process's lifetime peak); decode workers'
                     own peaks are in decode_worker_peak_rss_mb
    """
    from manet.bench.extract import ExtractBenchOptions, format_report, run_extract_bench
    from manet.nn.device import select_device
    from manet.nn.pipeline import PipelineConfig

    device = select_device(bench_device or state.device)
    pipeline = None
    if model is not None:
        if manet:
            raise click.UsageError("--manet builds its own model; drop --model or --manet")
        config = state.retriever.model(model).config
        if getattr(config, "projection", None) is not None:  # its projection lives in your database
            pipeline = state.retriever.pipeline(model)
    else:
        config = PipelineConfig(backbone=backbone, weights=weights, image_size=image_size, pooling=pooling)
    options = ExtractBenchOptions(
        config=config, device=device, images=n_images, image_dir=image_dir, batch_size=batch_size,
        decode_workers=decode_workers, device_decode=device_decode, compile=compile_model, manet=manet,
        threads=threads, source_size=source_size, naive_images=naive_images, rounds=rounds,
        precision=precision or state.precision, east_model=state.settings.east_model,
        max_pixels=state.settings.max_pixels)
    report = run_extract_bench(state.admin.scratch_database(), state.admin.registry, options,
                               pipeline=pipeline,
                               say=_say(state))
    _emit(report, as_json, lambda r: click.echo(format_report(r)))


@bench.command("search")
@click.option("--n", "n", type=click.IntRange(min=1),
              help="Descriptors to load  [default: 100000; with --vectors: all its gallery rows]")
@click.option("--dim", type=click.IntRange(2, 64000), help="Dimensions  [default: 512; with --vectors: the file's]")
@click.option("--queries", default=1000, show_default=True, type=click.IntRange(min=1))
@click.option("--filter-selectivity", default="0.05", show_default=True,
              help="Fractions of the gallery in filter categories, one category each, e.g. "
                   "0.001,0.01,0.05,0.2,0.5.")
@click.option("--filter-queries", default=200, show_default=True, type=click.IntRange(min=1),
              help="Queries timed per filter selectivity (the first of --queries).")
@click.option("--filtered-ef-search", type=click.IntRange(1, 1000),
              help="ef_search of the filtered HNSW series  [default: manet's for filtered searches]")
@click.option("--ef-search", default="40,100,200,400", show_default=True, help="hnsw.ef_search values to sweep.")
@click.option("--vectors", type=click.Path(path_type=Path, dir_okay=False),
              help="A .npy float array (rows x dims), e.g. a model's real descriptors, instead of generated ones.")
@click.option("--queries-file", type=click.Path(path_type=Path, dir_okay=False),
              help="A .npy of query vectors for --vectors (default: hold --queries rows out of the file).")
@click.option("--intrinsic-dim", default=64, show_default=True, type=click.IntRange(min=1), help="Generator: dimension of the data's subspace.")
@click.option("--seed", default=0, show_default=True, type=SEED)
@click.option("--m", "m", default=16, show_default=True, type=HNSW_M, help="HNSW graph degree.")
@click.option("--ef-construction", default=64, show_default=True, type=HNSW_EF_CONSTRUCTION)
@click.option("--quantize", type=click.Choice(["auto", "none", "halfvec", "binary"]), default="auto",
              show_default=True, help="Index layout (auto: vector up to 2,000 dims, halfvec above).")
@click.option("--faiss/--no-faiss", "use_faiss", default=None,
              help="Compare with FAISS flat and HNSW  [default: when faiss is installed]")
@click.option("--category-indexes/--no-category-indexes", default=True, show_default=True,
              help=f"Give each filter category of more than {DEFAULT_CATEGORY_INDEX_MIN_ROWS} images its "
                   f"own HNSW index.")
@JSON_OPTION
@pass_state
def bench_search(state: State, n: int | None, dim: int | None, queries: int, filter_selectivity: str,
                 filter_queries: int, filtered_ef_search: int | None, ef_search: str, vectors: Path | None,
                 queries_file: Path | None, intrinsic_dim: int, seed: int, m: int, ef_construction: int, quantize: str,
                 use_faiss: bool | None, category_indexes: bool, as_json: bool) -> None:
    """HNSW latency and recall@7 vs exact search, with and without a filter, vs raw pgvector."""
    from manet.bench.search import SearchBenchOptions, format_report, run_search_bench

    options = SearchBenchOptions(
        n=n, dim=dim, queries=queries, filter_selectivity=tuple(_float_list(filter_selectivity)),
        filter_queries=filter_queries, filtered_ef_search=filtered_ef_search, ef_search=tuple(_int_list(ef_search)),
        vectors=vectors, queries_file=queries_file, intrinsic_dim=intrinsic_dim, seed=seed, m=m,
        ef_construction=ef_construction, quantize=None if quantize == "auto" else quantize, faiss=use_faiss,
        category_indexes=category_indexes)
    report = run_search_bench(state.admin.scratch_database(), options, _say(state))
    _emit(report, as_json, lambda r: click.echo(format_report(r)))


@bench.command("index-upkeep")
@click.option("--n", "n", default=100_000, show_default=True, type=click.IntRange(min=100), help="Descriptors to load.")
@click.option("--dim", default=512, show_default=True, type=click.IntRange(2, 2000))
@click.option("--queries", default=500, show_default=True, type=click.IntRange(min=1))
@click.option("--delete-fraction", type=FiniteFloat(), default=0.2, show_default=True, help="Fraction of the images deleted.")
@click.option("--ef-search", default=40, show_default=True, type=click.IntRange(1, 1000), help="hnsw.ef_search of every search.")
@click.option("--intrinsic-dim", default=64, show_default=True, type=click.IntRange(min=1), help="Generator: dimension of the data's subspace.")
@click.option("--seed", default=0, show_default=True, type=SEED)
@click.option("--m", "m", default=16, show_default=True, type=HNSW_M, help="HNSW graph degree.")
@click.option("--ef-construction", default=64, show_default=True, type=HNSW_EF_CONSTRUCTION)
@JSON_OPTION
@pass_state
def bench_index_upkeep(state: State, n: int, dim: int, queries: int, delete_fraction: float, ef_search: int,
                       intrinsic_dim: int, seed: int, m: int, ef_construction: int, as_json: bool) -> None:
    """Recall@7 and p50 of SQL search as built, after deleting a fraction of the catalogue, and after
    manet index rebuild --concurrently; rebuild time and index size before and after."""
    from manet.bench.index_upkeep import UpkeepBenchOptions, format_report, run_upkeep_bench

    options = UpkeepBenchOptions(n=n, dim=dim, queries=queries, delete_fraction=delete_fraction,
                                 ef_search=ef_search, intrinsic_dim=intrinsic_dim, seed=seed, m=m,
                                 ef_construction=ef_construction)
    report = run_upkeep_bench(state.admin.scratch_database(), options, _say(state))
    _emit(report, as_json, lambda r: click.echo(format_report(r)))


@bench.command("ingest")
@click.option("--rows", default=20_000, show_default=True, type=click.IntRange(min=1))
@click.option("--dim", default=512, show_default=True, type=click.IntRange(2, 16000))
@click.option("--insert-rows", type=click.IntRange(min=1),
              help="Rows for the (slow) INSERT side  [default: --rows]")
@JSON_OPTION
@pass_state
def bench_ingest(state: State, rows: int, dim: int, insert_rows: int | None, as_json: bool) -> None:
    """Descriptor rows/s: binary COPY vs executemany INSERT."""
    from manet.bench.ingest import format_report, run_ingest_bench

    report = run_ingest_bench(state.admin.scratch_database(), rows=rows, dim=dim, insert_rows=insert_rows)
    _emit(report, as_json, lambda r: click.echo(format_report(r)))


@bench.command("serve")
@pipeline_choice
@click.option("--images", "n_images", default=300, show_default=True, type=click.IntRange(min=1),
              help="Generated catalogue images to ingest, extract and index.")
@click.option("--photos", default=32, show_default=True, type=click.IntRange(min=1),
              help="Generated shopper photos the requests cycle through (not in the catalogue).")
@click.option("--photo-size", default=384, show_default=True, type=click.IntRange(32, 4096),
              help="Side of the generated photos in pixels.")
@click.option("--clients", default="1,8,32", show_default=True, help="Concurrent clients of each level.")
@click.option("--requests", "n_requests", default=640, show_default=True, type=click.IntRange(min=1),
              help="Timed requests per level and mode.")
@click.option("--rounds", default=2, show_default=True, type=click.IntRange(min=1),
              help="Rounds each level's requests are split into, the modes taking turns (after 1 untimed "
                   "request per client each).")
@click.option("--max-batch", type=click.IntRange(min=2), default=None,
              help="The batched server's micro-batch cap  [default: the server's]")
@click.option("--batch-wait-ms", type=FiniteFloat(min=0), default=None,
              help="The batched server's wait for a batch to fill  [default: the server's]")
@click.option("--device", "bench_device", default=None,
              help="cpu or cuda[:N]  [default: the global --device, else the best available]")
@JSON_OPTION
@pass_state
def bench_serve(state: State, model: str | None, backbone: str, pooling: str, image_size: int, weights: str,
                n_images: int, photos: int, photo_size: int, clients: str, n_requests: int, rounds: int,
                max_batch: int | None,
                batch_wait_ms: float | None, bench_device: str | None, as_json: bool) -> None:
    """manet serve (with and without micro-batching) vs the in-process search, at 1, 8 and 32 clients.

    \b
    in_process   Retriever.search on the photo file from N threads
    batched      POST /v1/search to manet serve's app (micro-batching), N keep-alive clients
    unbatched    the same app with --max-batch 1
    Each: p50_ms, p99_ms, requests_per_s (steady state: every client has had
    an answer and none has stopped), failed, agreement (answers equal to a
    one-at-a-time Retriever.search); servers: the batches they ran
    (mean_batch), forward_ms_per_image, model_busy.
    batched_over_unbatched: requests/s of the batched over the unbatched server.
    """
    from manet.bench.serve import ServeBenchOptions, check_options, format_report, run_serve_bench
    from manet.nn.pipeline import PipelineConfig

    if model is not None:
        config = state.retriever.model(model).config
        if getattr(config, "projection", None) is not None:
            raise click.UsageError(f"model {model} has a projection stored in your database, which the scratch "
                                   f"database lacks; measure its base model instead")
    else:
        config = PipelineConfig(backbone=backbone, weights=weights, image_size=image_size, pooling=pooling)
    options = ServeBenchOptions(
        config=config, images=n_images, photos=photos, photo_size=photo_size, clients=tuple(_int_list(clients)),
        requests=n_requests, rounds=rounds, max_batch=max_batch, batch_wait_ms=batch_wait_ms)
    check_options(options)
    settings = state.settings.with_options(device=bench_device)
    report = run_serve_bench(state.admin.scratch_database(), settings, options, say=_say(state))
    _emit(report, as_json, lambda r: click.echo(format_report(r)))
