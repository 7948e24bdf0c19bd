"""``manet index`` and ``manet search``."""

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
from manet.cli.options import HNSW_EF_CONSTRUCTION, HNSW_M, _rerank_params, rerank_options


@click.group()
def index() -> None:
    """Vector indexes."""


@index.command("build")
@click.option("--model", "model", required=True)
@click.option("--m", "m", default=config.DEFAULT_HNSW_M, show_default=True, type=HNSW_M, help="HNSW graph degree.")
@click.option("--ef-construction", default=config.DEFAULT_EF_CONSTRUCTION, show_default=True, type=HNSW_EF_CONSTRUCTION)
@click.option("--quantize", type=click.Choice(["none", "halfvec", "binary"]),
              help="Index vector (<= 2,000 dims), halfvec (<= 4,000) or binary (Hamming + exact re-rank); "
                   "default: as last built, else by dimension.")
@click.option("--rerank-factor", type=click.IntRange(1, 100),
              help="Candidates per result re-ranked exactly (halfvec default 4, binary 10).")
@click.option("--maintenance-work-mem", help="Build memory, e.g. 2GB (default: estimated from the rows, <= 4GB).")
@click.option("--by-category", is_flag=True,
              help=f"Also give every category with more than {config.DEFAULT_CATEGORY_INDEX_MIN_ROWS} catalogue "
                   f"images its own HNSW index, which filtered searches of it then walk.")
@click.option("--category", "categories", multiple=True, metavar="NAME",
              help="Also give this category its own HNSW index (repeatable).")
@click.option("--categories-only", is_flag=True,
              help="Build only the category indexes (--by-category / --category), keeping the model's index.")
@click.option("--category-m", default=config.DEFAULT_CATEGORY_HNSW_M, show_default=True, type=HNSW_M,
              help="HNSW graph degree of the category indexes (denser than the model's: recall 0.99 at less ef_search).")
@click.option("--category-ef-construction", default=config.DEFAULT_CATEGORY_EF_CONSTRUCTION, show_default=True,
              type=HNSW_EF_CONSTRUCTION)
@JSON_OPTION
@pass_state
def index_build(state: State, model: str, m: int, ef_construction: int, quantize: str | None, rerank_factor: int | None,
                maintenance_work_mem: str | None, by_category: bool, categories: tuple[str, ...],
                categories_only: bool, category_m: int, category_ef_construction: int, as_json: bool) -> None:
    """Build the HNSW (inner product) index of a model's catalogue descriptors."""
    if categories_only and not (by_category or categories):
        raise click.UsageError("--categories-only needs --by-category or --category NAME")
    report = None if categories_only else state.retriever.build_index(
        model, m=m, ef_construction=ef_construction, quantize=quantize, rerank_factor=rerank_factor,
        maintenance_work_mem=maintenance_work_mem)
    reports = state.retriever.build_category_indexes(
        model, categories=list(categories) or None, m=category_m, ef_construction=category_ef_construction,
        maintenance_work_mem=maintenance_work_mem) if by_category or categories else []
    if as_json:
        _echo_json({**(report.as_dict() if report else {}), "category_indexes": [r.as_dict() for r in reports]})
        return
    if report is not None:
        click.echo(f"index {report.name}: {report.rows} rows in {report.seconds:.2f} s "
                   f"({report.quantize}, rerank factor {report.rerank_factor}, m={report.m}, "
                   f"ef_construction={report.ef_construction}, maintenance_work_mem {report.maintenance_work_mem}, "
                   f"parallel workers {report.parallel_workers}: {report.parallel_reason})")
    for r in reports:
        click.echo(f"index {r.name} (category '{r.category}'): {r.rows} rows in {r.seconds:.2f} s "
                   f"({r.quantize}, rerank factor {r.rerank_factor}, m={r.m}, ef_construction={r.ef_construction})")
    if (by_category or categories) and not reports:
        click.echo(f"no category has more than {config.DEFAULT_CATEGORY_INDEX_MIN_ROWS} catalogue images of this "
                   f"model: filtered searches rank them exactly, no category index is needed")


@index.command("status")
@click.option("--model", "model", help="One model (a name or an alias); default: every model.")
@JSON_OPTION
@pass_state
def index_status(state: State, model: str | None, as_json: bool) -> None:
    """Each model's index: rows, size, dead tuples of descriptors, last build, leftovers."""
    rows = state.retriever.index_status(model)
    if as_json:
        _echo_json(rows)
        return
    for row in rows:
        if not row["exists"]:
            click.echo(f"{row['model']:<24} {row['rows']:>9} rows  no index ({row['hint']})")
            continue
        layout = row["layout"]
        click.echo(f"{row['model']:<24} {row['rows']:>9} rows  index {row['index']} {row['size']:>8} "
                   f"{'valid' if row['valid'] else 'INVALID'}, {layout.get('quantize', '?')} m={layout.get('m', '?')}, "
                   f"built {row['built_at'] or 'before built times were recorded'}; descriptors: "
                   f"{row['dead_tuples']} dead of {row['live_tuples']} live tuples"
                   + (f"  -- {row['hint']}" if row["hint"] else ""))
        for c in row.get("category_indexes", []):
            click.echo(f"{'':<24} {c['rows']:>9} rows  index {c['name']} {c['size_bytes'] / 2**20:>6.1f} MiB "
                       f"{'valid' if c['valid'] else 'INVALID'}, category "
                       + (f"'{c['category']}'" if c["category"] is not None
                          else f"{c['category_id']} (deleted; drop it with: manet index build --model "
                               f"{row['model']} --by-category --categories-only)"))


@index.command("rebuild")
@click.argument("model")
@click.option("--concurrently/--blocking", default=True, show_default=True,
              help="REINDEX CONCURRENTLY: searches and writes keep running (slower); --blocking locks the "
                   "index out until it is rebuilt.")
@click.option("--maintenance-work-mem", help="Build memory, e.g. 2GB (default: estimated from the rows, <= 4GB).")
@JSON_OPTION
@pass_state
def index_rebuild(state: State, model: str, concurrently: bool, maintenance_work_mem: str | None,
                  as_json: bool) -> None:
    """Rebuild MODEL's HNSW index with its options (after many deletions or updates)."""
    report = state.retriever.rebuild_index(model, concurrently=concurrently,
                                           maintenance_work_mem=maintenance_work_mem)
    if as_json:
        _echo_json(report)
    else:
        click.echo(f"index {report['index']}: {report['rows']} rows rebuilt "
                   f"{'concurrently ' if report['concurrently'] else ''}in {report['seconds']:.2f} s, "
                   f"{report['size_bytes_before'] / 2**20:.1f} MiB -> {report['size_bytes_after'] / 2**20:.1f} MiB"
                   + (f" (dropped leftovers {', '.join(report['dropped_leftovers'])})"
                      if report["dropped_leftovers"] else "")
                   + (f"; then its category indexes {', '.join(report['category_indexes'])}"
                      if report["category_indexes"] else ""))


@click.command()
@click.argument("image", required=False, type=click.Path(path_type=Path))
@click.option("--model", "model", required=True)
@click.option("--image-id", type=int, help="Search with a stored image instead of a file.")
@click.option("-k", "k", default=config.DEFAULT_K, show_default=True)
@click.option("--category")
@click.option("--brand")
@click.option("--ef-search", type=int,
              help=f"HNSW candidate list size for this query (default: the server's, 40; "
                   f"{config.DEFAULT_FILTERED_EF_SEARCH} with a filter).")
@click.option("--path", "search_path", type=click.Choice(["auto", "exact", "hnsw"]), default="auto",
              show_default=True,
              help=f"With a filter: auto ranks up to {config.DEFAULT_FILTER_EXACT_THRESHOLD} matching catalogue "
                   f"images exactly and uses HNSW above; exact or hnsw forces one.")
@click.option("--explain", is_flag=True,
              help="Also print the plan: exact or HNSW, how many images the filter matched, and EXPLAIN.")
@rerank_options("aqe, alpha-qe", "Candidates fetched for --rerank.")
@click.option("--html", "html", type=click.Path(path_type=Path, dir_okay=False),
              help="Also write the results as a self-contained HTML page (thumbnails embedded) to this file.")
@JSON_OPTION
@pass_state
def search(state: State, image: Path | None, model: str, image_id: int | None, k: int, category: str | None,
           brand: str | None, ef_search: int | None, search_path: str, explain: bool, rerank: str | None,
           rerank_params: tuple[str, ...], shortlist: int, html: Path | None, as_json: bool) -> None:
    """Top-k catalogue products for IMAGE (a file) or --image-id."""
    if (image is None) == (image_id is None):
        raise click.UsageError("give an IMAGE path or --image-id (one of them)")
    if explain:
        if rerank is not None or html is not None:
            raise click.UsageError("--explain shows the index search alone; drop --rerank and --html")
        _explain(state, image, model, image_id, k, category, brand, ef_search, search_path, as_json)
        return
    if html is not None:  # a bad path fails before the search runs
        from manet.evaluate.report import check_output_path

        check_output_path(html)
    params = _rerank_params(rerank, rerank_params)
    hits = state.retriever.search(model, image=image, image_id=image_id, k=k, category=category,
                                  brand=brand, ef_search=ef_search, rerank=rerank, rerank_params=params,
                                  shortlist=shortlist, path=search_path)
    if as_json:
        _echo_json([hit.as_dict() for hit in hits])
    else:
        _print_hits(hits)
    if html is not None:
        reranker = None if rerank is None else {"name": rerank, "params": params, "shortlist": shortlist}
        state.retriever.write_search_page(html, hits, model=model, k=k, image=image, image_id=image_id,
                                          filters={"category": category, "brand": brand}, reranker=reranker)
        click.echo(f"wrote {html}", err=as_json)
    if not hits:
        # An empty list says nothing about why; a misspelt filter is the usual cause.
        raise click.ClickException(_no_hits_reason(model, category, brand))


def _no_hits_reason(model: str, category: str | None, brand: str | None) -> str:
    filters = []
    if category is not None:
        filters.append(f"category {category!r}")
    if brand is not None:
        filters.append(f"brand {brand!r}")
    if filters:
        return (f"no catalogue image of model '{model}' matches {' and '.join(filters)}; check the spelling "
                f"(categories: manet categories list) or drop the filter")
    return f"model '{model}' has no catalogue descriptors to search; run: manet extract --model {model}"


def _print_hits(hits: list) -> None:
    for hit in hits:
        click.echo(f"{hit.rank:>2}. {hit.score:.4f}  image {hit.image_id:<7} {hit.sku or '-':<24} "
                   f"{hit.brand or '':<14} {hit.title or ''}")


def _explain(state: State, image: Path | None, model: str, image_id: int | None, k: int, category: str | None,
             brand: str | None, ef_search: int | None, search_path: str, as_json: bool) -> None:
    """``manet search --explain``: the hits, the planner's path and PostgreSQL's plan."""
    result = state.retriever.explain_search(model, image=image, image_id=image_id, k=k, category=category,
                                            brand=brand, ef_search=ef_search, path=search_path)
    if as_json:
        _echo_json({"plan": result.plan.as_dict(), "explain": result.explain,
                    "hits": [hit.as_dict() for hit in result.hits]})
        return
    _print_hits(result.hits)
    click.echo(result.plan.describe())
    for line in result.explain:
        click.echo(f"  {line}")
