"""Synthetic product catalogue for the offline demo and tests.

Each product is a rendered pack (bottle, tube, box or jar) with its own colour scheme, label
layout, logo and a made-up brand word printed on it. The catalogue image shows the pack
centred on a plain light background; "shopper photos" put the same pack on a cluttered
background with random scale, rotation, perspective, occlusion, lighting and blur, so the
retrieval task is cross-domain like Perfect-500K, only smaller.

Everything is deterministic for a seed: all randomness comes from ``numpy.random.Generator``
objects seeded from ``(seed, purpose, indices)``; no global RNG state is touched.

The products' specs are drawn in :mod:`manet.tools.synthetic_specs`, their packs rendered in
:mod:`manet.tools.synthetic_packs` and photographed in :mod:`manet.tools.synthetic_photos`;
this module writes the catalogue and its manifest.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from manet.tools.synthetic_packs import Array, render_pack
from manet.tools.synthetic_photos import catalogue_image, clutter_background, shopper_photo
from manet.tools.synthetic_specs import SHAPES, PackSpec, make_specs

__all__ = [
    "MANIFEST_COLUMNS",
    "SHAPES",
    "PackSpec",
    "catalogue_image",
    "clutter_background",
    "generate_catalogue",
    "make_specs",
    "render_pack",
    "shopper_photo",
]

MANIFEST_COLUMNS = ("sku", "image", "title", "brand", "description", "category", "domain", "split")


def _save_jpeg(arr: Array, path: Path, quality: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format="JPEG", quality=quality)


def generate_catalogue(
    out_dir: Path, products: int = 50, photos_per_product: int = 2, size: int = 256, seed: int = 0,
    train_photos_per_product: int = 0,
) -> Path:
    """Write catalogue images, shopper photos and ``manifest.csv`` under ``out_dir``.

    One manifest row per image with columns ``MANIFEST_COLUMNS``; image paths are relative
    to the manifest's folder. Catalogue rows: ``domain=catalog``, empty split; photo rows:
    ``domain=query``, ``split=val``; ``train_photos_per_product`` more photos per product with
    ``split=train`` (training material, never evaluation queries). Returns the manifest path.
    """
    if products < 1 or photos_per_product < 0 or train_photos_per_product < 0 or size < 32:
        raise ValueError("need products >= 1, photos_per_product >= 0 and size >= 32")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, str]] = []
    for i, spec in enumerate(make_specs(products, seed)):
        # Independent streams per image: an image does not change when others are added.
        pack = render_pack(spec, size)
        common = {"sku": spec.sku, "title": spec.title, "brand": spec.brand,
                  "description": spec.description, "category": spec.shape}  # fmt: skip
        rel = f"catalog/{spec.sku}.jpg"
        _save_jpeg(catalogue_image(pack, np.random.default_rng([seed, 1, i])), out_dir / rel, 95)
        rows.append({**common, "image": rel, "domain": "catalog", "split": ""})
        for j in range(photos_per_product + train_photos_per_product):
            rng = np.random.default_rng([seed, 2, i, j])
            split = "val" if j < photos_per_product else "train"
            rel = f"{'query' if split == 'val' else 'train'}/{spec.sku}_{j}.jpg"
            _save_jpeg(shopper_photo(pack, rng), out_dir / rel, int(rng.integers(75, 93)))
            rows.append({**common, "image": rel, "domain": "query", "split": split})
    manifest = out_dir / "manifest.csv"
    with manifest.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return manifest
