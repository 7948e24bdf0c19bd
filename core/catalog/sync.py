"""Sync: remove from the catalogue what a dataset no longer lists.

The schema does not record which dataset an image came from, so a dataset's share of the
catalogue is told by place: the images whose file is under the dataset's root folder (the
folder given, or the manifest's folder) and the products all of whose images are there. What
of that share the dataset no longer lists goes: its images by path, its products by SKU. Images
elsewhere, and products with an image elsewhere or with no image at all, are never touched, so
two datasets in separate folders sync independently; a dataset in a sub-folder of another's
root is inside the other's share (sync the outer one with everything it owns listed).
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
    """The folder whose images a dataset at ``path`` owns: ``path`` itself if it is a folder,
    else the folder of the manifest (resolved, as the dataset plugins resolve it)."""
    path = Path(path).resolve()
    return path if path.is_dir() else path.parent


def _unlisted_images(conn: sa.Connection, prefix: str, uris: Collection[str], lock: bool) -> list[dict[str, Any]]:
    under = conn.execute(sa.select(images.c.id).where(sa.func.starts_with(images.c.uri, prefix))
                         .order_by(images.c.id)).scalars().all()
    rows = image_rows(conn, image_ids=under, lock=lock) if under else []
    return [row for row in rows if row["uri"] not in uris]


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


def sync_catalogue(db: Database, root: Path, uris: Collection[str], skus: Collection[str], *,
                   dry_run: bool = False, only: Removal | None = None) -> Removal:
    """Remove (in one transaction) the images under ``root`` whose path is not in ``uris`` and
    the products not in ``skus`` that have images only there (see the module docstring).

    ``dry_run`` changes nothing and returns what would go. ``only`` (a dry run's answer, as an
    operator confirmed it) limits the removal to what it listed, so that what a concurrent
    ingest added meanwhile is not removed unseen. An empty listing is refused: it would empty
    the whole folder's share, which ``manet products delete`` does explicitly.
    """
    if not uris:
        raise ManetError(f"the dataset lists no image; refusing to sync (it would remove every image under "
                         f"{root}); delete products explicitly with: manet products delete SKU...")
    prefix = os.path.join(str(root), "")  # "/data/a/" never matches "/data/ab/..."
    with db.begin() as conn:
        doomed_images = _unlisted_images(conn, prefix, uris, lock=not dry_run)
        if only is not None:  # images first: a product goes only if all its images do
            allowed = {row["id"] for row in only.images}
            doomed_images = [row for row in doomed_images if row["id"] in allowed]
        doomed_products = _unlisted_products(conn, doomed_images, skus, lock=not dry_run)
        if only is not None:
            allowed = {row["id"] for row in only.products}
            doomed_products = [row for row in doomed_products if row["id"] in allowed]
        if not dry_run:
            remove_rows(conn, doomed_products, doomed_images, "sync")
    return Removal(doomed_products, doomed_images, [], dry_run)
