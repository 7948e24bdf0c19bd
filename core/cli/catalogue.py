"""``manet products`` and ``manet images``: delete catalogue rows and read what happened to them;
``manet events``: the history of every recorded change."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from manet.cli.common import JSON_OPTION, YES_OPTION, State, _echo_json, confirm_destructive, pass_state
from manet.errors import ManetError

IGNORE_MISSING = click.option("--ignore-missing", is_flag=True,
                              help="Delete the ones that exist and report the unknown ones (default: delete nothing).")
LIMIT = click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 100_000),
                     help="At most this many of the latest events.")


def _listing(items: list[Any], shown: int = 5) -> str:
    text = ", ".join(str(item) for item in items[:shown])
    return text + (f" and {len(items) - shown} more" if len(items) > shown else "")


def _print_removal(removal: Any, as_json: bool) -> None:
    if as_json:
        _echo_json(removal.as_dict())
        return
    click.echo(removal.summary())
    if removal.missing:
        click.echo(f"  not found (skipped): {_listing(removal.missing)}", err=True)


def _print_events(rows: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        _echo_json(rows)
        return
    from manet.store.events import details_json

    for row in rows:
        names = " ".join(f"{key}={row[key]}" for key in ("sku", "image_id", "model_id") if row[key] is not None)
        click.echo(f"{row['at']}  {row['actor']:<20} {row['action']:<16} {names}  {details_json(row['details'])}")


@click.group()
def products() -> None:
    """Catalogue products: delete them, read their history."""


@products.command("delete")
@click.argument("skus", nargs=-1)
@click.option("--from-file", "from_file", type=click.Path(path_type=Path),
              help="Also delete the SKUs listed in this text file (one a line; # comments).")
@IGNORE_MISSING
@YES_OPTION
@JSON_OPTION
@pass_state
def products_delete(state: State, skus: tuple[str, ...], from_file: Path | None, ignore_missing: bool, yes: bool,
                    as_json: bool) -> None:
    """Delete products SKU... with all their images and descriptors (one transaction)."""
    from manet.catalog.removal import read_skus

    wanted = [*skus, *(read_skus(from_file) if from_file is not None else [])]
    if not wanted:
        raise ManetError("no SKU given; name the products to delete, or give --from-file FILE")
    plan = state.retriever.delete_products(wanted, ignore_missing=ignore_missing, dry_run=True)
    if not plan.products:  # every SKU unknown, with --ignore-missing: nothing to ask about
        _print_removal(plan, as_json)
        return
    confirm_destructive(yes, f"Delete {len(plan.products)} products ({_listing([p['sku'] for p in plan.products])}) "
                             f"with {len(plan.images)} images and their descriptors?")
    _print_removal(state.retriever.delete_products(wanted, ignore_missing=ignore_missing), as_json)


@products.command("history")
@click.argument("sku")
@LIMIT
@JSON_OPTION
@pass_state
def products_history(state: State, sku: str, limit: int, as_json: bool) -> None:
    """What happened to product SKU (created, updated, images replaced, deleted): who and when."""
    rows = state.retriever.history(sku=sku, limit=limit)
    if not rows and not as_json:
        click.echo(f"no recorded change for SKU {sku}")
    _print_events(rows, as_json)


@click.group()
def images() -> None:
    """Catalogue and query images: delete them."""


@images.command("delete")
@click.argument("image_ids", nargs=-1, type=int)
@IGNORE_MISSING
@YES_OPTION
@JSON_OPTION
@pass_state
def images_delete(state: State, image_ids: tuple[int, ...], ignore_missing: bool, yes: bool,
                  as_json: bool) -> None:
    """Delete images ID... with their descriptors (their products stay; one transaction)."""
    if not image_ids:
        raise ManetError("no image id given; name the images to delete (SELECT id, uri FROM images)")
    plan = state.retriever.delete_images(image_ids, ignore_missing=ignore_missing, dry_run=True)
    confirm_destructive(yes, f"Delete {len(plan.images)} images ({_listing([i['id'] for i in plan.images])}) "
                             f"and their descriptors?")
    _print_removal(state.retriever.delete_images(image_ids, ignore_missing=ignore_missing), as_json)


@click.command()
@click.option("--sku", help="Only the events of this product.")
@click.option("--image-id", type=click.IntRange(1, 2**63 - 1), help="Only the events of this image (or of the image it replaced).")
@click.option("--action", help="Only this action, e.g. product.delete, image.replace.")
@LIMIT
@JSON_OPTION
@pass_state
def events(state: State, sku: str | None, image_id: int | None, action: str | None, limit: int,
           as_json: bool) -> None:
    """The latest recorded changes to the catalogue, models and indexes: who, when, what."""
    _print_events(state.retriever.history(sku=sku, image_id=image_id, action=action, limit=limit), as_json)
