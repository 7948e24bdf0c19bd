"""Options shared by several commands: the re-ranking trio of search, eval and models augment, and
the finite-number type of every float option."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import click

from manet import config
from manet.cli.common import (
    _params,
)


class FiniteFloat(click.FloatRange):
    """click's FloatRange that also refuses nan and inf: both pass its bound checks (``nan < 0``
    is False) and would reach a sleep, an SQL interval or a learning rate."""

    name = "float"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


#: A seed numpy and torch both take.
SEED = click.IntRange(0, 2**32 - 1)
#: An input size in pixels (what a pipeline accepts).
IMAGE_SIZE = click.IntRange(32, 4096)
#: Processes (or DataLoader workers) one command starts on this machine: more would only queue
#: for its cores, hold a network each (memory) and use up the database's connections.
MAX_LOCAL_PROCESSES = 64
LOCAL_PROCESSES = click.IntRange(0, MAX_LOCAL_PROCESSES)
#: HNSW graph options pgvector accepts (ef_construction must also be at least 2 x m).
HNSW_M = click.IntRange(2, 100)
HNSW_EF_CONSTRUCTION = click.IntRange(4, 1000)
#: Rows or images handled in one transaction or one claim.
BATCH_ROWS = click.IntRange(1, 100_000)

#: The -r option of the commands taking --rerank, named in errors about its values.
RERANK_PARAM = "-r/--rerank-param"


def rerank_options(names: str, shortlist_help: str) -> Callable[[Any], Any]:
    """--rerank NAME, -r KEY=VALUE and --shortlist S, as search and eval take them."""
    options = [
        click.option("--rerank", "rerank", help=f"Re-rank each query's shortlist with this re-ranker ({names})."),
        click.option("-r", "--rerank-param", "rerank_params", multiple=True, metavar="KEY=VALUE",
                     help="Re-ranker parameter (repeatable), e.g. -r top_n=3."),
        click.option("--shortlist", default=config.DEFAULT_SHORTLIST, show_default=True, help=shortlist_help),
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
