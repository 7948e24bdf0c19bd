"""``manet bench``: extraction, search and ingest speed, each against its own ceiling.

``manet.cli`` registers this group with ``cli.add_command``. Every command prints a short
table, or with ``--json`` one object whose keys stay stable across versions.
"""

from __future__ import annotations

from typing import Any

import click

from manet.cli_common import JSON_OPTION, State, _echo_json, pass_state


@click.group()
def bench() -> None:
    """Measure extraction, search and ingest speed (in a scratch database)."""


def _int_list(value: str) -> list[int]:
    try:
        return [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of integers") from None


def _emit(report: dict[str, Any], as_json: bool, human: Any) -> None:
    if as_json:
        _echo_json(report)
    else:
        human(report)


# -- bench extract: owned by the extraction work ------------------------------------------------
@bench.command("extract")
@click.option("--model", "model", default=None,
              help="Stored model to measure (default: a resnet50 SR-MAC pipeline, weights none).")
@click.option("--images", "n_images", default=500, show_default=True, help="Generated images to extract.")
@JSON_OPTION
@pass_state
def bench_extract(state: State, model: str | None, n_images: int, as_json: bool) -> None:
    """Model-only forward vs end-to-end pipeline vs a naive one-image loop."""
    raise click.ClickException("not implemented yet")


# -- bench search: owned by the search work -----------------------------------------------------
@bench.command("search")
@click.option("--n", "n", default=100_000, show_default=True, help="Descriptors to load.")
@click.option("--dim", default=512, show_default=True)
@click.option("--queries", default=1000, show_default=True)
@JSON_OPTION
@pass_state
def bench_search(state: State, n: int, dim: int, queries: int, as_json: bool) -> None:
    """HNSW latency and recall@7 vs exact search, with and without a filter."""
    raise click.ClickException("not implemented yet")


# -- bench ingest: owned by the search work -----------------------------------------------------
@bench.command("ingest")
@click.option("--rows", default=20_000, show_default=True)
@click.option("--dim", default=512, show_default=True)
@JSON_OPTION
@pass_state
def bench_ingest(state: State, rows: int, dim: int, as_json: bool) -> None:
    """Descriptor rows/s: binary COPY vs executemany INSERT."""
    raise click.ClickException("not implemented yet")
