"""Few-shot training sets: a balanced, reproducible sample of images per category, 8:2.

Only trainable images enter a set: status 'ok' and ingest split 'train' or none (catalogue
images and train photos alike). Photos that ingest marked 'val' or 'test' are evaluation
queries and never do, so a model is never trained on the photos it is evaluated on.
"""

from __future__ import annotations

import json
import math
import zlib
from collections import defaultdict
from typing import Any

import numpy as np
import sqlalchemy as sa

from manet.catalog.categories import TRAINABLE_IMAGE, check_source
from manet.errors import ManetError, NotFoundError
from manet.store.database import Database

SPLITS = ("train", "val")


def _source(conn: sa.Connection, source: str | None) -> str:
    """The category source to train on: the given one, else tfidf when mined, else manual."""
    check_source(source)
    counts = dict(conn.execute(sa.text("SELECT source, count(*) FROM categories GROUP BY 1")).all())
    if source is None:
        source = "tfidf" if counts.get("tfidf") else "manual"
    if not counts.get(source):
        raise ManetError(
            f"there are no {source} categories; run: manet categories mine --top K "
            f"(or --from-column category)"
        )
    return source


def _candidates(conn: sa.Connection, source: str) -> dict[str, list[int]]:
    """Category name -> sorted trainable image ids, each product in exactly one category:
    the one with the fewest candidate images (ties by name), so small categories keep theirs."""
    rows = conn.execute(
        sa.text(
            f"""
            SELECT i.id AS image_id, i.product_id, c.name
              FROM images i
              JOIN product_categories pc ON pc.product_id = i.product_id
              JOIN categories c ON c.id = pc.category_id
             WHERE {TRAINABLE_IMAGE} AND c.source = :source
            """
        ),
        {"source": source},
    ).all()
    size: dict[str, set[int]] = defaultdict(set)
    product_images: dict[int, set[int]] = defaultdict(set)
    product_categories: dict[int, set[str]] = defaultdict(set)
    for row in rows:
        size[row.name].add(row.image_id)
        product_images[row.product_id].add(row.image_id)
        product_categories[row.product_id].add(row.name)
    chosen: dict[str, list[int]] = defaultdict(list)
    for product, names in product_categories.items():
        name = min(names, key=lambda n: (len(size[n]), n))
        chosen[name].extend(product_images[product])
    return {name: sorted(ids) for name, ids in chosen.items()}


def _val_count(n: int, val_fraction: float) -> int:
    """Validation images out of ``n``: rounded half up, at least one when ``n >= 2`` and at
    least one left for training."""
    if n < 2 or val_fraction <= 0:
        return 0
    return min(max(math.floor(n * val_fraction + 0.5), 1), n - 1)


def _sample(
    name: str, ids: list[int], per_category: int, val_fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """(train, val) image ids of one category. The generator is seeded by the seed and the
    category's name, so one category's draw does not change when others come or go."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode("utf-8"))])
    picked = [int(i) for i in rng.permutation(np.asarray(ids, dtype=np.int64))[:per_category]]
    n_val = _val_count(len(picked), val_fraction)
    return sorted(picked[n_val:]), sorted(picked[:n_val])


def build_training_set(
    db: Database,
    *,
    name: str = "default",
    per_category: int = 800,
    val_fraction: float = 0.2,
    seed: int = 0,
    source: str | None = None,
    min_per_category: int = 2,
) -> dict[str, Any]:
    """Sample at most ``per_category`` trainable images per category, split them train/val,
    and store them as training set ``name`` (replacing one of that name). Returns its summary.

    Categories with fewer than ``min_per_category`` images are left out; fewer than two
    categories or an empty split is an error and stores nothing.
    """
    _check_options(per_category, val_fraction, seed)
    with db.begin() as conn:
        source = _source(conn, source)
        splits = _sampled_splits(conn, source, per_category, val_fraction, seed, min_per_category)
        config = {"per_category": per_category, "val_fraction": val_fraction, "seed": seed,
                  "source": source, "min_per_category": min_per_category}  # fmt: skip
        _store(conn, name, config, splits)
        return _summary(conn, name)


def _check_options(per_category: int, val_fraction: float, seed: int) -> None:
    if per_category < 1:
        raise ManetError(f"--per-category must be at least 1, got {per_category}")
    if seed < 0:
        raise ManetError(f"--seed must be 0 or more, got {seed}")
    if not 0 <= val_fraction < 1:
        raise ManetError(f"--val-fraction must be in [0, 1), got {val_fraction}")


def _sampled_splits(conn: sa.Connection, source: str, per_category: int, val_fraction: float, seed: int,
                    min_per_category: int) -> dict[str, tuple[list[int], list[int]]]:
    """{category: (train ids, val ids)} of every category with ``min_per_category`` trainable
    images; an error when fewer than two categories qualify or a split would be empty."""
    candidates = _candidates(conn, source)
    kept = {n: ids for n, ids in sorted(candidates.items()) if len(ids) >= min_per_category}
    if len(kept) < 2:
        raise ManetError(
            f"only {len(kept)} {source} categories have at least {min_per_category} trainable images "
            f"(status ok, split train or none); a classifier needs 2 or more: mine more categories "
            f"(manet categories mine --top K), ingest more images or lower --min-per-category"
        )
    splits = {n: _sample(n, ids, per_category, val_fraction, seed) for n, ids in kept.items()}
    for index, split in enumerate(SPLITS):
        if not any(s[index] for s in splits.values()):
            fix = "raise --val-fraction above 0" if split == "val" else "lower --val-fraction"
            raise ManetError(
                f"the {split} split would be empty; {fix}, or ingest more images per category"
            )
    return splits


def _store(conn: sa.Connection, name: str, config: dict[str, Any],
           splits: dict[str, tuple[list[int], list[int]]]) -> None:
    """Replace training set ``name`` with ``splits`` (in the caller's transaction)."""
    conn.execute(sa.text("DELETE FROM training_sets WHERE name = :name"), {"name": name})
    set_id = conn.execute(
        sa.text(
            "INSERT INTO training_sets (name, config) VALUES (:name, CAST(:config AS jsonb)) RETURNING id"
        ),
        {"name": name, "config": json.dumps(config)},
    ).scalar_one()
    category_ids = dict(
        conn.execute(
            sa.text("SELECT name, id FROM categories WHERE name = ANY(:names)"), {"names": list(splits)}
        ).all()
    )
    conn.execute(
        sa.text(
            "INSERT INTO training_images (set_id, image_id, category_id, split) "
            "VALUES (:set_id, :image_id, :category_id, :split)"
        ),
        [
            {
                "set_id": set_id,
                "image_id": image_id,
                "category_id": category_ids[category],
                "split": split,
            }
            for category, parts in splits.items()
            for split, ids in zip(SPLITS, parts)
            for image_id in ids
        ],
    )


def _summary(conn: sa.Connection, name: str) -> dict[str, Any]:
    row = conn.execute(
        sa.text("SELECT id, config, created_at FROM training_sets WHERE name = :name"), {"name": name}
    ).one_or_none()
    if row is None:
        raise NotFoundError(f"training set {name!r} does not exist; build it with: manet dataset build")
    counts = conn.execute(
        sa.text(
            "SELECT c.name, t.split, count(*) FROM training_images t "
            "JOIN categories c ON c.id = t.category_id WHERE t.set_id = :set_id GROUP BY 1, 2"
        ),
        {"set_id": row.id},
    ).all()
    per_category: dict[str, dict[str, int]] = {}
    for category, split, count in counts:
        per_category.setdefault(category, dict.fromkeys(SPLITS, 0))[split] = count
    return {
        "name": name,
        "config": row.config,
        "created_at": row.created_at.isoformat(),
        "categories": len(per_category),
        **{split: sum(c[split] for c in per_category.values()) for split in SPLITS},
        "per_category": dict(sorted(per_category.items())),
    }


def training_set_exists(db: Database, name: str) -> bool:
    """Whether a training set called ``name`` is stored (building it again replaces it)."""
    with db.begin() as conn:
        return conn.execute(sa.text("SELECT EXISTS (SELECT 1 FROM training_sets WHERE name = :name)"),
                            {"name": name}).scalar_one()


def show_training_set(db: Database, name: str = "default") -> dict[str, Any]:
    """Counts per split and per category of training set ``name``."""
    with db.begin() as conn:
        return _summary(conn, name)


def training_images(
    db: Database, name: str = "default", split: str = "train"
) -> list[tuple[int, str, int, str]]:
    """(image_id, uri, class_index, category_name) of one split, class indexes 0..K-1 in
    category-name order over the whole set (so train and val agree)."""
    if split not in SPLITS:
        raise ManetError(f"unknown split {split!r}; use train or val")
    with db.begin() as conn:
        summary = _summary(conn, name)
        rows = conn.execute(
            sa.text(
                """
                SELECT t.image_id, i.uri, c.name
                  FROM training_images t
                  JOIN training_sets s ON s.id = t.set_id
                  JOIN images i ON i.id = t.image_id
                  JOIN categories c ON c.id = t.category_id
                 WHERE s.name = :name AND t.split = :split
                """
            ),
            {"name": name, "split": split},
        ).all()
    index = {category: i for i, category in enumerate(summary["per_category"])}
    return sorted(((r.image_id, r.uri, index[r.name], r.name) for r in rows), key=lambda r: (r[2], r[0]))
