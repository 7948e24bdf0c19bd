"""The SQL of search filters (category, brand): the predicate an index scan filters with, and
the capped list of matching catalogue images the filter planner counts and the exact path reads.

Filter values are always bound parameters (``:category``, ``:brand``); only the fixed shape of
the SQL depends on which filters are given. The indexes of revision 0007 serve both: categories
by name -> ``product_categories (category_id, product_id)`` -> ``images (product_id, id) WHERE
domain = 'catalog'`` (index-only), and ``products (lower(brand), id)``.
"""

from __future__ import annotations

_CATEGORY_PRODUCTS = ("SELECT pc.product_id FROM product_categories pc JOIN categories c ON c.id = pc.category_id "
                      "WHERE c.name = :category")
_BRAND_PRODUCTS = "SELECT fp.id FROM products fp WHERE lower(fp.brand) = lower(:brand)"


def image_predicates(image_id: str, *, category: bool, brand: bool) -> list[str]:
    """SQL conditions true when the image ``image_id`` (a column) passes the filters: a product
    in category ``:category`` and of brand ``:brand`` (case-insensitive)."""
    where = []
    # The per-row form (an EXISTS on the image) is what pgvector's iterative scan checks as each
    # index candidate arrives.
    if category:
        where.append(
            "EXISTS (SELECT 1 FROM images fi JOIN product_categories pc ON pc.product_id = fi.product_id "
            f"JOIN categories c ON c.id = pc.category_id WHERE fi.id = {image_id} AND c.name = :category)"
        )
    if brand:
        where.append(
            "EXISTS (SELECT 1 FROM images fi JOIN products fp ON fp.id = fi.product_id "
            f"WHERE fi.id = {image_id} AND lower(fp.brand) = lower(:brand))"
        )
    return where


def matching_images_sql(*, category: bool, brand: bool) -> str:
    """One row, one ``bigint[]``: the ids of the catalogue images that pass the filters, at most
    ``:cap`` of them, in id order (so the exact path reads descriptors in index order). Its cost
    grows with ``min(matches, :cap)``, so the planner pays little to learn that a filter is big."""
    where = ["i.domain = 'catalog'"]
    if category:
        where.append(f"i.product_id IN ({_CATEGORY_PRODUCTS})")
    if brand:
        where.append(f"i.product_id IN ({_BRAND_PRODUCTS})")
    return (f"SELECT ARRAY(SELECT m.id FROM (SELECT i.id FROM images i WHERE {' AND '.join(where)} "
            f"LIMIT :cap) m ORDER BY m.id)")
