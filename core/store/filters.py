"""The SQL of search filters (category, brand): the predicate an index scan filters with, and
the capped list of matching catalogue images the filter planner counts and the exact path reads.

Filter values are always bound parameters (``:category``, ``:brand``); only the fixed shape of
the SQL depends on which filters are given. The indexes of revision 0007 serve both: categories
by name -> ``product_categories (category_id, product_id)`` -> ``images (product_id, id) WHERE
domain = 'catalog'`` (index-only), and ``products (lower(brand), id)``.
"""

from __future__ import annotations


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


def _matching_products_sql(*, category: bool, brand: bool) -> str:
    """The products that pass the filters (one row each: a product is in a category once)."""
    if category:
        sql = ("SELECT pc.product_id FROM product_categories pc "
               "JOIN categories c ON c.id = pc.category_id AND c.name = :category")
        return sql + (" JOIN products fp ON fp.id = pc.product_id AND lower(fp.brand) = lower(:brand)"
                      if brand else "")
    return "SELECT fp.id FROM products fp WHERE lower(fp.brand) = lower(:brand)"


def matching_images_sql(*, category: bool, brand: bool) -> str:
    """One row, one column ``ids`` (``bigint[]``): the catalogue images that pass the filters, in
    id order (so the exact path reads descriptors in index order); with ``:cap`` set, at most
    ``:cap`` of them, and NULL when already ``:cap`` products pass (every product has an image or
    a few, so such a filter is past the threshold: one index-only range read decides it).

    Plain joins rather than ``IN`` (a product is in a category once, has one brand): PostgreSQL
    then walks category -> products -> images in nested index-only scans and stops at the cap,
    so the planner pays little to learn that a filter is large; a semi-join would first hash
    every product of the category.
    """
    joins = []
    if category:
        joins.append("JOIN product_categories pc ON pc.product_id = i.product_id "
                     "JOIN categories c ON c.id = pc.category_id AND c.name = :category")
    if brand:
        joins.append("JOIN products fp ON fp.id = i.product_id AND lower(fp.brand) = lower(:brand)")
    products = _matching_products_sql(category=category, brand=brand)
    return (f"SELECT CASE WHEN CAST(:cap AS bigint) IS NULL "
            f"OR (SELECT count(*) FROM ({products} LIMIT :cap) fx) < :cap "
            f"THEN ARRAY(SELECT m.id FROM (SELECT i.id FROM images i {' '.join(joins)} "
            f"WHERE i.domain = 'catalog' LIMIT :cap) m ORDER BY m.id) END AS ids")
