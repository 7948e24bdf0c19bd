"""``manet categories`` and ``manet dataset``: the training data of a MANet model.

``manet.cli.main`` registers these groups with ``cli.add_command``.
"""

from __future__ import annotations

from typing import Any

import click

from manet.cli.common import JSON_OPTION, YES_OPTION, State, _echo_json, confirm_destructive

SOURCE_CHOICE = click.Choice(["tfidf", "manual"])


def _retriever() -> Any:
    """The invocation's shared Retriever (the root command's State)."""
    state = click.get_current_context().find_object(State)
    if state is None:  # pragma: no cover - only when called outside the manet group
        raise click.UsageError("run this command through `manet`")
    return state.retriever


def _echo(data: Any, as_json: bool, human: Any) -> None:
    if as_json:
        _echo_json(data)
    else:
        human(data)


def _echo_categories(rows: list[dict[str, Any]]) -> None:
    if not rows:
        click.echo("no categories; run: manet categories mine --top K")
    for row in rows:
        keywords = ",".join(row["keywords"]) or "-"
        click.echo(
            f"{row['name']:<24} {keywords:<24} {row['products']:>6} products {row['images']:>8} images"
            f"  ({row['source']})"
        )


@click.group()
def categories() -> None:
    """Product categories: mined keywords (TF-IDF) or a manual column."""


@categories.command("mine")
@click.option(
    "--top",
    type=click.IntRange(min=1),
    default=44,
    show_default=True,
    help="Number of category keywords to mine (paper: 44).",
)
@click.option(
    "--min-images",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Leave out categories with fewer trainable images (split train or none).",
)
@click.option(
    "--keyword",
    "keywords",
    multiple=True,
    metavar="WORD",
    help="Use these keywords instead of mining them (repeatable).",
)
@click.option(
    "--from-column",
    "column",
    metavar="COL",
    help="Manual categories from the manifest's category column or another product column.",
)
@YES_OPTION
@JSON_OPTION
def categories_mine(
    top: int, min_images: int, keywords: tuple[str, ...], column: str | None, yes: bool, as_json: bool
) -> None:
    """Mine category keywords from product titles and descriptions and assign products.

    Replaces the previously mined (tfidf) categories; manual ones are kept.
    """
    if column is not None and keywords:
        raise click.UsageError("give --from-column or --keyword, not both")
    retriever = _retriever()
    if column is not None:
        rows = retriever.categories_from_column(column)
    else:
        mined = retriever.categories("tfidf")
        if mined:
            confirm_destructive(yes, f"Replace the {len(mined)} mined categories (training sets built on them "
                                     f"change)?")
        rows = retriever.mine_categories(top, min_images, keywords=keywords or None)
    _echo(rows, as_json, _echo_categories)


@categories.command("list")
@click.option("--source", type=SOURCE_CHOICE, help="Only mined (tfidf) or manual categories.")
@JSON_OPTION
def categories_list(source: str | None, as_json: bool) -> None:
    """Show each category with its keywords, products and images."""
    _echo(_retriever().categories(source), as_json, _echo_categories)


def _echo_training_set(summary: dict[str, Any]) -> None:
    config = summary["config"]
    click.echo(
        f"training set '{summary['name']}': {summary['categories']} {config['source']} categories, "
        f"{summary['train']} train + {summary['val']} val images (seed {config['seed']}, "
        f"at most {config['per_category']} per category)"
    )
    width = max([8, *(len(name) for name in summary["per_category"])])
    click.echo(f"  {'category':<{width}} {'train':>6} {'val':>6}")
    for name, counts in summary["per_category"].items():
        click.echo(f"  {name:<{width}} {counts['train']:>6} {counts['val']:>6}")
    click.echo(f"  {'total':<{width}} {summary['train']:>6} {summary['val']:>6}")


@click.group()
def dataset() -> None:
    """Training sets: balanced per-category samples with a train/val split."""


@dataset.command("build")
@click.option(
    "--name", default="default", show_default=True, help="Training set name (replaced if it exists)."
)
@click.option(
    "--per-category",
    type=click.IntRange(min=1),
    default=800,
    show_default=True,
    help="At most this many images per category (paper: ~800).",
)
@click.option(
    "--val-fraction",
    type=click.FloatRange(0, 1, max_open=True),
    default=0.2,
    show_default=True,
    help="Share of each category's images held out for validation.",
)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--source", type=SOURCE_CHOICE, help="Category source (default: tfidf if mined, else manual).")
@YES_OPTION
@click.option(
    "--min-per-category",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="Leave out categories with fewer images.",
)
@JSON_OPTION
def dataset_build(
    name: str,
    per_category: int,
    val_fraction: float,
    seed: int,
    source: str | None,
    min_per_category: int,
    yes: bool,
    as_json: bool,
) -> None:
    """Sample a balanced, reproducible training set from catalogue and train images.

    Photos that ingest marked val or test are evaluation queries and never enter it.
    """
    retriever = _retriever()
    if retriever.has_training_set(name):
        confirm_destructive(yes, f"Replace training set '{name}'?")
    summary = retriever.build_training_set(
        name=name,
        per_category=per_category,
        val_fraction=val_fraction,
        seed=seed,
        source=source,
        min_per_category=min_per_category,
    )
    _echo(summary, as_json, _echo_training_set)


@dataset.command("show")
@click.option("--name", default="default", show_default=True)
@JSON_OPTION
def dataset_show(name: str, as_json: bool) -> None:
    """Image counts per split and per category of a training set."""
    _echo(_retriever().training_set(name), as_json, _echo_training_set)
