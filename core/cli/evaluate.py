"""``manet eval``: MAP@7 and friends, one model or a comparison table."""

from __future__ import annotations

from pathlib import Path

import click

from manet import config
from manet.cli.common import (
    JSON_OPTION,
    State,
    _echo_json,
    pass_state,
)
from manet.cli.options import _rerank_params, rerank_options


@click.command("eval")
@click.option("--model", "model", help="Model name.")
@click.option("--compare", "compare", multiple=True, metavar="MODEL",
              help="Evaluate several models on the same queries (repeat, or list after it).")
@click.argument("more_models", nargs=-1)
@click.option("--split", type=click.Choice(["train", "val", "test"]), help="Only queries of this split.")
@click.option("-k", "k", default=config.DEFAULT_K, show_default=True)
@click.option("--normaliser", type=click.Choice(["min", "hits"]), default="min", show_default=True,
              help="AP@k denominator: min(|G|,k) (challenge) or hits in the top k.")
@rerank_options("aqe, alpha-qe, dba", "Exact top-S re-ranked by --rerank (dba changes the whole catalogue instead).")
@click.option("--report", "report", type=click.Path(path_type=Path, dir_okay=False),
              help="Also write the stored run as a self-contained HTML page (per-query top k, misses first).")
@click.option("--report-limit", type=click.IntRange(min=0), default=None,
              help="Query rows in the --report page, worst AP@k first.  [default: 200]")
@JSON_OPTION
@pass_state
def eval_(state: State, model: str | None, compare: tuple[str, ...], more_models: tuple[str, ...],
          split: str | None, k: int, normaliser: str, rerank: str | None, rerank_params: tuple[str, ...],
          shortlist: int, report: Path | None, report_limit: int | None, as_json: bool) -> None:
    """MAP@k, mAP and recall@1/5/7 of queries with a known product against the catalogue.

    `manet eval --compare A B C` extracts what is missing and prints one table for all.
    """
    if report_limit is not None and report is None:
        raise click.UsageError("--report-limit sets the rows of a report page: add --report FILE")
    if report is not None:
        if compare:
            raise click.UsageError("--report shows one run: use --model NAME --report FILE for each model")
        from manet.evaluate.report import check_output_path

        check_output_path(report)  # a bad path fails before the evaluation runs
    if compare:
        if rerank is not None:
            raise click.UsageError("--rerank evaluates one model: use --model NAME")
        names = [*compare, *more_models]
        results = state.retriever.compare(names, split=split, k=k, normaliser=normaliser)
        if as_json:
            _echo_json([{"model": r.model, **r.as_dict()} for r in results])
            return
        click.echo(f"{'model':<28} {f'MAP@{k}':>7} {'mAP':>7} {'R@1':>7} {'R@5':>7} {'R@7':>7} {'queries':>8}")
        for r in results:
            m = r.metrics
            click.echo(f"{r.model:<28} {m[f'map@{k}']:>7.4f} {m['map']:>7.4f} {m['recall@1']:>7.4f} "
                       f"{m['recall@5']:>7.4f} {m['recall@7']:>7.4f} {r.queries:>8}")
        click.echo(f"(split {split or 'all'}; MAP@{k} normaliser {normaliser}; exact ranking)")
        return
    if model is None or more_models:
        raise click.UsageError("give --model NAME, or --compare MODEL [MODEL ...]")
    result = state.retriever.evaluate(model, split=split, k=k, normaliser=normaliser, rerank=rerank,
                                      rerank_params=_rerank_params(rerank, rerank_params), shortlist=shortlist)
    if report is not None:
        state.retriever.write_eval_page(result.run_id, report, limit=report_limit)
    if as_json:
        _echo_json(result.as_dict())
        if report is not None:
            click.echo(f"wrote {report}", err=True)
        return
    m = result.metrics
    click.echo(f"{model}: MAP@{k} {m[f'map@{k}']:.4f} (normaliser {normaliser})  mAP {m['map']:.4f}  "
               f"R@1 {m['recall@1']:.4f}  R@5 {m['recall@5']:.4f}  R@7 {m['recall@7']:.4f}  "
               f"queries {result.queries}")
    if result.reranker is not None:
        t = result.timing
        click.echo(f"re-ranked by {result.reranker['name']} {result.reranker['params']} (shortlist "
                   f"{shortlist}): {t['rerank_ms_per_query']:.3f} ms/query on top of {t['rank_ms_per_query']:.3f} "
                   f"ms/query exact ranking; catalogue augmentation {t['augment_s']:.3f} s")
    if report is not None:
        click.echo(f"wrote {report}")
