"""The ``manet`` command line: a thin layer over :class:`manet.Retriever`."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from manet import __version__, config
from manet.cli.bench import bench
from manet.cli.catalogue import events, images, products
from manet.cli.common import (
    ManetGroup,
    State,
)
from manet.cli.db import db
from manet.cli.demo import demo
from manet.cli.doctor import doctor
from manet.cli.evaluate import eval_
from manet.cli.explain import explain
from manet.cli.extract import extract, retry, status, worker
from manet.cli.ingest import ingest
from manet.cli.models import models
from manet.cli.plugins import plugins
from manet.cli.search import index, search
from manet.cli.serve import serve
from manet.cli.train import train
from manet.cli.training_data import categories, dataset
from manet.errors import ManetError
from manet.safe_files import DEFAULT_FILE_TIMEOUT, DEFAULT_MAX_BYTES
from manet.settings import Settings


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
    # One Settings for the invocation (click has already fallen back to each option's variable);
    # it travels down as parameters: State -> Retriever -> each reader.
    settings = Settings.from_environment(
        database_url=database_url, home=home, device=device, precision=precision, load_plugins=load_plugins,
        east_model=east_model, max_pixels=max_pixels, max_bytes=max_bytes, file_timeout=file_timeout)
    ctx.obj = State(settings, quiet)



cli.add_command(db)
cli.add_command(plugins)
cli.add_command(ingest)
cli.add_command(models)
cli.add_command(extract)
cli.add_command(worker)
cli.add_command(status)
cli.add_command(retry)
cli.add_command(index)
cli.add_command(search)
cli.add_command(serve)
cli.add_command(eval_)
cli.add_command(train)
cli.add_command(demo)
cli.add_command(bench)
cli.add_command(categories)
cli.add_command(dataset)
cli.add_command(doctor)
cli.add_command(explain)
cli.add_command(products)
cli.add_command(images)
cli.add_command(events)


def main() -> None:
    """Console-script entry point: adds plugin commands, then runs the group."""
    from manet.plugin_manager import make_plugin_manager
    from manet.settings import load_plugins_from_environment

    try:  # before the options are parsed: the plugins MANET_LOAD_PLUGINS allows
        make_plugin_manager(allowed=load_plugins_from_environment()).hook.register_commands(cli=cli)
    except ManetError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)
    cli(prog_name="manet")


if __name__ == "__main__":  # pragma: no cover
    main()
