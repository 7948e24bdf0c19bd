"""`manet demo`: synthetic catalogue -> ingest -> extract (MAC and SR-MAC) -> index -> MAP@7."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from manet.api import Retriever
from manet.errors import ManetError

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


def choose_weights(retriever: Retriever, backbone: str, requested: str) -> tuple[str, str | None]:
    """``auto`` means ImageNet weights when cached, else random weights (with a notice)."""
    if requested != "auto":
        return requested, None
    plugin = retriever.registry.create("backbone", backbone)
    cached = getattr(plugin, "imagenet_weights_cached", lambda: False)()
    if cached:
        return "imagenet", None
    return "none", (
        f"ImageNet weights for {backbone} are not cached; using random weights, so the scores "
        f"show the pipeline, not the method (run with --weights imagenet once online)"
    )


def _train_demo_manet(retriever: Retriever, name: str, backbone: str, weights: str, image_size: int,
                      epochs: int, seed: int, say: Callable[[str], None]) -> None:
    """Mine categories from the product texts, sample a training set, train a small MANet."""
    from manet.categories import mine_categories
    from manet.train import TrainConfig
    from manet.trainset import build_training_set

    categories = mine_categories(retriever.db, top=DEMO_CATEGORIES)
    say("mined categories: " + ", ".join(c["name"] for c in categories))
    source = "tfidf"
    if len(categories) < 2:  # a small catalogue: use the manifest's own category column
        say("fewer than 2 mined categories; training on the catalogue's category column instead")
        source = "manual"
    summary = build_training_set(retriever.db, per_category=200, val_fraction=0.2, seed=seed, source=source)
    say(f"training set: {summary['train']} train / {summary['val']} val images in {summary['categories']} categories")
    # Random weights are not worth fine-tuning on a hundred images: keep them, train the
    # attention branch and the head only. Pre-trained weights are fine-tuned gently.
    cfg = TrainConfig(name=name, backbone=backbone, weights=weights, image_size=image_size, epochs=epochs,
                      batch_size=16, seed=seed, backbone_lr_scale=0.0 if weights == "none" else 0.1)
    started = time.perf_counter()
    retriever.train(cfg, restart=True, say=say)  # the demo's own run starts over
    say(f"trained {name} in {time.perf_counter() - started:.0f} s")


def run_demo(
    retriever: Retriever,
    data_dir: Path,
    *,
    products: int = 50,
    photos_per_product: int = 2,
    train_photos_per_product: int = 2,
    backbone: str = "resnet18",
    weights: str = "auto",
    image_size: int = 160,
    epochs: int = 12,
    seed: int = 0,
    examples: int = 3,
    say: Callable[[str], None] = print,
) -> DemoResult:
    """Baselines (MAC, R-MAC, SR-MAC) and a freshly trained MANet + SR-MAC on one catalogue."""
    from manet.synthetic import generate_catalogue

    started = time.perf_counter()
    weights, notice = choose_weights(retriever, backbone, weights)
    if notice:
        say(f"note: {notice}")
    say(f"generating {products} synthetic products with {photos_per_product} shopper photos each "
        f"(+{train_photos_per_product} for training) ...")
    manifest = generate_catalogue(data_dir, products=products, photos_per_product=photos_per_product,
                                  train_photos_per_product=train_photos_per_product, seed=seed)
    report = retriever.ingest("manifest", manifest)
    say(f"ingested {report.images_added} images of {report.products_added} products")
    result = DemoResult(weights, backbone, image_size, report.products_added, report.images_added)
    names = {}
    for pooling in DEMO_POOLINGS:
        names[pooling] = f"demo-{backbone}-{pooling}"
        retriever.delete_model(names[pooling])  # a re-run on the same database starts over
        retriever.create_model(names[pooling], backbone=backbone, weights=weights, image_size=image_size,
                               pooling=pooling)
    if epochs > 0:
        try:
            _train_demo_manet(retriever, f"demo-{backbone}-manet", backbone, weights, image_size, epochs, seed, say)
            names[MANET_COLUMN] = f"demo-{backbone}-manet"
        except ManetError as exc:  # e.g. too few products to mine two categories
            say(f"note: no MANet column: {exc}")
    for column, name in names.items():
        extracted = retriever.extract(name)
        index = retriever.build_index(name)
        result.metrics[column] = retriever.evaluate(name, split="val").as_dict()
        say(f"{name}: {extracted.extracted} descriptors at {extracted.images_per_second:.1f} img/s "
            f"on {extracted.device}, HNSW index in {index.seconds:.2f} s")
    import sqlalchemy as sa

    with retriever.db.begin() as conn:
        queries = conn.execute(
            sa.text(
                "SELECT DISTINCT ON (p.id) i.id, p.sku FROM images i JOIN products p ON p.id = i.product_id "
                "WHERE i.domain = 'query' AND i.split = 'val' ORDER BY p.id, i.id LIMIT :n"
            ),
            {"n": examples},
        ).all()
    best = names[MANET_COLUMN] if MANET_COLUMN in names else names["srmac"]
    result.example_model = best
    for query in queries:
        hits = retriever.search(best, image_id=query.id, k=7)
        result.examples.append({"query_image_id": query.id, "query_sku": query.sku,
                                "hits": [hit.as_dict() for hit in hits]})
    result.seconds = time.perf_counter() - started
    return result
