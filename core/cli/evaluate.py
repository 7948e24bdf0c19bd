"""``manet eval``: MAP@7 and friends, one model or a comparison table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
@click.option("--against", "against", metavar="MODEL",
              help="With --compare: each row's MAP@k minus MODEL's (one of the compared models) on the "
                   "queries both ranked, with a 95 % paired bootstrap interval over those queries.")
@click.option("--report", "report", type=click.Path(path_type=Path, dir_okay=False),
              help="Also write the stored run as a self-contained HTML page (per-query top k, misses first).")
@click.option("--report-limit", type=click.IntRange(min=0), default=None,
              help="Query rows in the --report page, worst AP@k first.  [default: 200]")
@JSON_OPTION
@pass_state
def eval_(state: State, model: str | None, compare: tuple[str, ...], more_models: tuple[str, ...],
          split: str | None, k: int, normaliser: str, rerank: str | None, rerank_params: tuple[str, ...],
          shortlist: int, against: str | None, report: Path | None, report_limit: int | None,
          as_json: bool) -> None:
    """MAP@k, mAP and recall@1/5/7 of queries with a known product against the catalogue.

    `manet eval --compare A B C` extracts what is missing and prints one table for all;
    `--against A` adds each row's difference from A with a paired bootstrap interval.
    """
    if report_limit is not None and report is None:
        raise click.UsageError("--report-limit sets the rows of a report page: add --report FILE")
    if report is not None:
        if compare:
            raise click.UsageError("--report shows one run: use --model NAME --report FILE for each model")
        from manet.evaluate.report import check_output_path

        check_output_path(report)  # a bad path fails before the evaluation runs
    if against is not None and not compare:
        raise click.UsageError("--against picks the reference row of a table: use --compare A B ... --against A")
    if compare:
        if rerank is not None:
            raise click.UsageError("--rerank evaluates one model: use --model NAME")
        names = [*compare, *more_models]
        if against is not None and against not in names:
            raise click.UsageError(f"--against {against} is not among the compared models; add it to --compare")
        results = state.retriever.compare(names, split=split, k=k, normaliser=normaliser)
        _echo_comparison(results, against, split, k, normaliser, as_json)
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


def _echo_comparison(results: list[Any], against: str | None, split: str | None, k: int, normaliser: str,
                     as_json: bool) -> None:
    """The table (or JSON) of ``manet eval --compare``, with ``--against``'s columns when given."""
    from manet.evaluate.run import paired_against

    reference = next((r for r in results if r.model == against), None)
    margins = [paired_against(reference, r) if reference is not None else None for r in results]
    if as_json:
        _echo_json([{"model": r.model, **r.as_dict(),
                     **({"against": {"model": against, **d._asdict()}} if d is not None else {})}
                    for r, d in zip(results, margins)])
        return
    extra = f" {f'Δ MAP@{k}':>8} {'95% interval':>18}" if reference is not None else ""
    click.echo(f"{'model':<28} {f'MAP@{k}':>7} {'mAP':>7} {'R@1':>7} {'R@5':>7} {'R@7':>7} {'queries':>8}{extra}")
    for r, d in zip(results, margins):
        m = r.metrics
        line = (f"{r.model:<28} {m[f'map@{k}']:>7.4f} {m['map']:>7.4f} {m['recall@1']:>7.4f} "
                f"{m['recall@5']:>7.4f} {m['recall@7']:>7.4f} {r.queries:>8}")
        if d is not None:
            line += f" {d.difference:>+8.4f} {f'[{d.low:+.4f}, {d.high:+.4f}]':>18}"
        click.echo(line)
    note = (f"; Δ: minus {against} on the queries both ranked, percentile bootstrap over queries, "
            f"not over training seeds" if reference is not None else "")
    click.echo(f"(split {split or 'all'}; MAP@{k} normaliser {normaliser}; exact ranking{note})")
