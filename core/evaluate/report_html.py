"""The HTML of a search page and of an evaluation page (pure: data in, HTML out, apart from
reading the image files for the thumbnails).

A page is one file that works offline: inline CSS, no script, no external URL. Thumbnails are
base64 JPEG data URIs, each distinct image embedded once as a CSS class (an evaluation shows the
same catalogue images under many queries), so a page of 200 queries stays a few MB. Every text
value goes through :func:`html.escape`. An image that cannot be read shows a placeholder with
the reason.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from html import escape
from typing import Any

from manet.evaluate.report_items import EvalRun, Item, QueryRow, Result
from manet.evaluate.report_thumbnails import encode_thumbnails
from manet.safe_files import ReadLimits


# -- thumbnails ------------------------------------------------------------------------------
def _thumb_css(thumbs: Mapping[str, tuple[str | None, str | None]]) -> str:
    return "\n".join(f".{key}{{background-image:url(data:image/jpeg;base64,{data})}}"
                     for key, (data, _error) in thumbs.items() if data is not None)


def _thumb(item: Item, thumbs: Mapping[str, tuple[str | None, str | None]]) -> str:
    data, error = thumbs.get(item.key, (None, "not rendered"))
    tip = escape(item.uri or f"image {item.image_id}")
    if data is not None:
        return f'<div class="th {item.key}" title="{tip}"></div>'
    return (f'<div class="th missing" title="{tip}"><b>image unavailable</b>'
            f'<span class="why">{escape(error or "")}</span></div>')


# -- page pieces -----------------------------------------------------------------------------
CSS = """
:root{--hit:#188038;--hit-bg:#e6f4ea;--miss:#c5221f;--miss-bg:#fce8e6;--part:#e37400;--query:#1a73e8;
--line:#dadce0;--muted:#5f6368;--ink:#202124}
*{box-sizing:border-box}
body{margin:0;padding:20px 16px 40px;font:13px/1.35 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",
sans-serif;color:var(--ink);background:#f6f7f9}
h1{font-size:22px;margin:0 0 2px}
h2{font-size:16px;margin:22px 0 8px}
a{color:var(--query)}
.sub{color:var(--muted);margin-bottom:14px}
.num{font-variant-numeric:tabular-nums}
.metrics{display:flex;flex-wrap:wrap;gap:10px;margin:14px 0}
.metric{background:#fff;border:1px solid var(--line);border-radius:8px;padding:8px 16px;min-width:118px}
.metric .label{color:var(--muted);font-size:12px;font-weight:600;letter-spacing:.03em}
.metric .value{font-size:26px;font-weight:650;font-variant-numeric:tabular-nums}
.metric.main{border-color:var(--query);box-shadow:inset 0 3px 0 var(--query)}
.metric.main .value{color:var(--query)}
.panels{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}
table.info{border-collapse:collapse;background:#fff;border:1px solid var(--line);border-radius:8px}
table.info th,table.info td{padding:4px 12px;text-align:left;border-bottom:1px solid #eef0f2;vertical-align:top}
table.info th{color:var(--muted);font-weight:600}
table.info td.num{text-align:right}
tr.good td{color:var(--hit);font-weight:600}
tr.bad td{color:var(--miss);font-weight:600}
.note{color:var(--muted);margin:6px 0}
.nav{margin:10px 0;display:flex;flex-wrap:wrap;gap:6px;align-items:center}
.nav a,.chip{display:inline-block;padding:2px 9px;border:1px solid var(--line);border-radius:12px;background:#fff;
text-decoration:none}
.chip{border-color:var(--miss);color:var(--miss)}
.cards{display:flex;flex-wrap:wrap;gap:6px;align-items:flex-start}
.card{width:140px;flex:none;background:#fff;border:2px solid var(--line);border-radius:6px;padding:4px;position:relative}
.card.hit{border-color:var(--hit);background:var(--hit-bg)}
.card .tag{position:absolute;top:6px;right:6px;background:var(--hit);color:#fff;font-size:11px;font-weight:700;
padding:0 6px;border-radius:8px}
.th{width:128px;height:128px;background:#eceff1 center/contain no-repeat;border-radius:3px}
.th.missing{display:flex;flex-direction:column;gap:4px;justify-content:center;padding:6px;border:2px dashed var(--miss);
background:#fff;color:var(--miss);font-size:10.5px;line-height:1.25;overflow:hidden;word-break:break-all}
.th.missing b{font-size:12px;word-break:normal}
.meta{padding-top:3px}
.meta>div{overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.meta .rank{display:flex;justify-content:space-between}
.meta .sku{font-weight:600}
.meta .brand,.meta .cat{color:var(--muted)}
.meta .title{white-space:normal;display:-webkit-box;-webkit-line-clamp:2;-webkit-box-orient:vertical;min-height:2.7em}
.badge{display:inline-block;padding:1px 7px;border-radius:9px;font-size:11px;font-weight:700;color:#fff}
.badge.hit{background:var(--hit)}
.badge.part{background:var(--part)}
.badge.miss{background:var(--miss)}
.query{border-color:var(--query);background:#e8f0fe}
.q{display:flex;gap:10px;padding:8px;margin:8px 0;background:#fff;border:1px solid var(--line);
border-left:6px solid var(--hit);border-radius:6px}
.q.part{border-left-color:var(--part)}
.q.miss{border-left-color:var(--miss);background:var(--miss-bg)}
.q .query{width:150px}
.q .qstats{margin-top:3px}
.filter{scroll-margin-top:0}
#misses-only:target~.rows .q:not(.miss){display:none}
.search-head{display:flex;gap:16px;align-items:flex-start;flex-wrap:wrap}
.search-head .query{width:150px}
.summary{font-size:15px;margin:10px 0}
.summary b.hits{color:var(--hit)}
.summary b.none{color:var(--miss)}
"""


def _fmt(value: Any, places: int = 4) -> str:
    return "-" if value is None else f"{float(value):.{places}f}"


def _card(result: Result, thumbs: Mapping[str, tuple[str | None, str | None]]) -> str:
    item = result.item
    hit = ' hit' if result.hit else ''
    tag = '<span class="tag">hit</span>' if result.hit else ''
    categories = ", ".join(item.categories)
    return (
        f'<div class="card{hit}" data-image-id="{escape(str(item.image_id))}" data-rank="{result.rank}">'
        f'{tag}{_thumb(item, thumbs)}<div class="meta">'
        f'<div class="rank"><b>#{result.rank}</b><span class="score num">{_fmt(result.score)}</span></div>'
        f'<div class="sku" title="{escape(item.sku or "")}">{escape(item.sku or "no product")}</div>'
        f'<div class="brand" title="{escape(item.brand or "")}">{escape(item.brand or "-")}</div>'
        f'<div class="title" title="{escape(item.title or "")}">{escape(item.title or "")}</div>'
        f'<div class="cat" title="{escape(categories)}">{escape(categories or "-")}</div>'
        "</div></div>"
    )


def _query_card(item: Item, label: str, thumbs: Mapping[str, tuple[str | None, str | None]], extra: str = "") -> str:
    return (
        f'<div class="card query" data-image-id="{escape(str(item.image_id))}">{_thumb(item, thumbs)}'
        f'<div class="meta"><div class="rank"><b>{escape(label)}</b></div>'
        f'<div class="sku" title="{escape(item.sku or "")}">{escape(item.sku or "product unknown")}</div>'
        f'<div class="brand">{escape(item.brand or "-")}</div>'
        f'<div class="title" title="{escape(item.title or "")}">{escape(item.title or "")}</div>'
        f"{extra}</div></div>"
    )


def _page(title: str, thumbs: Mapping[str, tuple[str | None, str | None]], body: str) -> str:
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{escape(title)}</title>\n<style>{CSS}</style>\n<style>\n{_thumb_css(thumbs)}\n</style>\n"
        f"</head><body>\n{body}\n</body></html>\n"
    )


def _info_table(rows: Sequence[tuple[str, str]], css: str = "") -> str:
    cells = "".join(f"<tr><th>{escape(name)}</th><td>{escape(value)}</td></tr>" for name, value in rows)
    return f'<table class="info {css}">{cells}</table>'


def _reranker_text(reranker: Mapping[str, Any] | None) -> str:
    if not reranker:
        return "none"
    params = ", ".join(f"{key}={value}" for key, value in (reranker.get("params") or {}).items())
    shortlist = reranker.get("shortlist")
    return f"{reranker.get('name')}" + (f" ({params})" if params else "") + (
        f", shortlist {shortlist}" if shortlist is not None else "")


def _date(value: datetime | None) -> str:
    if value is None:
        return "-"
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%d %H:%M UTC")


# -- search page -----------------------------------------------------------------------------
def render_search(query: Item, results: Sequence[Result], *, model: str, query_label: str, k: int,
                  filters: Mapping[str, Any] | None = None, reranker: Mapping[str, Any] | None = None,
                  created_at: datetime | None = None, limits: ReadLimits | None = None) -> str:
    """The page of one search: the query, the settings and the top-k cards (hits marked when
    the query's product is known)."""
    thumbs = encode_thumbnails([query, *(result.item for result in results)], limits=limits)
    active = {name: value for name, value in (filters or {}).items() if value is not None}
    filter_text = ", ".join(f"{name} = {value}" for name, value in active.items()) or "none"
    if query.product_id is None:
        summary = "query product unknown: hits are not marked"
    else:
        hits = sum(1 for result in results if result.hit)
        css = "hits" if hits else "none"
        summary = (f'<b class="{css}">{hits} of {len(results)}</b> results are the query\'s product '
                   f'<b>{escape(query.sku or "")}</b>')
    info = _info_table([
        ("model", model), ("query", query_label), ("filters", filter_text),
        ("k", f"{k} requested, {len(results)} returned"), ("re-ranker", _reranker_text(reranker)),
        ("date", _date(created_at or datetime.now(UTC))),
    ])
    cards = "".join(_card(result, thumbs) for result in results) or '<p class="note">no results</p>'
    body = (
        f'<h1>Search results</h1><div class="sub">model <b>{escape(model)}</b> &middot; '
        f'{escape(query_label)}</div>'
        f'<div class="search-head">{_query_card(query, "query", thumbs)}{info}</div>'
        f'<p class="summary" id="summary">{summary}</p>'
        f'<div class="cards results">{cards}</div>'
        '<p class="note">score: inner product of L2-normalised descriptors (higher is more similar)</p>'
    )
    return _page(f"manet search: {model}", thumbs, body)


# -- evaluation page -------------------------------------------------------------------------
def _percent(count: int, total: int) -> str:
    return f"{100.0 * count / total:.1f} %" if total else "-"


def _row_state(row: QueryRow) -> tuple[str, str]:
    """(CSS class, badge HTML) of a query row: hit@1, first hit lower down, or miss."""
    if row.miss:
        return "miss", '<span class="badge miss">MISS</span>'
    first = next(result.rank for result in row.results if result.hit)
    if first == 1:
        return "hit", '<span class="badge hit">hit@1</span>'
    return "part", f'<span class="badge part">first hit #{first}</span>'


def _query_row(row: QueryRow, k: int, thumbs: Mapping[str, tuple[str | None, str | None]]) -> str:
    css, badge = _row_state(row)
    stats = (f'<div class="qstats">{badge}</div>'
             f'<div class="num">AP@{k} <b>{_fmt(row.ap_at_k)}</b></div><div class="num">AP {_fmt(row.ap)}</div>')
    label = f"query {row.query.image_id}"
    cards = "".join(_card(result, thumbs) for result in row.results)
    return (
        f'<section class="q {css}" id="q{escape(str(row.query.image_id))}" '
        f'data-image-id="{escape(str(row.query.image_id))}" data-ap-at-k="{_fmt(row.ap_at_k)}" '
        f'data-hit-at-1="{int(row.hit_at_1)}">'
        f'{_query_card(row.query, label, thumbs, stats)}<div class="cards">{cards}</div></section>'
    )


def render_eval(run: EvalRun, limits: ReadLimits | None = None) -> str:
    """The page of an evaluation run: its metrics, a summary, then one row per shown query
    (misses first, being the worst AP@k) with its top k, hits marked."""
    items = [item for row in run.rows for item in (row.query, *(result.item for result in row.results))]
    thumbs = encode_thumbnails(items, limits=limits)
    m, k = run.metrics, run.k
    tiles = [(f"MAP@{k}", f"map@{k}", True), ("mAP", "map", False), ("R@1", "recall@1", False),
             ("R@5", "recall@5", False), ("R@7", "recall@7", False)]
    metrics = "".join(
        f'<div class="metric{" main" if main else ""}" data-metric="{escape(key)}">'
        f'<div class="label">{escape(label)}</div><div class="value">{_fmt(m.get(key))}</div></div>'
        for label, key, main in tiles
    ) + (f'<div class="metric" data-metric="queries"><div class="label">queries</div>'
         f'<div class="value">{run.queries}</div></div>')
    details = _info_table([
        ("model", run.model), ("run id", str(run.run_id)), ("split", run.split or "all"), ("k", str(k)),
        ("normaliser", f"{run.normaliser}: AP@{k} divided by "
                       + ("min(|G|, k)" if run.normaliser == "min" else "the hits in the top k")),
        ("re-ranker", _reranker_text(m.get("reranker"))),
        ("queries without a catalogue match", str(m.get("queries_without_relevant", 0))),
        ("date", _date(run.created_at)),
    ])
    shown = len(run.rows)
    summary = (
        '<table class="info summary-table" id="summary">'
        f'<tr><th>queries</th><td class="num">{run.queries}</td><td></td></tr>'
        f'<tr class="good"><th>hit@1</th><td class="num" data-count="hits_at_1">{run.hits_at_1}</td>'
        f'<td class="num">{_percent(run.hits_at_1, run.queries)}</td></tr>'
        f'<tr class="bad"><th>misses (no hit in top {k})</th><td class="num" data-count="misses">{run.misses}</td>'
        f'<td class="num">{_percent(run.misses, run.queries)}</td></tr>'
        f'<tr><th>rows shown</th><td class="num">{shown}</td><td>worst AP@{k} first</td></tr></table>'
    )
    shown_misses = [row for row in run.rows if row.miss]
    chips = "".join(f'<a class="chip" href="#q{escape(str(row.query.image_id))}">{escape(str(row.query.image_id))}</a>'
                    for row in shown_misses[:60])
    more = f" &hellip; and {len(shown_misses) - 60} more" if len(shown_misses) > 60 else ""
    score_note = "score: inner product of the stored descriptors"
    if m.get("reranker"):
        score_note += " (the order is the re-ranker's, so scores need not decrease)"
    rows = "".join(_query_row(row, k, thumbs) for row in run.rows)
    body = (
        f'<h1>Evaluation report</h1><div class="sub">model <b>{escape(run.model)}</b> &middot; run '
        f'{run.run_id} &middot; {escape(_date(run.created_at))}</div>'
        f'<div class="metrics">{metrics}</div>'
        f'<div class="panels">{summary}{details}</div>'
        f'<h2 id="queries">Queries</h2>'
        f'<p class="note" id="shown">{shown} of {run.queries} queries shown, worst AP@{k} first; {score_note}; '
        'green: catalogue image of the query\'s product; red rows: no hit in the top k.</p>'
        f'<div class="nav">show: <a href="#all">all rows</a><a href="#misses-only">misses only</a>'
        + (f'<span class="note">misses:</span>{chips}{more}' if chips else "")
        + '</div><div class="filter" id="all"></div><div class="filter" id="misses-only"></div>'
        f'<div class="rows">{rows}</div>'
    )
    return _page(f"manet eval: {run.model} run {run.run_id}", thumbs, body)
