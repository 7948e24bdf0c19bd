"""What the HTML pages (:mod:`manet.evaluate.report`) show: images with their products,
ranked results, and a stored evaluation run with its worst query rows."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class Item:
    """An image shown on a page, with its product (None where unknown)."""

    image_id: int | None
    uri: str | None
    product_id: int | None = None
    sku: str | None = None
    title: str | None = None
    brand: str | None = None
    categories: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        """The CSS class of its thumbnail: one per distinct image on a page."""
        return f"i{int(self.image_id)}" if self.image_id is not None else "iq"


@dataclass(frozen=True)
class Result:
    """One ranked catalogue image; ``hit`` is None when the query's product is unknown."""

    rank: int
    item: Item
    score: float | None
    hit: bool | None


@dataclass(frozen=True)
class QueryRow:
    """One query of an evaluation run with its stored per-query figures and top k."""

    query: Item
    ap_at_k: float
    ap: float
    hit_at_1: bool
    results: tuple[Result, ...]

    @property
    def miss(self) -> bool:
        """No image of the query's product in its top k."""
        return not any(result.hit for result in self.results)


@dataclass(frozen=True)
class EvalRun:
    """A stored evaluation run: its summary and its ``limit`` worst query rows."""

    run_id: int
    model: str
    split: str | None
    k: int
    normaliser: str
    queries: int
    metrics: dict[str, Any]
    created_at: datetime | None
    hits_at_1: int
    misses: int
    rows: tuple[QueryRow, ...]
