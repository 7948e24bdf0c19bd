"""Would a second look at the salient box help? The figures behind docs/RESULTS.md's "saliency
zoom" table.

For each model, every val photo and catalogue image is described whole, then cropped to the box
of the cells a saliency map marks (above the map's mean, median or 70th percentile, with a 10 %
margin, at least 30 % of each side) and described again. It prints MAP@7 (one relevant catalogue
image per photo) with both sides cropped, photos only, catalogue only, and whole + crop summed.
The boxes come from the learned saliency of ``--saliency-model`` (a trained MANet) or, with a
model without a learned branch such as an untrained SR-MAC pipeline, its spectral-residual
estimate; every descriptor comes from the models' own pipelines.

    python examples/saliency_zoom.py manet-lr1 plain-lr1-ramac --saliency-model manet-lr1
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import sqlalchemy as sa
import torch
from PIL import Image

from manet.api import Retriever
from manet.catalog.images import load_rgb

QUERY = sa.text("SELECT id, uri, product_id, domain FROM images WHERE status = 'ok' AND "
                "(domain = 'catalog' OR split = 'val') ORDER BY id")
BATCH = 32


def square(image: Image.Image, size: int, box: tuple[int, int, int, int] | None) -> torch.Tensor:
    """The (3, size, size) uint8 tensor of ``image`` (cropped to ``box``), squashed as extraction does."""
    image = (image.crop(box) if box else image).resize((size, size), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)


def describe(pipeline, images, size: int, boxes=None) -> np.ndarray:
    out = []
    with torch.inference_mode():
        for start in range(0, len(images), BATCH):
            chunk = images[start:start + BATCH]
            crops = boxes[start:start + BATCH] if boxes else [None] * len(chunk)
            out.append(pipeline(torch.stack([square(i, size, b) for i, b in zip(chunk, crops)])).numpy())
    return np.concatenate(out)


def saliency(pipeline, images, size: int) -> np.ndarray:
    out = []
    with torch.inference_mode():
        for start in range(0, len(images), BATCH):
            batch = torch.stack([square(i, size, None) for i in images[start:start + BATCH]])
            out.append(pipeline.attention_maps(batch)["saliency"][:, 0].numpy())
    return np.concatenate(out)


def box(cells: np.ndarray, image: Image.Image, quantile: float | None, margin: float = 0.1,
        least: float = 0.3) -> tuple[int, int, int, int] | None:
    """The image box around the cells above the threshold (None: no cell is)."""
    threshold = cells.mean() if quantile is None else np.quantile(cells, quantile)
    ys, xs = np.where(cells > threshold)
    if len(ys) == 0:
        return None
    (h, w), (width, height) = cells.shape, image.size
    sides = []
    for low, high in ((xs.min() / w, (xs.max() + 1) / w), (ys.min() / h, (ys.max() + 1) / h)):
        pad = margin * (high - low)
        low, high = max(0.0, low - pad), min(1.0, high + pad)
        if high - low < least:
            centre = (low + high) / 2
            low, high = max(0.0, centre - least / 2), min(1.0, centre + least / 2)
        sides.append((low, high))
    (x0, x1), (y0, y1) = sides
    return int(x0 * width), int(y0 * height), int(x1 * width), int(y1 * height)


def map_at_7(queries: np.ndarray, gallery: np.ndarray, query_products, gallery_products) -> float:
    top = np.argsort(-(queries @ gallery.T), axis=1)[:, :7]
    hits = gallery_products[top] == query_products[:, None]
    return float(np.mean([1.0 / (row.argmax() + 1) if row.any() else 0.0 for row in hits]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--saliency-model", required=True)
    args = parser.parse_args()
    with Retriever() as retriever:
        with retriever.db.begin() as conn:
            rows = conn.execute(QUERY).all()
        sides = {d: [r for r in rows if r.domain == d] for d in ("query", "catalog")}
        images = {d: [load_rgb(Path(r.uri.removeprefix("file://"))) for r in rs] for d, rs in sides.items()}
        products = {d: np.array([r.product_id for r in rs]) for d, rs in sides.items()}
        source = retriever.pipeline(args.saliency_model).eval()
        size = retriever.model(args.saliency_model).config.image_size
        maps = {d: saliency(source, images[d], size) for d in sides}
        for quantile in (None, 0.5, 0.7):
            boxes = {d: [box(m, i, quantile) for m, i in zip(maps[d], images[d])] for d in sides}
            for name in args.models:
                pipeline = retriever.pipeline(name).eval()
                px = retriever.model(name).config.image_size
                whole = {d: describe(pipeline, images[d], px) for d in sides}
                crop = {d: describe(pipeline, images[d], px, boxes[d]) for d in sides}

                def score(q, g):
                    return map_at_7(q, g, products["query"], products["catalog"])

                both = (crop["query"] + whole["query"], crop["catalog"] + whole["catalog"])
                both = tuple(x / np.linalg.norm(x, axis=1, keepdims=True) for x in both)
                print(f"threshold {'mean' if quantile is None else quantile} {name}: whole "
                      f"{score(whole['query'], whole['catalog']):.4f} cropped {score(crop['query'], crop['catalog']):.4f} "
                      f"photos {score(crop['query'], whole['catalog']):.4f} catalogue "
                      f"{score(whole['query'], crop['catalog']):.4f} summed {score(*both):.4f}", flush=True)


if __name__ == "__main__":
    main()
