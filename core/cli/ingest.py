"""``manet ingest``: a dataset plugin fills the catalogue."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from manet import config
from manet.cli.common import (
    JSON_OPTION,
    YES_OPTION,
    State,
    _echo_json,
    _params,
    confirm_destructive,
    pass_state,
)
from manet.cli.options import BATCH_ROWS, FiniteFloat
from manet.errors import ManetError


def _print_plan(plan: Any) -> None:
    """A sync's dry run: each product and image that would go."""
    click.echo(plan.summary())
    for product in plan.products:
        click.echo(f"  product {product['sku']}  {product['title'] or ''}".rstrip())
    for image in plan.images:
        click.echo(f"  image {image['id']}  {image['uri']}")
    _print_unsourced(plan)


def _print_unsourced(plan: Any) -> None:
    if (note := plan.unsourced_note()) is not None:
        click.echo(f"note: {note}", err=True)


@click.command()
@click.argument("kind")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--protocol", help="Dataset protocol (grocery-store: iconic|instance).")
@click.option("-o", "--option", "options", multiple=True, metavar="KEY=VALUE",
              help="Dataset plugin parameter (repeatable); see `manet plugins list --json`.")
@click.option("--allow-outside-root", is_flag=True,
              help="Accept manifest/sidecar image paths outside the dataset's folder.")
@click.option("--batch-size", default=config.DEFAULT_INGEST_BATCH, show_default=True, type=BATCH_ROWS,
              help="Images per transaction.")
@click.option("--max-outage", type=FiniteFloat(min=0), default=config.DEFAULT_MAX_OUTAGE, show_default=True,
              help="Seconds to keep retrying while the database is unreachable.")
@click.option("--sync", is_flag=True,
              help="Also remove the images an earlier ingest of this KIND and PATH stored that it no longer "
                   "lists, and products left with no image.")
@click.option("--dry-run", is_flag=True, help="With --sync: print what would be removed and change nothing.")
@YES_OPTION
@JSON_OPTION
@pass_state
def ingest(state: State, kind: str, path: Path, protocol: str | None, options: tuple[str, ...],
           allow_outside_root: bool, batch_size: int, max_outage: float, sync: bool, dry_run: bool, yes: bool,
           as_json: bool) -> None:
    """Ingest the dataset at PATH with dataset plugin KIND (folder, manifest, grocery-store, ...).

    Run again, it adds what is new, updates changed product fields and replaces images whose
    file changed; with --sync it also removes what it stored and no longer lists (asking first).
    """
    if dry_run and not sync:
        raise click.UsageError("--dry-run shows what --sync would remove; add --sync")
    params: dict[str, Any] = _params(options)
    if protocol is not None:
        params["protocol"] = protocol
    if allow_outside_root:
        params["allow_outside_root"] = True
    state.retriever.registry.create("dataset", kind, **params)  # bad kind/params fail before any I/O
    if not path.exists():
        raise ManetError(f"dataset path {path} does not exist; check the path and try again")

    def confirm(plan: Any) -> None:
        confirm_destructive(yes, f"Sync: remove {len(plan.products)} products and {len(plan.images)} images that "
                                 f"{path} no longer lists, with their descriptors?")

    report = state.retriever.ingest(kind, path, batch_size=batch_size, max_outage=max_outage,
                                    say=lambda message: click.echo(message, err=True), sync=sync, dry_run=dry_run,
                                    confirm=confirm, **params)
    if as_json:
        _echo_json(report.as_dict())
        return
    if dry_run:
        _print_plan(report.removed)
        return
    click.echo(f"{report.images_added} images added, {report.products_added} new products, "
               f"{report.products_updated} products updated, {report.images_replaced} images replaced, "
               f"{report.already_present} already present, {report.duplicates} duplicates, "
               f"{report.failed} failed"
               + (f", {report.images_adopted} stored images adopted as this dataset's" if report.images_adopted
                  else ""))
    if report.removed is not None:
        click.echo(report.removed.summary())
        _print_unsourced(report.removed)
    for _uri, error in report.failures[:20]:
        click.echo(f"  failed: {error}", err=True)
    if len(report.failures) > 20:
        click.echo(f"  ... and {len(report.failures) - 20} more (see images.error in the database)", err=True)
