"""Sync: remove from the catalogue what a dataset stored and no longer lists.

Every image row records its ``source``: the dataset that stored it, as the dataset kind and the
resolved path given to ``manet ingest`` (:func:`dataset_source`: ``manifest:/data/catalogue.csv``,
``folder:/data/photos``). A dataset's share of the catalogue is the images of its source, and
the products all of whose images are among them. What of that share the dataset no longer
lists goes: its images by path, then its products not listed by SKU that are left with no
image. Images of other sources, and products that keep an image of another source (or that
never had an image), are never touched, wherever their files are: two datasets sync
independently even when one's folder is inside the other's.

Images stored before sources were recorded (revision 0008) have none and are never removed by a
sync; it counts those under the dataset's folder (:func:`dataset_root`) that it does not list,
and says how to adopt them (a re-ingest records its source on the rows at the paths it lists)
or delete them.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from manet.catalog.removal import Removal, any_of, image_rows, product_rows, remove_rows
from manet.errors import ManetError
from manet.store.database import Database
from manet.store.schema import images, products


def dataset_root(path: Path) -> Path:
    """The folder of a dataset at ``path``: ``path`` itself if it is a folder, else the folder
    of the manifest (resolved, as the dataset plugins resolve it)."""
    path = Path(path).resolve()
    return path if path.is_dir() else path.parent


def dataset_source(kind: str, path: Path) -> str:
    """The ``images.source`` of the dataset plugin ``kind`` read at ``path``: ``kind:/resolved/path``
    (so ``./cat.csv`` and ``/data/cat.csv`` are one dataset, a symlink and its target too)."""
    return f"{kind}:{Path(path).resolve()}"


def _unlisted_images(conn: sa.Connection, source: str, uris: Collection[str], lock: bool) -> list[dict[str, Any]]:
    mine = conn.execute(sa.select(images.c.id, images.c.uri).where(images.c.source == source)
                        .order_by(images.c.id)).all()
    gone = [image_id for image_id, uri in mine if uri not in uris]
    return image_rows(conn, image_ids=gone, lock=lock) if gone else []


def _unsourced(conn: sa.Connection, root: Path, uris: Collection[str]) -> int:
    """Images without a source under ``root`` that the dataset does not list: left alone."""
    prefix = os.path.join(str(root), "")  # "/data/a/" never matches "/data/ab/..."
    under = conn.execute(sa.select(images.c.uri).where(images.c.source.is_(None),
                                                       sa.func.starts_with(images.c.uri, prefix))).scalars()
    return sum(1 for uri in under if uri not in uris)


def _unlisted_products(conn: sa.Connection, doomed_images: list[dict[str, Any]], skus: Collection[str],
                       lock: bool) -> list[dict[str, Any]]:
    """The products of ``doomed_images`` not in ``skus`` whose every image is among them."""
    doomed: dict[int, int] = {}
    for row in doomed_images:
        if row["product_id"] is not None and row["sku"] not in skus:
            doomed[row["product_id"]] = doomed.get(row["product_id"], 0) + 1
    if not doomed:
        return []
    totals = dict(conn.execute(sa.select(images.c.product_id, sa.func.count())
                               .where(any_of(images.c.product_id, doomed, sa.BigInteger))
                               .group_by(images.c.product_id)).all())
    owned = [product_id for product_id, count in doomed.items() if totals.get(product_id) == count]
    return product_rows(conn, any_of(products.c.id, owned, sa.BigInteger), lock=lock) if owned else []


def sync_catalogue(db: Database, source: str, root: Path, uris: Collection[str], skus: Collection[str], *,
                   dry_run: bool = False, only: Removal | None = None) -> Removal:
    """Remove (in one transaction) the images of ``source`` whose path is not in ``uris`` and
    the products not in ``skus`` left with no image (see the module docstring); images without
    a source under ``root`` are counted, never removed.

    ``dry_run`` changes nothing and returns what would go. ``only`` (a dry run's answer, as an
    operator confirmed it) limits the removal to what it listed, so that what a concurrent
    ingest added meanwhile is not removed unseen. An empty listing is refused: it would remove
    everything the dataset stored, which ``manet products delete`` does explicitly.
    """
    if not uris:
        raise ManetError(f"the dataset lists no image; refusing to sync (it would remove every image it stored, "
                         f"{source}); delete products explicitly with: manet products delete SKU...")
    with db.begin() as conn:
        doomed_images = _unlisted_images(conn, source, uris, lock=not dry_run)
        if only is not None:  # images first: a product goes only if all its images do
            allowed = {row["id"] for row in only.images}
            doomed_images = [row for row in doomed_images if row["id"] in allowed]
        doomed_products = _unlisted_products(conn, doomed_images, skus, lock=not dry_run)
        if only is not None:
            allowed = {row["id"] for row in only.products}
            doomed_products = [row for row in doomed_products if row["id"] in allowed]
        unsourced = _unsourced(conn, root, uris)
        if not dry_run:
            remove_rows(conn, doomed_products, doomed_images, "sync")
    return Removal(doomed_products, doomed_images, [], dry_run, unsourced=unsourced, root=str(root))
