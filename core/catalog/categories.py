"""Category mining: product kinds as keywords from product text (TF-IDF), stored per product.

The paper trains MANet with a cross-entropy head over categories mined from product text.
Mining is split in two pure steps (:func:`mine_keywords`, :func:`assign_products`) and the
database steps that read products and replace the stored ``tfidf`` categories.

How a keyword is chosen (simple and deterministic): every product is one document, its title
plus description. Tokens are lowercase alphabetic words of three or more letters, minus
English stop words and :data:`NON_KIND_WORDS`; a plural is folded into its singular when the
singular also occurs in the corpus (``peppers`` -> ``pepper``), so no invented stems appear.
A product kind is what a title names and its description talks about, so a term is a
candidate when at least ``min_df`` products have it in both (title alone for a product
without description); grades and codes found only in titles ("Klass 1") drop out. Terms in
more than ``max_df`` of all products are too broad to be a kind. A candidate's score is that
product count x its TF-IDF mass summed over all products; candidates are taken best first,
skipping one whose titles are mostly claimed already by better keywords (``skimmed`` after
``milk``), since a product gets one category only.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa

from manet.errors import ManetError
from manet.store.database import Database

#: Words that describe a product but are not a kind of product: grades, units, sizes,
#: colours and marketing claims. Extend it rather than post-filtering mined keywords.
NON_KIND_WORDS: frozenset[str] = frozenset(
    """
    class grade quality premium fresh new original classic natural organic ecological eco
    extra best special deluxe pure real style edition value free mild light regular standard
    large small medium mini big jumbo size family daily everyday gentle rich intense golden
    pack packs piece pieces pcs set bundle kit count gram grams kilogram kilograms kilo litre
    litres liter liters percent ounce ounces pound pounds approx
    red green yellow white black blue brown pink purple grey gray silver gold
    """.split()
)

_TOKEN = re.compile(r"[^\W\d_]{3,}")

#: A keyword must name at least this many products (in title and description) by default.
MIN_PRODUCTS = 2


def _tokens(text: str | None) -> list[str]:
    """Lowercase alphabetic words of >= 3 letters (any script, so titles in other
    languages still tokenise), without stop words and :data:`NON_KIND_WORDS`."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return [
        word
        for word in _TOKEN.findall((text or "").lower())
        if word not in ENGLISH_STOP_WORDS and word not in NON_KIND_WORDS
    ]


def _plural_forms(word: str) -> tuple[str, ...]:
    """Regular English plurals of ``word`` (juice -> juices, tomato -> tomatoes, berry -> berries)."""
    forms = [word + "s", word + "es"]
    if word.endswith("y") and len(word) > 3:
        forms.append(word[:-1] + "ies")
    return tuple(forms)


def _singulars(vocabulary: Iterable[str]) -> dict[str, str]:
    """plural -> singular for every word whose singular is also in ``vocabulary``."""
    words = set(vocabulary)
    return {plural: word for word in sorted(words) for plural in _plural_forms(word) if plural in words}


def mine_keywords(
    texts: Sequence[tuple[str | None, str | None]] | Sequence[str],
    top: int,
    *,
    min_df: int = MIN_PRODUCTS,
    max_df: float = 0.5,
) -> list[tuple[str, float]]:
    """The ``top`` best category keywords of a corpus, best first, with their scores.

    ``texts`` holds one entry per product: a ``(title, description)`` pair, or a plain
    string used as both (then every product text counts as a title). See the module
    docstring for the ranking. Fewer than ``top`` come back when fewer terms qualify.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer

    if top < 1:
        raise ManetError(f"--top must be at least 1, got {top}")
    pairs = [(t, t) if isinstance(t, str) or t is None else (t[0], t[1]) for t in texts]
    raw = [(_tokens(title), _tokens(description)) for title, description in pairs]
    fold = _singulars(word for title, description in raw for word in title + description)
    titles = [[fold.get(w, w) for w in title] for title, _ in raw]
    descriptions = [[fold.get(w, w) for w in description] for _, description in raw]
    docs = [title + description for title, description in zip(titles, descriptions)]
    if not any(docs):
        return []

    vectorizer = TfidfVectorizer(analyzer=lambda words: words, sublinear_tf=True)
    matrix = vectorizer.fit_transform(docs)
    mass = dict(zip(vectorizer.get_feature_names_out(), matrix.sum(axis=0).A1))
    doc_df = Counter(word for words in docs for word in set(words))
    title_sets = [set(words) for words in titles]
    # A title word counts for a product when its description names it too (or the product
    # has no description): kinds are what both talk about; grades, codes and words of
    # another language in titles only ("Klass 1") are not.
    named = [
        words & set(description) if description else words
        for words, description in zip(title_sets, descriptions)
    ]
    title_df = Counter(word for words in named for word in words)

    limit = max_df * len(docs)
    candidates = sorted(
        ((title_df[w] * float(mass[w]), w) for w in title_df if title_df[w] >= min_df and doc_df[w] <= limit),
        key=lambda item: (-item[0], item[1]),
    )
    chosen: list[tuple[str, float]] = []
    claimed: set[int] = set()
    for score, word in candidates:
        covered = {i for i, words in enumerate(title_sets) if word in words}
        # A product gets one category: a keyword whose titles already belong to better
        # keywords would only split an existing category (milk / skimmed milk).
        if len(covered - claimed) * 2 < len(covered):
            continue
        chosen.append((word, round(score, 6)))
        claimed |= covered
        if len(chosen) == top:
            break
    return chosen


def _matches(keyword: str, words: set[str]) -> bool:
    return keyword in words or any(form in words for form in _plural_forms(keyword))


def assign_products(
    texts: Sequence[tuple[str | None, str | None]] | Sequence[str | None],
    keywords: Sequence[str],
) -> list[str | None]:
    """One keyword (or None) per product.

    A keyword matches a text when it occurs there as a whole word, case-insensitively, in
    the singular or a regular plural. The title decides; only a product whose title matches
    no keyword falls back to its description. Among several matches the keyword matching
    the fewest products wins (the more specific kind), ties by keyword order.
    """
    pairs = [(t, None) if isinstance(t, str) or t is None else (t[0], t[1]) for t in texts]
    keys = [k.lower() for k in keywords]
    words = [
        (set(_TOKEN.findall((title or "").lower())), set(_TOKEN.findall((description or "").lower())))
        for title, description in pairs
    ]
    hits = [
        [k for k in keys if _matches(k, title)] or [k for k in keys if _matches(k, description)]
        for title, description in words
    ]
    # Specificity counts every product mentioning the keyword anywhere, not just the winners.
    frequency = Counter(k for title, description in words for k in keys if _matches(k, title | description))
    order = {k: i for i, k in enumerate(keys)}
    return [min(matched, key=lambda k: (frequency[k], order[k])) if matched else None for matched in hits]


# -- database ---------------------------------------------------------------------------

#: Images that may train a classifier: decodable, and not held out for evaluation.
TRAINABLE_IMAGE = "i.status = 'ok' AND (i.split IS NULL OR i.split = 'train')"

SOURCES = ("tfidf", "manual")


def check_source(source: str | None) -> None:
    """Reject a category source other than tfidf, manual or None (any)."""
    if source is not None and source not in SOURCES:
        raise ManetError(f"unknown category source {source!r}; use tfidf or manual")


_LIST = """
    SELECT c.name, c.keywords, c.source,
           count(DISTINCT pc.product_id) AS products, count(i.id) AS images
      FROM categories c
      LEFT JOIN product_categories pc ON pc.category_id = c.id
      LEFT JOIN images i ON i.product_id = pc.product_id AND i.status = 'ok'
     WHERE (CAST(:source AS text) IS NULL OR c.source = :source)
       AND (CAST(:names AS text[]) IS NULL OR c.name = ANY(:names))
     GROUP BY c.id
     ORDER BY products DESC, c.name
"""


def _list(
    conn: sa.Connection, source: str | None = None, names: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    rows = conn.execute(
        sa.text(_LIST), {"source": source, "names": list(names) if names is not None else None}
    )
    return [
        {
            "name": r.name,
            "keywords": list(r.keywords),
            "source": r.source,
            "products": r.products,
            "images": r.images,
        }
        for r in rows
    ]


def list_categories(db: Database, source: str | None = None) -> list[dict[str, Any]]:
    """Every category (or those of ``source``) with its product and 'ok' image counts."""
    check_source(source)
    with db.begin() as conn:
        return _list(conn, source)


def _free_name(conn: sa.Connection, name: str, source: str) -> str:
    """``name``, or ``"name (source)"`` when a category of another source already has it:
    mining must never take over a manual category (or the reverse)."""
    other = conn.execute(sa.text("SELECT source FROM categories WHERE name = :name"), {"name": name}).scalar()
    return name if other in (None, source) else f"{name} ({source})"


def _link(
    conn: sa.Connection, name: str, keywords: list[str], source: str, product_ids: Iterable[int]
) -> str:
    """Create (or reuse) category ``name`` of ``source`` and add the products to it."""
    name = _free_name(conn, name, source)
    category_id = conn.execute(
        sa.text(
            "INSERT INTO categories (name, keywords, source) VALUES (:name, :keywords, :source) "
            "ON CONFLICT (name) DO UPDATE SET keywords = EXCLUDED.keywords RETURNING id"
        ),
        {"name": name, "keywords": keywords, "source": source},
    ).scalar_one()
    conn.execute(
        sa.text(
            "INSERT INTO product_categories (product_id, category_id) VALUES (:p, :c) ON CONFLICT DO NOTHING"
        ),
        [{"p": product_id, "c": category_id} for product_id in product_ids],
    )
    return name


def mine_categories(
    db: Database, top: int, min_images: int = 1, *, keywords: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """Mine ``top`` keywords from product text (or use the given ``keywords``), assign the
    products and replace every ``tfidf`` category with the result, in one transaction.

    Categories with fewer than ``min_images`` trainable images (status 'ok', split 'train'
    or none) are left out. Nothing changes when no keyword matches a product.
    """
    with db.begin() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT id, title, description FROM products "
                "WHERE coalesce(title, '') <> '' OR coalesce(description, '') <> '' ORDER BY id"
            )
        ).all()
        if not rows:
            raise ManetError(
                "no product has a title or description to mine; ingest a catalogue with titles first"
            )
        texts = [(r.title, r.description) for r in rows]
        if keywords is None:
            keywords = [word for word, _ in mine_keywords(texts, top)]
        else:
            keywords = list(dict.fromkeys(k.strip().lower() for k in keywords if k.strip()))
        label = ", ".join(keywords) or "(none)"
        if not keywords:
            raise ManetError(
                f"no category keyword names at least {MIN_PRODUCTS} of the {len(rows)} products; "
                f"give keywords with --keyword or categories with --from-column"
            )
        images = dict(
            conn.execute(
                sa.text(f"SELECT i.product_id, count(*) FROM images i WHERE {TRAINABLE_IMAGE} GROUP BY 1")
            ).all()
        )
        members: dict[str, list[int]] = {}
        for row, keyword in zip(rows, assign_products(texts, keywords)):
            if keyword is not None:
                members.setdefault(keyword, []).append(row.id)
        least = max(min_images, 1)
        kept = {k: ids for k, ids in members.items() if sum(images.get(i, 0) for i in ids) >= least}
        if not kept:
            raise ManetError(
                f"category keywords {label} matched no product with at least {least} "
                f"trainable image(s); check the keywords, lower --min-images or ingest more images"
            )
        conn.execute(sa.text("DELETE FROM categories WHERE source = 'tfidf'"))
        names = [_link(conn, k, [k], "tfidf", kept[k]) for k in keywords if k in kept]
        return _list(conn, "tfidf", names)


def categories_from_column(db: Database, column: str) -> list[dict[str, Any]]:
    """Manual categories from the manifest's ``category`` column (stored by ingest) or from
    the key ``column`` of ``products.attributes``; existing assignments are kept."""
    with db.begin() as conn:
        if column == "category":
            found = _list(conn, "manual")
            if not found:
                raise ManetError("no product has a category; ingest a manifest with a category column first")
            return found
        rows = conn.execute(
            sa.text(
                "SELECT attributes ->> :key AS value, array_agg(id ORDER BY id) AS ids FROM products "
                "WHERE coalesce(attributes ->> :key, '') <> '' GROUP BY 1 ORDER BY 1"
            ),
            {"key": column},
        ).all()
        if not rows:
            keys = (
                conn.execute(
                    sa.text("SELECT DISTINCT jsonb_object_keys(attributes) FROM products ORDER BY 1")
                )
                .scalars()
                .all()
            )
            raise ManetError(
                f"no product has a {column!r} column; columns found: {', '.join(['category', *keys])}"
            )
        names = [_link(conn, row.value, [], "manual", row.ids) for row in rows]
        return _list(conn, "manual", names)
