"""`manet demo`: synthetic catalogue -> ingest -> extract (MAC and SR-MAC) -> index -> MAP@7."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from manet.api import Retriever

DEMO_POOLINGS = ("mac", "srmac")


@dataclass
class DemoResult:
    weights: str
    backbone: str
    image_size: int
    products: int
    images: int
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    examples: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"weights": self.weights, "backbone": self.backbone, "image_size": self.image_size,
                "products": self.products, "images": self.images, "metrics": self.metrics,
                "examples": self.examples, "seconds": round(self.seconds, 1)}


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


def run_demo(
    retriever: Retriever,
    data_dir: Path,
    *,
    products: int = 50,
    photos_per_product: int = 2,
    backbone: str = "resnet50",
    weights: str = "auto",
    image_size: int = 224,
    seed: int = 0,
    examples: int = 3,
    say: Callable[[str], None] = print,
) -> DemoResult:
    from manet.synthetic import generate_catalogue

    started = time.perf_counter()
    weights, notice = choose_weights(retriever, backbone, weights)
    if notice:
        say(f"note: {notice}")
    say(f"generating {products} synthetic products with {photos_per_product} shopper photos each ...")
    manifest = generate_catalogue(data_dir, products=products, photos_per_product=photos_per_product, seed=seed)
    report = retriever.ingest("manifest", manifest)
    say(f"ingested {report.images_added} images of {report.products_added} products")
    result = DemoResult(weights, backbone, image_size, report.products_added, report.images_added)
    for pooling in DEMO_POOLINGS:
        name = f"demo-{backbone}-{pooling}"
        retriever.delete_model(name)  # a re-run on the same database starts over
        retriever.create_model(name, backbone=backbone, weights=weights, image_size=image_size, pooling=pooling)
        extracted = retriever.extract(name)
        index = retriever.build_index(name)
        scores = retriever.evaluate(name)
        say(f"{name}: {extracted.extracted} descriptors at {extracted.images_per_second:.1f} img/s "
            f"on {extracted.device}, HNSW index in {index.seconds:.2f} s")
        result.metrics[pooling] = scores.as_dict()
    import sqlalchemy as sa

    with retriever.db.begin() as conn:
        queries = conn.execute(
            sa.text(
                "SELECT DISTINCT ON (p.id) i.id, p.sku FROM images i JOIN products p ON p.id = i.product_id "
                "WHERE i.domain = 'query' ORDER BY p.id, i.id LIMIT :n"
            ),
            {"n": examples},
        ).all()
    best = f"demo-{backbone}-{DEMO_POOLINGS[-1]}"
    for query in queries:
        hits = retriever.search(best, image_id=query.id, k=7)
        result.examples.append({"query_image_id": query.id, "query_sku": query.sku,
                                "hits": [hit.as_dict() for hit in hits]})
    result.seconds = time.perf_counter() - started
    return result
