"""`manet demo`: synthetic catalogue -> ingest -> extract (MAC and SR-MAC) -> index -> MAP@7."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from manet.api import Retriever
from manet.config import DEFAULT_BACKBONE
from manet.errors import ManetError, WeightsError

DEMO_POOLINGS = ("mac", "rmac", "srmac")
#: Column of the trained MANet + SR-MAC pipeline.
MANET_COLUMN = "manet+srmac"
#: TF-IDF categories mined from the generated product titles.
DEMO_CATEGORIES = 10


@dataclass
class DemoResult:
    weights: str
    backbone: str
    image_size: int
    products: int
    images: int
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    examples: list[dict[str, Any]] = field(default_factory=list)
    example_model: str = ""
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"weights": self.weights, "backbone": self.backbone, "image_size": self.image_size,
                "products": self.products, "images": self.images, "metrics": self.metrics,
                "examples": self.examples, "example_model": self.example_model, "seconds": round(self.seconds, 1)}


def check_weights(retriever: Retriever, backbone: str, weights: str) -> None:
    """Fail before any work when ``--weights imagenet`` cannot be had offline for ``backbone``:
    random weights are an explicit choice (``--weights none``), never a silent fallback."""
    plugin = retriever.registry.create("backbone", backbone)
    if weights == "imagenet" and not plugin.imagenet_weights_available():
        raise WeightsError(
            f"ImageNet weights for {backbone} are not installed or cached; use the default backbone "
            f"{DEFAULT_BACKBONE} (its weights install with manet), or --weights none for random weights"
        )


def _train_demo_manet(retriever: Retriever, name: str, backbone: str, weights: str, image_size: int,
                      epochs: int, seed: int, say: Callable[[str], None]) -> None:
    """Mine categories from the product texts (the paper's first step, shown and stored), then
    fine-tune MANet to tell the catalogue's products apart."""
    from manet.catalog.categories import mine_categories
    from manet.catalog.trainset import build_training_set
    from manet.train.loop import TrainConfig

    categories = mine_categories(retriever.db, top=DEMO_CATEGORIES)
    say("mined categories: " + ", ".join(c["name"] for c in categories))
    # Product labels over every product: each demo product has its own photos and telling them
    # apart is the retrieval task; ten mined categories cover only some of the products, and
    # learning them made the network confuse products of one category (val MAP@7 fell from
    # 0.18 to 0.13 over 9 epochs from ImageNet weights). The manifest's category column
    # (the pack shape) spans every product, so it only balances the sample.
    summary = build_training_set(retriever.db, per_category=200, val_fraction=0.2, seed=seed, source="manual")
    say(f"training set: {summary['train']} train / {summary['val']} val images of every product; "
        f"labels: products (manet train --labels sku)")
    # Random weights are not worth fine-tuning on a hundred images: keep them, train the
    # attention branch and the head only. Pretrained weights learn at the head's rate (the
    # default): with 6 epochs, MANet + SR-MAC reached MAP@7 0.436 at backbone rate x0.1, 0.490
    # at x0.5 and 0.619 at x1 (50 products, 160 px).
    cfg = TrainConfig(name=name, backbone=backbone, weights=weights, image_size=image_size, epochs=epochs,
                      batch_size=16, seed=seed, labels="sku",
                      **({"backbone_lr_scale": 0.0} if weights == "none" else {}))
    started = time.perf_counter()
    retriever.train(cfg, restart=True, say=say)  # the demo's own run starts over
    say(f"trained {name} in {time.perf_counter() - started:.0f} s")


def _create_baselines(retriever: Retriever, backbone: str, weights: str, image_size: int) -> dict[str, str]:
    """A fresh model per baseline pooling; returns {column: model name}."""
    names = {}
    for pooling in DEMO_POOLINGS:
        names[pooling] = f"demo-{backbone}-{pooling}"
        retriever.delete_model(names[pooling])  # a re-run on the same database starts over
        retriever.create_model(names[pooling], backbone=backbone, weights=weights, image_size=image_size,
                               pooling=pooling)
    return names


def _extract_index_evaluate(retriever: Retriever, name: str, say: Callable[[str], None]) -> dict[str, Any]:
    """Extract model ``name``, build its index and return its figures on the val queries."""
    extracted = retriever.extract(name)
    index = retriever.build_index(name)
    metrics = retriever.evaluate(name, split="val").as_dict()
    say(f"{name}: {extracted.extracted} descriptors at {extracted.images_per_second:.1f} img/s "
        f"on {extracted.device}, HNSW index in {index.seconds:.2f} s")
    return metrics


def _examples(retriever: Retriever, model: str, count: int) -> list[dict[str, Any]]:
    """The top 7 of ``model`` for the first val photo of each of the first ``count`` products."""
    import sqlalchemy as sa

    with retriever.db.begin() as conn:
        queries = conn.execute(
            sa.text(
                "SELECT DISTINCT ON (p.id) i.id, p.sku FROM images i JOIN products p ON p.id = i.product_id "
                "WHERE i.domain = 'query' AND i.split = 'val' ORDER BY p.id, i.id LIMIT :n"
            ),
            {"n": count},
        ).all()
    return [{"query_image_id": query.id, "query_sku": query.sku,
             "hits": [hit.as_dict() for hit in retriever.search(model, image_id=query.id, k=7)]}
            for query in queries]


def run_demo(
    retriever: Retriever,
    data_dir: Path,
    *,
    products: int = 50,
    photos_per_product: int = 2,
    train_photos_per_product: int = 3,
    backbone: str = DEFAULT_BACKBONE,
    weights: str = "imagenet",
    image_size: int = 160,
    epochs: int = 6,
    seed: int = 0,
    examples: int = 3,
    say: Callable[[str], None] = print,
) -> DemoResult:
    """Baselines (MAC, R-MAC, SR-MAC) and a freshly trained MANet + SR-MAC on one catalogue."""
    from manet.tools.synthetic import generate_catalogue

    started = time.perf_counter()
    check_weights(retriever, backbone, weights)
    if weights == "none":
        say("note: random weights (--weights none): the scores show the pipeline, not the method")
    say(f"generating {products} synthetic products with {photos_per_product} shopper photos each "
        f"(+{train_photos_per_product} for training) ...")
    manifest = generate_catalogue(data_dir, products=products, photos_per_product=photos_per_product,
                                  train_photos_per_product=train_photos_per_product, seed=seed)
    report = retriever.ingest("manifest", manifest)
    say(f"ingested {report.images_added} images of {report.products_added} products")
    result = DemoResult(weights, backbone, image_size, report.products_added, report.images_added)
    names = _create_baselines(retriever, backbone, weights, image_size)
    if epochs > 0:
        try:
            _train_demo_manet(retriever, f"demo-{backbone}-manet", backbone, weights, image_size, epochs, seed, say)
            names[MANET_COLUMN] = f"demo-{backbone}-manet"
        except ManetError as exc:  # e.g. too few products to mine two categories
            say(f"note: no MANet column: {exc}")
    for column, name in names.items():
        result.metrics[column] = _extract_index_evaluate(retriever, name, say)
    result.example_model = names[MANET_COLUMN] if MANET_COLUMN in names else names["srmac"]
    result.examples = _examples(retriever, result.example_model, examples)
    result.seconds = time.perf_counter() - started
    return result
