"""How much of each image a model's attention maps mark: the figures behind docs/RESULTS.md's
"why MANet does not win".

For the first N catalogue images and N val photos (optionally only products whose SKU matches a
regular expression) it prints, per domain, the means over images of: the saliency map's mean and
standard deviation, the text mask's mean and the share of cells it marks above 0.5, and the share
of SR-MAC regions whose weight |R ∩ S| / |R| is 0. Everything comes from the model's own
descriptor pipeline (``DescriptorPipeline.attention_maps``), so it is what extraction uses.

    python examples/attention_coverage.py manet-lr1 --images 80 --sku '(Milk|Juice|ghurt|Cream)'
"""

from __future__ import annotations

import argparse
from pathlib import Path
from statistics import fmean

import sqlalchemy as sa
import torch

from manet.api import Retriever
from manet.catalog.images import read_image_tensor

QUERY = sa.text(
    "SELECT i.uri FROM images i JOIN products p ON p.id = i.product_id "
    "WHERE i.status = 'ok' AND i.domain = :domain AND (:domain = 'catalog' OR i.split = 'val') "
    "AND p.sku ~ :sku ORDER BY i.id LIMIT :n"
)


def coverage(maps: dict, index: int) -> dict[str, float]:
    """The figures of one image of a batch of ``attention_maps``."""
    row: dict[str, float] = {}
    if maps["saliency"] is not None:
        saliency = maps["saliency"][index].flatten()
        row |= {"saliency_mean": float(saliency.mean()), "saliency_std": float(saliency.std())}
    if maps["text_mask"] is not None:
        text = maps["text_mask"][index]
        row |= {"text_mean": float(text.mean()), "text_cells": float((text > 0.5).float().mean())}
    if maps["region_weights"] is not None:
        row["zero_weight_regions"] = float((maps["region_weights"][index] == 0).float().mean())
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--images", type=int, default=80, help="images per domain")
    parser.add_argument("--sku", default="", help="regular expression the product SKU must match")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    with Retriever() as retriever, torch.inference_mode():
        pipeline = retriever.pipeline(args.model)
        size = retriever.model(args.model).config.image_size
        for domain in ("catalog", "query"):
            with retriever.db.engine.connect() as conn:
                uris = conn.execute(QUERY, {"domain": domain, "sku": args.sku, "n": args.images}).scalars().all()
            rows = []
            for start in range(0, len(uris), args.batch_size):
                chunk = uris[start:start + args.batch_size]
                batch = torch.stack([read_image_tensor(Path(uri), size) for uri in chunk]).to(retriever.device)
                maps = pipeline.attention_maps(batch)
                rows += [coverage(maps, i) for i in range(len(chunk))]
            means = {key: round(fmean(row[key] for row in rows), 3) for key in rows[0]} if rows else {}
            print(f"{domain}: {len(rows)} images {means}")


if __name__ == "__main__":
    main()
