"""Validation after each epoch: accuracy on the val images, and MAP@7 of the val images
against the train images with the descriptors extraction would store (data-parallel: each
rank its shard, gathered)."""

from __future__ import annotations

from typing import Any

import numpy as np

from manet.store.database import Database
from manet.train.config import TrainConfig
from manet.train.data import Loaders, text_mask_of
from manet.train.optimizer import train_mode


def evaluation_pass(model: Any, pipeline: Any, loader: Any, device: str, cfg: TrainConfig,
              classify: bool = True, precision: str = "auto") -> tuple[int, list[Any]]:
    """Correct predictions (when ``classify``) and the descriptors ``manet extract`` would
    store (one CPU tensor per batch) of an evaluation pass over ``loader`` at ``precision``;
    ``pipeline`` is extraction's pipeline around ``model``."""
    from manet.extract.forward import forward_pass

    model.eval()
    correct = 0
    descriptors = []
    with forward_pass(device, precision):
        for images, masks, target in loader:
            images, masks = images.to(device), masks.to(device)
            text = text_mask_of(masks, cfg.text)  # the detector's mask, cached
            if classify:
                out = model(pipeline.backbone.normalise(images.float() / 255), text)
                correct += int((out["logits"].argmax(1) == target.to(device)).sum())
            descriptors.append(pipeline(images, text_mask=text).float().cpu())
    train_mode(model, cfg)
    return correct, descriptors


def retrieval_map7(val_desc: Any, val_products: np.ndarray, gallery_desc: Any, gallery_products: np.ndarray) -> float:
    """MAP@7 of val images against train images, relevant = same product."""
    from manet.evaluate.metrics import evaluate_rankings, ranked_relevance

    counts = {p: c for p, c in zip(*np.unique(gallery_products, return_counts=True), strict=True)}
    keep = np.array([counts.get(p, 0) > 0 for p in val_products])
    if not keep.any():
        return 0.0
    similarity = (val_desc[keep] @ gallery_desc.T).numpy()
    relevance = ranked_relevance(similarity, val_products[keep], gallery_products)
    n_relevant = np.array([counts[p] for p in val_products[keep]])
    return float(evaluate_rankings(relevance, n_relevant, k=7)["map@7"])


def _products_of(db: Database, image_ids: list[int]) -> dict[int, int]:
    import sqlalchemy as sa

    with db.begin() as conn:
        rows = conn.execute(sa.text("SELECT id, product_id FROM images WHERE id = ANY(:ids)"), {"ids": image_ids})
        return {row.id: row.product_id if row.product_id is not None else -row.id for row in rows}


def validation_products(db: Database, items_train: list[tuple[int, str, int]], items_val: list[tuple[int, str, int]],
                        world_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The products of the gallery (train) and query (val) images in gathered order (an image
    without a product is its own)."""
    from manet.train.distributed import gathered_order

    product_of = _products_of(db, [i for i, _, _ in items_train + items_val])
    gallery_products = np.array([product_of[i] for i, _, _ in gathered_order(items_train, world_size)])
    val_products = np.array([product_of[i] for i, _, _ in gathered_order(items_val, world_size)])
    return gallery_products, val_products


def validate(group: Any, net: Any, pipeline: Any, loaders: Loaders, device: str, cfg: TrainConfig,
             products: tuple[np.ndarray, np.ndarray], val_images: int, precision: str = "auto") -> tuple[float, float]:
    """(val accuracy, val MAP@7) over every rank's shard, forward passes at ``precision`` (as
    extraction's); ``products`` from :func:`validation_products`."""
    import torch

    gallery_products, val_products = products
    val_correct, val_desc = evaluation_pass(net, pipeline, loaders.eval_val, device, cfg, precision=precision)
    _, gallery_desc = evaluation_pass(net, pipeline, loaders.eval_train, device, cfg, classify=False,
                                      precision=precision)
    parts = group.all_gather((val_correct, val_desc, gallery_desc))
    return (sum(p[0] for p in parts) / val_images,
            retrieval_map7(torch.cat([t for p in parts for t in p[1]]), val_products,
                           torch.cat([t for p in parts for t in p[2]]), gallery_products))
