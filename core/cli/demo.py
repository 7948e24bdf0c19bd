"""``manet demo``: a generated catalogue through index, search and MAP@7."""

from __future__ import annotations

from collections.abc import Callable

import click

from manet import config
from manet.cli.common import (
    JSON_OPTION,
    State,
    _echo_json,
    pass_state,
)
from manet.cli.options import IMAGE_SIZE, SEED


@click.command()
@click.option("--products", default=50, show_default=True, type=click.IntRange(min=2))
@click.option("--photos", "photos_per_product", default=2, show_default=True,
              help="Shopper photos per product used as queries.")
@click.option("--train-photos", "train_photos_per_product", default=3, show_default=True,
              help="Extra shopper photos per product for training.")
@click.option("--backbone", default=config.DEFAULT_BACKBONE, show_default=True)
@click.option("--weights", default="imagenet", show_default=True,
              help="imagenet (installed with manet for efficientnet-lite*) | none (random) | PATH.")
@click.option("--image-size", default=160, show_default=True, type=IMAGE_SIZE)
@click.option("--epochs", default=6, show_default=True, type=click.IntRange(min=0), help="MANet training epochs (0: no training).")
@click.option("--seed", default=0, show_default=True, type=SEED)
@JSON_OPTION
@pass_state
def demo(state: State, products: int, photos_per_product: int, train_photos_per_product: int, backbone: str,
         weights: str, image_size: int, epochs: int, seed: int, as_json: bool) -> None:
    """Synthetic catalogue -> train MANet -> index -> search -> MAP@7, offline.

    Compares MAC, R-MAC and SR-MAC on the backbone with MANet + SR-MAC trained on categories
    mined from the generated product texts.
    """
    from manet.api import Retriever
    from manet.safe_files import ReadLimits
    from manet.tools.demo import run_demo

    home = state.settings.home_dir
    url = state.admin.demo_database_url()
    say: Callable[[str], None] = (lambda _msg: None) if as_json else click.echo
    # The demo reads only the files it generates: under the default byte and time caps, as always.
    with Retriever(url, home=home, progress=state.progress, auto_upgrade=True, limits=ReadLimits(),
                   settings=state.settings) as retriever:
        result = run_demo(retriever, home / "demo-data" / f"seed-{seed}", products=products,
                          photos_per_product=photos_per_product, train_photos_per_product=train_photos_per_product,
                          backbone=backbone, weights=weights, image_size=image_size, epochs=epochs, seed=seed,
                          say=say)
    if as_json:
        _echo_json(result.as_dict())
        return
    click.echo("")
    click.echo(f"{'pipeline':<12} {'MAP@7':>7} {'mAP':>7} {'R@1':>7} {'R@5':>7} {'R@7':>7} {'queries':>8}")
    for column, m in result.metrics.items():
        click.echo(f"{column:<12} {m['map@7']:>7.4f} {m['map']:>7.4f} {m['recall@1']:>7.4f} "
                   f"{m['recall@5']:>7.4f} {m['recall@7']:>7.4f} {m['queries']:>8}")
    click.echo("(val photos as queries; MAP@7 normaliser min(|G|, 7); exact ranking over stored descriptors)")
    for example in result.examples:
        click.echo(f"\nquery image {example['query_image_id']} (product {example['query_sku']}), "
                   f"top-7 by {result.example_model}:")
        for hit in example["hits"]:
            mark = "*" if hit["sku"] == example["query_sku"] else " "
            click.echo(f"  {mark} {hit['rank']}. {hit['score']:.4f} {hit['sku']:<10} {hit['title']}")
    click.echo(f"\ndone in {result.seconds:.1f} s ({backbone}, weights {result.weights}, {image_size}px)")
