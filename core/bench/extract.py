"""``manet bench extract``: the extraction pipeline against its own ceiling and a naive loop.

One run, in the scratch database (:mod:`manet.bench.common`), on real JPEG files, measures:

- **model only**: the same pipeline module on uint8 batches already decoded and on the device
  (two real batches, cycled), i.e. what the model alone can do;
- **text detection**, when the pipeline has a text branch (MANet's text mask): its detector
  alone on the same batches, called as the forward pass calls it; ``text_detection_share`` is
  its time per image over the model-only time per image, the part of extraction it costs;
- **end to end**: :func:`manet.extract.run.extract` from files to committed descriptor rows
  (DataLoader decoding, the forward pass, the writer thread's binary COPY); ingest is not part
  of it;
- model only, text detection and end to end alternate for ``rounds`` rounds (each round
  extracts every image into a model of its own): the reported figures are the medians, and
  ``e2e_over_model`` and ``text_detection_share`` are the medians of each round's own ratio, so
  a slow spell of a shared machine lands on both sides of one ratio instead of on one phase;
- **naive**: what pgvector-python's image-search example does, one image at a time: PIL decode,
  a torchvision resize, one forward pass of the unprepared module (fp32, no channels_last), one
  ``INSERT`` through ``register_vector`` on an autocommit connection.

``peak_rss_mb`` is the highest resident memory of this process during the end-to-end phase
(Linux: the VmHWM high-water mark, reset just before the phase by writing 5 to
/proc/self/clear_refs; elsewhere the process's peak since it started, which includes setting
up). DataLoader workers are separate processes: ``decode_worker_peak_rss_mb`` is the largest of
their own peaks (sampled from /proc while they run; elsewhere the largest finished child's).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from manet.bench.common import peak_rss_mb
from manet.bench.extract_phases import first_images, measure_model_only, measure_naive, text_detection
from manet.bench.memory import child_peak_rss, phase_peak_rss_mb, reset_peak_rss
from manet.errors import ManetError
from manet.nn.pipeline import PipelineConfig
from manet.store.database import Database

#: Distinct synthetic photos rendered per run; the files are shifted/mirrored copies of them.
DISTINCT_PHOTOS = 64
#: Grocery Store photos are 348 px on the short side: generated files default to about that.
SOURCE_SIZE = 384
BENCH_MODEL = "bench"
NAIVE_MODEL = "bench-naive"


#: Decoded images cycled by the model-only measurement (at least two batches).
MODEL_ONLY_SAMPLE = 64


@dataclass
class ExtractBenchOptions:
    """What one ``manet bench extract`` run measures (see the CLI for each option)."""

    config: PipelineConfig
    device: str
    images: int = 500
    image_dir: Path | None = None
    batch_size: int | None = None
    decode_workers: int | None = None
    device_decode: str = "auto"
    compile: bool = False
    manet: bool = False
    threads: int | None = None
    source_size: int = SOURCE_SIZE
    model_batches: int = 4
    min_model_seconds: float = 5.0
    naive_images: int = 32
    #: Rounds of model-only, text-detection and end-to-end measurements (see the module docstring).
    rounds: int = 3
    seed: int = 0
    #: auto | fp32 | bf16 for the model-only and end-to-end phases (the naive loop is fp32).
    precision: str | None = None
    #: The EAST graph the settings configure (``--east-model``), for the default text detector.
    east_model: Path | None = None
    #: The pixel cap of every image read (``--max-pixels``; None: the default).
    max_pixels: int | None = None


# -- inputs ---------------------------------------------------------------------------------
def write_bench_images(folder: Path, count: int, size: int = SOURCE_SIZE, seed: int = 0) -> Iterator[Path]:
    """Write ``count`` distinct JPEG shopper photos (:mod:`manet.tools.synthetic`) one at a time.

    Rendering a photo takes ~50 ms, so up to :data:`DISTINCT_PHOTOS` are rendered and every
    file is one of them rolled by a random offset (mirrored half the time) with its number in a
    JPEG comment: no two files have the same bytes (ingest de-duplicates by content), and
    only the rendered photos are held in memory, however many files are written.
    """
    from PIL import Image

    from manet.tools.synthetic import make_specs, render_pack, shopper_photo

    folder.mkdir(parents=True, exist_ok=True)
    specs = make_specs(min(16, count), seed)
    packs = [render_pack(spec, size) for spec in specs]
    photos = [shopper_photo(packs[i % len(packs)], np.random.default_rng([seed, 3, i]))
              for i in range(min(DISTINCT_PHOTOS, count))]
    rng = np.random.default_rng([seed, 4])
    for i in range(count):
        pixels = np.roll(photos[i % len(photos)], tuple(int(v) for v in rng.integers(0, size, 2)), axis=(0, 1))
        if rng.random() < 0.5:
            pixels = pixels[:, ::-1]
        path = folder / f"{i:06d}.jpg"
        Image.fromarray(np.ascontiguousarray(pixels)).save(path, format="JPEG", quality=90,
                                                           comment=f"manet bench {i}".encode())
        yield path


def _records(options: ExtractBenchOptions, workdir: Path, registry: Any) -> list[Any]:
    from manet.plugin_base import Record

    if options.image_dir is None:
        paths = write_bench_images(workdir / "images", options.images, options.source_size, options.seed)
        return [Record(image=path, sku=f"B{i % 100}") for i, path in enumerate(paths)]
    if not Path(options.image_dir).is_dir():
        raise ManetError(f"--image-dir {options.image_dir} is not a folder; give a folder laid out as for "
                         f"`manet ingest folder` (one sub-folder of images per product)")
    records = []
    for record in registry.create("dataset", "folder").records(Path(options.image_dir)):
        records.append(record)
        if len(records) == options.images:
            break
    return records


def untrained_manet(config: PipelineConfig, registry: Any, folder: Path,
                    east_model: Path | None = None) -> PipelineConfig:
    """``config`` as an untrained MANet (both attention branches, SR-MAC on the learned saliency,
    the text mask: the default detector, EAST when ``east_model`` is set), its random weights saved
    under ``folder``: MANet + SR-MAC's cost to measure."""
    import torch

    from manet.nn.network import MANetConfig, build_manet
    from manet.plugins.text_detectors import default_text_detector

    torch.manual_seed(0)
    manet = MANetConfig(backbone=config.backbone, weights=config.weights, num_classes=2)
    checkpoint = folder / "untrained-manet.pt"
    torch.save({"model": build_manet(manet, registry).state_dict()}, checkpoint)
    return replace(config, pooling="srmac", manet=asdict(manet), checkpoint=str(checkpoint),
                   learned_saliency=True, text_mask=True, text_detector=default_text_detector(east_model))


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b > 0 else None


@dataclass
class _ModelOnly:
    """Figures of the model-only phase (and of the text detector alone, when there is one)."""

    ips: float
    images: int
    text_ips: float | None


@dataclass
class _EndToEnd:
    """Figures of the end-to-end phase: the extraction report, its time and its memory peaks."""

    report: Any
    seconds: float
    peak_rss_mb: float
    peak_rss_reset: bool
    worker_peak_rss_mb: float | None
    gpu_peak_mb: float | None


def _check(options: ExtractBenchOptions) -> None:
    import torch

    if options.device.startswith("cuda") and not torch.cuda.is_available():
        raise ManetError(f"device '{options.device}' requested but CUDA is not available; use --device cpu")
    if options.images < 2:
        raise ManetError(f"--images {options.images} is too few to measure; use at least 2")
    if options.rounds < 1:
        raise ManetError(f"--rounds {options.rounds} measures nothing; use at least 1")


def _set_up(db: Database, registry: Any, options: ExtractBenchOptions, workdir: Path,
            say: Callable[[str], None]) -> tuple[PipelineConfig, Any, Any]:
    """Ingest the images and create the two models: (pipeline config, model, naive model)."""
    from manet.catalog.ingest import ingest_records
    from manet.store.models import create_model

    config = (untrained_manet(options.config, registry, workdir, options.east_model) if options.manet
              else options.config)
    say(f"writing and ingesting {options.images} images" if options.image_dir is None
        else f"ingesting images from {options.image_dir}")
    ingest_report = ingest_records(db, _records(options, workdir, registry), max_pixels=options.max_pixels)
    if ingest_report.images_added < 2:
        raise ManetError(f"only {ingest_report.images_added} usable images were ingested; "
                         f"give --image-dir a folder with more images")
    return config, create_model(db, registry, BENCH_MODEL, config), create_model(db, registry, NAIVE_MODEL, config)


def _model_only_phase(db: Database, pipeline: Any, forward: Any, batch_size: int, size: int,
                      options: ExtractBenchOptions, say: Callable[[str], None]) -> _ModelOnly:
    """The model alone on decoded batches already on the device, then its text detector alone."""
    from manet.catalog.batch_decode import read_batch

    device = options.device
    # Several distinct batches: per-image costs that depend on the content (MSER text
    # detection, saliency) must average out as they do over the end-to-end images.
    sample = first_images(db, max(2 * batch_size, MODEL_ONLY_SAMPLE))
    # Full batches only (a short last one would understate the model), unless there is no other.
    decoded = [read_batch(sample[i:i + batch_size], size, options.max_pixels, False).pixels
               for i in range(0, max(1, len(sample) // batch_size) * batch_size, batch_size)]
    batches = [pixels.to(device) for pixels in decoded if pixels is not None]
    if not batches:
        raise ManetError("none of the first images could be decoded; check the image folder")
    model_ips, model_count = measure_model_only(forward, batches, device,
                                                max(options.model_batches, len(batches)),
                                                options.min_model_seconds)
    text_ips = None
    if pipeline.text is not None:
        say(f"text detection alone ({pipeline.text.name})")
        detect, units = text_detection(pipeline, batches)
        text_ips, _ = measure_model_only(detect, units, device, max(options.model_batches, len(units)),
                                         options.min_model_seconds)
    return _ModelOnly(model_ips, model_count, text_ips)


def _end_to_end_phase(db: Database, model: Any, fast: Any, batch_size: int,
                      options: ExtractBenchOptions) -> _EndToEnd:
    """:func:`manet.extract.run.extract` from files to committed rows, with its memory peaks."""
    import torch

    from manet.extract.run import extract

    device = options.device
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    hwm_reset = reset_peak_rss()
    with child_peak_rss() as workers_rss:
        started = time.perf_counter()
        report = extract(db, model, fast, device=device, batch_size=batch_size,
                         num_workers=options.decode_workers, device_decode=options.device_decode,
                         precision=options.precision, max_pixels=options.max_pixels)
        seconds = time.perf_counter() - started
    peak = phase_peak_rss_mb()
    gpu_peak = (torch.cuda.max_memory_allocated(device) / 2**20) if device.startswith("cuda") else None
    return _EndToEnd(report, seconds, peak, hwm_reset, workers_rss["mb"], gpu_peak)


def run_extract_bench(db: Database, registry: Any, options: ExtractBenchOptions, *, pipeline: Any = None,
                      say: Callable[[str], None] = lambda _m: None) -> dict[str, Any]:
    """Run the three measurements in the empty scratch database ``db``; return the report.

    ``pipeline`` is the module for ``options.config`` when the caller has it built (a stored
    model with a projection); by default it is built here.
    """
    import torch

    from manet.extract.forward import Forward, prepare_pipeline, resolve_batch_size
    from manet.extract.run import device_decode_enabled
    from manet.nn.pipeline import build_pipeline
    from manet.store.models import create_model

    device = options.device
    _check(options)
    device_decode = device_decode_enabled(options.device_decode, device)
    if options.threads is not None:
        torch.set_num_threads(options.threads)
    with tempfile.TemporaryDirectory(prefix="manet-bench-") as tmp:
        config, model, naive_model = _set_up(db, registry, options, Path(tmp), say)
        if pipeline is None:
            pipeline = build_pipeline(config, registry, east_model=options.east_model)
        pipeline = pipeline.to(device).eval()
        size = config.image_size

        say("naive loop")  # first, on the module as built: the naive user does not prepare it
        naive = measure_naive(db, naive_model.id, pipeline, first_images(db, max(2, options.naive_images + 1)),
                              size, device)

        fast = prepare_pipeline(pipeline, device, compile=options.compile)
        batch_size = resolve_batch_size(options.batch_size, fast, size, device, options.precision)
        forward = Forward(fast, device, batch_size, model.dim, options.precision)
        rounds = []
        for index in range(options.rounds):
            round_model = model if index == 0 else create_model(db, registry, f"{BENCH_MODEL}-{index + 1}", config)
            say(f"round {index + 1}/{options.rounds}: model only (batch {batch_size})")
            model_only = _model_only_phase(db, pipeline, forward, batch_size, size, options, say)
            batch_size = forward.chunk  # after any out-of-memory back-off
            say(f"round {index + 1}/{options.rounds}: end to end")
            rounds.append((model_only, _end_to_end_phase(db, round_model, fast, batch_size, options)))
    return _report(options, config, model, pipeline, batch_size, device_decode, naive, rounds)


def _median(values: list[float | None], digits: int | None = None) -> float | None:
    """The median of the values that are not None (rounded to ``digits``), or None if there are none."""
    known = [v for v in values if v is not None]
    if not known:
        return None
    middle = float(np.median(known))
    return middle if digits is None else round(middle, digits)


def _round_figures(model_only: _ModelOnly, e2e: _EndToEnd) -> dict[str, Any]:
    """One round's speeds and its own ratios (``report["rounds"]``)."""
    e2e_ips = round(e2e.report.extracted / e2e.seconds if e2e.seconds > 0 else 0.0, 2)
    figures: dict[str, Any] = {"model_only_ips": round(model_only.ips, 2), "end_to_end_ips": e2e_ips,
                               "e2e_over_model": _ratio(e2e_ips, round(model_only.ips, 2))}
    if model_only.text_ips is not None:
        # (1 / text_ips) / (1 / model_ips): the share of the model-only time per image.
        figures["text_detection_ips"] = round(model_only.text_ips, 2)
        figures["text_detection_share"] = _ratio(model_only.ips, model_only.text_ips)
    return figures


def _report(options: ExtractBenchOptions, config: PipelineConfig, model: Any, pipeline: Any, batch_size: int,
            device_decode: bool, naive: tuple[float, int], rounds: list[tuple[_ModelOnly, _EndToEnd]]
            ) -> dict[str, Any]:
    """The figures of ``manet bench extract --json``: medians over the rounds, each ratio the median
    of the rounds' own (the memory peaks are the highest of any round)."""
    import torch

    device, report = options.device, rounds[0][1].report
    naive_ips, naive_count = naive
    per_round = [_round_figures(m, e) for m, e in rounds]
    model_ips = _median([m.ips for m, _ in rounds])
    text_ips = _median([m.text_ips for m, _ in rounds])
    e2e_ips = _median([r["end_to_end_ips"] for r in per_round])
    e2e = max((e for _, e in rounds), key=lambda e: e.peak_rss_mb)
    workers_peak = max((e.worker_peak_rss_mb or 0.0 for _, e in rounds), default=0.0)
    gpu_peaks = [e.gpu_peak_mb for _, e in rounds if e.gpu_peak_mb is not None]
    return {
        "device": device,
        "gpu_name": torch.cuda.get_device_name(device) if device.startswith("cuda") else None,
        "backbone": config.backbone,
        "pooling": config.pooling,
        "manet": config.manet is not None,
        "weights": config.weights,
        "image_size": config.image_size,
        "dim": model.dim,
        "source": (f"generated {options.source_size} px JPEG shopper photos" if options.image_dir is None
                   else str(options.image_dir)),
        "images": report.extracted,
        "failed": report.failed,
        "batch_size": batch_size,
        "decode_workers": report.decode_workers,
        "device_decode": device_decode,
        "channels_last": True,
        "precision": report.precision,
        "compile": options.compile,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "model_only_ips": round(model_ips, 2),
        "model_only_images": rounds[0][0].images,
        "text_detector": pipeline.text.name if pipeline.text is not None else None,
        "text_detection_ips": round(text_ips, 2) if text_ips is not None else None,
        "text_detection_share": _median([r.get("text_detection_share") for r in per_round], 3),
        "end_to_end_ips": round(e2e_ips, 2),
        "end_to_end_seconds": _median([e.seconds for _, e in rounds], 3),
        "naive_ips": round(naive_ips, 2),
        "naive_images": naive_count,
        "e2e_over_model": _median([r["e2e_over_model"] for r in per_round], 3),
        "rounds": per_round,
        "e2e_over_naive": _ratio(e2e_ips, naive_ips),
        "peak_rss_mb": round(e2e.peak_rss_mb, 1),
        "peak_rss_scope": "end-to-end phase" if e2e.peak_rss_reset else "whole process",
        "decode_worker_peak_rss_mb": round(workers_peak, 1) if workers_peak else None,
        "process_peak_rss_mb": round(peak_rss_mb(), 1),
        "gpu_peak_memory_mb": round(max(gpu_peaks), 1) if gpu_peaks else None,
    }


def _rounds_note(rounds: list[dict[str, Any]], key: str) -> str:
    """Each round's ``key``, for the table (nothing for a single round)."""
    return f" (rounds: {', '.join(str(x[key]) for x in rounds)})" if len(rounds) > 1 else ""


def format_report(r: dict[str, Any]) -> str:
    """The human-readable table of :func:`run_extract_bench`'s report."""
    model = f"{'MANet + ' if r['manet'] else ''}{r['backbone']} + {r['pooling']}, {r['image_size']} px"
    device = r["device"] + (f" ({r['gpu_name']})" if r["gpu_name"] else "")
    gpu = f"{r['gpu_peak_memory_mb']:.0f} MiB" if r["gpu_peak_memory_mb"] is not None else "-"
    workers = f"{r['decode_worker_peak_rss_mb']:.0f} MiB" if r["decode_worker_peak_rss_mb"] else "-"
    spread = partial(_rounds_note, r["rounds"])
    median = f"; median of {len(r['rounds'])} rounds" if len(r["rounds"]) > 1 else ""
    text = ([f"  text detection  {r['text_detection_ips']:.2f} img/s alone: "
             f"{100 * r['text_detection_share']:.0f} % of the model-only time ({r['text_detector']})"
             f"{spread('text_detection_share')}"]
            if r["text_detection_ips"] is not None else [])
    return "\n".join([
        f"extract benchmark: {model} on {device}; batch {r['batch_size']}, {r['threads']} torch threads, "
        f"{r['decode_workers']} decode workers, device decode {'on' if r['device_decode'] else 'off'}, "
        f"{r['precision']} (naive loop: fp32)",
        f"  model only  {r['model_only_ips']:>9.2f} img/s  ({r['model_only_images']} images, decoded batches "
        f"already on the device{median})",
        *text,
        f"  end to end  {r['end_to_end_ips']:>9.2f} img/s  ({r['images']} images: files -> decode -> model -> "
        f"rows in PostgreSQL{median}) = {r['e2e_over_model']} x model only{spread('e2e_over_model')}",
        f"  naive loop  {r['naive_ips']:>9.2f} img/s  ({r['naive_images']} images: PIL, one image per forward, "
        f"one INSERT each); end to end = {r['e2e_over_naive']} x naive",
        f"  peak RSS {r['peak_rss_mb']:.0f} MiB ({r['peak_rss_scope']}, this process); decode workers {workers}; "
        f"GPU peak {gpu}",
        f"  source: {r['source']}",
    ])
