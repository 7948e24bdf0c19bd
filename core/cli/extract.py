"""``manet extract``, ``worker``, ``status``, ``retry``: descriptor extraction and its queue."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from manet import config
from manet.cli.common import (
    BATCH_SIZE,
    JSON_OPTION,
    State,
    _echo_json,
    pass_state,
)
from manet.cli.options import BATCH_ROWS, LOCAL_PROCESSES, FiniteFloat
from manet.errors import ManetError


@click.command()
@click.option("--model", "model", required=True, help="Model name (see `manet models list`).")
@click.option("--batch-size", type=BATCH_SIZE, default="auto", show_default=True,
              help="Images per forward pass, or auto (measured against free GPU memory on CUDA; 8 on the CPU).")
@click.option("--workers", "processes", type=LOCAL_PROCESSES, default=0,
              help="Run N `manet worker` processes here instead (shared queue, crash-safe).")
@click.option("--decode-workers", "num_workers", type=LOCAL_PROCESSES, default=None,
              help="DataLoader decoding processes (default: auto).")
@click.option("--gpu-decode", "device_decode", type=click.Choice(["auto", "on", "off"]), default="auto",
              show_default=True, help="Decode JPEGs in batches on the device (nvjpeg); auto = on CUDA only.")
@click.option("--compile", "compile_model", is_flag=True, help="torch.compile the pipeline first.")
@click.option("--split", type=click.Choice(["train", "val", "test"]),
              help="Only the catalogue and the query images of this split.")
@JSON_OPTION
@pass_state
def extract(state: State, model: str, batch_size: int | None, processes: int, num_workers: int | None,
            device_decode: str, compile_model: bool, split: str | None, as_json: bool) -> None:
    """Compute descriptors for every image that lacks one (resumable)."""
    if processes > 0:
        if split is not None:
            raise click.UsageError("--split works with a single process; drop --workers")
        totals = _run_local_workers(state, model, processes, batch_size or 32)
        if as_json:
            _echo_json(totals)
        else:
            click.echo(f"{totals['extracted']} descriptors written, {totals['failed']} failed "
                       f"by {processes} workers")
        return
    report = state.retriever.extract(model, batch_size=batch_size, num_workers=num_workers, split=split,
                                     device_decode=device_decode, compile=compile_model)
    if as_json:
        _echo_json(report.as_dict())
    else:
        click.echo(f"{report.extracted} descriptors written, {report.failed} failed, "
                   f"{report.images_per_second:.1f} img/s on {report.device}")


def _run_local_workers(state: State, model: str, processes: int, batch_size: int) -> dict[str, Any]:
    """Start ``processes`` workers on this machine and wait for them to empty the queue."""
    import subprocess

    state.retriever.model(model)  # a clear error for an unknown model before forking
    # Each worker builds this invocation's settings from its environment, on the database reached here.
    env = state.settings.with_options(database_url=config.libpq_url(state.retriever.db.url)).as_environment()
    limits = state.limits
    command = [sys.executable, "-m", "manet.cli", "-q", "--max-bytes", str(limits.max_bytes),
               "--file-timeout", repr(limits.timeout), "worker", "--model", model, "--until-empty",
               "--batch-size", str(batch_size), "--json"]
    running = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE) for _ in range(processes)]
    totals = {"workers": processes, "extracted": 0, "failed": 0, "exit_codes": []}
    for process in running:
        out, _ = process.communicate()
        totals["exit_codes"].append(process.returncode)
        if process.returncode == 0:
            report = json.loads(out)
            totals["extracted"] += report["extracted"]
            totals["failed"] += report["failed"]
    if any(totals["exit_codes"]):
        raise ManetError(f"{sum(1 for c in totals['exit_codes'] if c)} of {processes} workers failed "
                         f"(exit codes {totals['exit_codes']}); finished batches are kept: run it again")
    return totals


@click.command()
@click.option("--model", "model", required=True)
@click.option("--batch-size", default=config.DEFAULT_WORKER_BATCH, show_default=True, type=BATCH_ROWS)
@click.option("--lease-seconds", type=FiniteFloat(min=0, min_open=True), default=config.DEFAULT_LEASE_SECONDS, show_default=True,
              help="A claimed batch returns to the queue this long after its worker stops answering.")
@click.option("--max-attempts", default=config.DEFAULT_MAX_ATTEMPTS, show_default=True, type=click.IntRange(1, 1000), help="Then an image is marked failed.")
@click.option("--until-empty", is_flag=True, help="Exit once no pending or leased work remains.")
@click.option("--max-outage", type=FiniteFloat(min=0), default=config.DEFAULT_MAX_OUTAGE, show_default=True,
              help="Seconds to keep retrying while the database is unreachable.")
@JSON_OPTION
@pass_state
def worker(state: State, model: str, batch_size: int, lease_seconds: float, max_attempts: int,
           until_empty: bool, max_outage: float, as_json: bool) -> None:
    """Extraction worker: claims batches from the shared database (run many, anywhere)."""
    report = state.retriever.work(model, batch_size=batch_size, lease_seconds=lease_seconds,
                                  max_attempts=max_attempts, until_empty=until_empty, max_outage=max_outage,
                                  say=None if as_json else lambda m: click.echo(m, err=True))
    if as_json:
        _echo_json(report.as_dict())
    else:
        click.echo(f"worker {report.owner}: {report.extracted} descriptors in {report.batches} batches, "
                   f"{report.failed} failed, {report.lost_leases} lost leases")


@click.command()
@click.option("--model", "model", help="Model whose extraction progress to show.")
@click.option("--failed", is_flag=True, help="List failed images with their errors.")
@JSON_OPTION
@pass_state
def status(state: State, model: str | None, failed: bool, as_json: bool) -> None:
    """Extraction progress of a model (done / pending / leased / failed), or failed images."""
    if failed:
        rows = state.retriever.failures(model)
        if as_json:
            _echo_json(rows)
            return
        for row in rows:
            click.echo(f"{row['stage']:<8} image {row['image_id']:<8} attempts {row['attempts']}  {row['error']}")
        if not rows:
            click.echo("no failed images")
        return
    if model is None:
        raise click.UsageError("give --model NAME, or --failed")
    info = state.retriever.status(model)
    if as_json:
        _echo_json(info)
        return
    eta = "unknown (no worker finished a batch in the last minute)" if info["eta_seconds"] is None \
        else f"{info['eta_seconds']} s"
    click.echo(f"{model}: {info['done']} done, {info['pending']} pending, {info['leased']} leased, "
               f"{info['failed']} failed of {info['images']} images ({info['ingest_failed']} failed at ingest); "
               f"rate {info['rate_per_second']:.1f} img/s, ETA {eta}")


@click.command()
@click.option("--failed", is_flag=True, required=True, help="Requeue failed images (required, for clarity).")
@click.option("--model", "model", help="Only this model's failed extractions.")
@JSON_OPTION
@pass_state
def retry(state: State, failed: bool, model: str | None, as_json: bool) -> None:
    """Requeue failed work after fixing the files: extractions run again, ingests are re-checked."""
    report = state.retriever.retry_failed(model)
    if as_json:
        _echo_json(report)
    else:
        click.echo(f"{report['requeued']} extractions requeued; {report['ingest_recovered']} failed images now "
                   f"decode, {report['ingest_still_failed']} still fail")
