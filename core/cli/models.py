"""``manet models``: named descriptor pipelines (create, list, whiten, augment, delete) and their aliases."""

from __future__ import annotations

import click

from manet import config
from manet.cli.common import (
    JSON_OPTION,
    YES_OPTION,
    State,
    _echo_json,
    _params,
    confirm_destructive,
    pass_state,
)
from manet.cli.options import IMAGE_SIZE, RERANK_PARAM
from manet.errors import DamagedModelError


@click.group()
def models() -> None:
    """Named descriptor pipelines."""


@models.command("create")
@click.argument("name")
@click.option("--from", "source", help="Derive from this trained MANet (no retraining).")
@click.option("--backbone", default=config.DEFAULT_BACKBONE, show_default=True)
@click.option("--weights", default="imagenet", show_default=True, help="imagenet | none | PATH to a checkpoint.")
@click.option("--image-size", default=None, type=IMAGE_SIZE,
              help="Input size in pixels [default: 224; with --from: the trained model's].")
@click.option("--pooling", default=None, help="Pooling plugin [default: srmac; with --from: the trained model's].")
@click.option("-p", "--pooling-param", "pooling_params", multiple=True, metavar="KEY=VALUE")
@click.option("--saliency", default=config.DEFAULT_SALIENCY_ESTIMATOR, show_default=True,
              help="Saliency estimator for poolings that use saliency (SR-MAC) without a trained branch.")
@click.option("--no-saliency", is_flag=True, help="With --from: switch the learned saliency branch off.")
@click.option("--no-text", is_flag=True, help="With --from: switch the text branch off.")
@JSON_OPTION
@pass_state
def models_create(state: State, name: str, source: str | None, backbone: str, weights: str, image_size: int | None,
                  pooling: str | None, pooling_params: tuple[str, ...], saliency: str, no_saliency: bool,
                  no_text: bool, as_json: bool) -> None:
    """Store a pipeline (backbone + weights + input size + pooling + L2) as model NAME."""
    if source is not None:
        record = state.retriever.derive_model(name, source, pooling=pooling,
                                              pooling_params=_params(pooling_params) if pooling_params else None,
                                              learned_saliency=not no_saliency, text_mask=not no_text,
                                              image_size=image_size)
    else:
        if no_saliency or no_text:
            raise click.UsageError("--no-saliency/--no-text switch branches of a trained model: add --from TRAINED")
        record = state.retriever.create_model(
            name, backbone=backbone, weights=weights, image_size=image_size or 224, pooling=pooling or "srmac",
            pooling_params=_params(pooling_params), saliency=saliency,
        )
    if as_json:
        _echo_json(record.as_dict())
    else:
        c = record.config
        click.echo(f"model '{record.name}' created: {c.backbone} ({'trained' if c.manet else c.weights}) "
                   f"{c.image_size}px {c.pooling}, {record.dim} dims")


@models.command("list")
@JSON_OPTION
@pass_state
def models_list(state: State, as_json: bool) -> None:
    """List models with their descriptor counts."""
    rows = state.retriever.models()
    if as_json:
        _echo_json(rows)
        return
    for row in rows:
        c = row["config"]
        aliases = f"  (alias: {', '.join(row['aliases'])})" if row.get("aliases") else ""
        click.echo(f"{row['name']:<24} {c['backbone']:<10} {c['weights']:<9} {c['image_size']:>4}px "
                   f"{c['pooling']:<7} {row['dim']:>5} dims {row['descriptors']:>8} descriptors{aliases}")


@models.command("alias")
@click.argument("alias")
@click.argument("model")
@JSON_OPTION
@pass_state
def models_alias(state: State, alias: str, model: str, as_json: bool) -> None:
    """Point ALIAS (e.g. production) at MODEL, or re-point it, in one transaction.

    Every command, manet serve and the SQL functions accept ALIAS where they take a model name;
    each search resolves it once, so a search runs wholly on the old model or on the new one.
    Extract and index the new model before re-pointing.
    """
    result = state.retriever.alias_model(alias, model)
    if as_json:
        _echo_json(result)
    elif result["previous"] in (None, result["model"]):
        click.echo(f"alias '{alias}' -> model '{result['model']}'")
    else:
        click.echo(f"alias '{alias}' -> model '{result['model']}' (was '{result['previous']}')")


@models.command("unalias")
@click.argument("alias")
@JSON_OPTION
@pass_state
def models_unalias(state: State, alias: str, as_json: bool) -> None:
    """Remove ALIAS (the model it points at stays)."""
    result = state.retriever.unalias_model(alias)
    if as_json:
        _echo_json(result)
    else:
        click.echo(f"alias '{alias}' removed (it pointed at model '{result['model']}')")


@models.command("aliases")
@JSON_OPTION
@pass_state
def models_aliases(state: State, as_json: bool) -> None:
    """List aliases and the models they point at."""
    rows = state.retriever.aliases()
    if as_json:
        _echo_json(rows)
        return
    for row in rows:
        click.echo(f"{row['alias']:<24} -> {row['model']:<24} since {row['updated_at']}")


@models.command("whiten")
@click.argument("base")
@click.option("--dims", required=True, type=click.IntRange(min=1), help="Output dimensions (fewer than the catalogue's images).")
@click.option("--name", required=True, help="Name of the new, whitened model.")
@click.option("--max-rows", default=config.DEFAULT_WHITEN_ROWS, show_default=True, type=click.IntRange(min=2),
              help="Catalogue descriptors to fit on (a uniform sample above this).")
@JSON_OPTION
@pass_state
def models_whiten(state: State, base: str, dims: int, name: str, max_rows: int, as_json: bool) -> None:
    """Model NAME = BASE + PCA-whitening to --dims learned on BASE's catalogue (no re-extraction)."""
    record = state.retriever.whiten_model(name, base, dims, max_rows=max_rows)
    if as_json:
        _echo_json(record.as_dict())
    else:
        click.echo(f"model '{record.name}' created: {base} whitened to {record.dim} dims "
                   f"(fitted on {record.metrics['whitening']['fitted_rows']} catalogue descriptors)")


@models.command("augment")
@click.argument("base")
@click.option("--name", required=True, help="Name of the new model with the augmented catalogue.")
@click.option("--rerank", "rerank", default="dba", show_default=True, help="Catalogue augmenter (kind catalogue_augmenter).")
@click.option("-r", "--rerank-param", "rerank_params", multiple=True, metavar="KEY=VALUE",
              help="Catalogue augmenter parameter (repeatable), e.g. -r top_n=3 -r alpha=3.")
@JSON_OPTION
@pass_state
def models_augment(state: State, base: str, name: str, rerank: str, rerank_params: tuple[str, ...],
                   as_json: bool) -> None:
    """Model NAME = BASE with its catalogue descriptors augmented (DBA), for SQL search.

    Run it again after the catalogue changes: images extracted later are not augmented.
    """
    record = state.retriever.augment_model(name, base, rerank=rerank,
                                           rerank_params=_params(rerank_params, RERANK_PARAM))
    if as_json:
        _echo_json(record.as_dict())
    else:
        info = record.metrics["augmented"]
        click.echo(f"model '{record.name}' created: {base} with {info['rows']} catalogue descriptors augmented "
                   f"by {info['reranker']} {info['params']} in {info['seconds']:.2f} s")


@models.command("delete")
@click.argument("name")
@YES_OPTION
@pass_state
def models_delete(state: State, name: str, yes: bool) -> None:
    """Delete model NAME with its descriptors, index and evaluation runs."""
    try:
        state.retriever.model(name)  # a clear error for an unknown name
    except DamagedModelError:
        pass  # what its error message says to do
    confirm_destructive(yes, f"Delete model '{name}' and all its descriptors?")
    state.retriever.delete_model(name)
    click.echo(f"model '{name}' deleted")
