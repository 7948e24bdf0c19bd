"""IndexLayout's SQL, written out by hand: the model's expression, and its category indexes'."""

from __future__ import annotations

import pytest

from manet.search.index import IndexLayout


def test_a_float32_models_category_indexes_are_halfvec_and_re_ranked():
    model = IndexLayout("none", 4, 1)
    category = model.for_category()
    assert (category.quantize, category.rerank_factor, category.opclass) == ("halfvec", 4, "halfvec_ip_ops")
    assert model.distance("d.embedding", ":q") == "d.embedding::vector(4) <#> CAST(:q AS vector(4))"
    assert category.distance("d.embedding", ":q") == (
        "subvector(d.embedding, 1, 4)::halfvec(4) <#> CAST(:q AS halfvec(4))")


@pytest.mark.parametrize("quantize, factor, stored", [
    ("halfvec", 6, "subvector(embedding, 1, 4)::halfvec(4)"),
    ("binary", 30, "binary_quantize(subvector(embedding, 1, 4))::bit(4)"),
])
def test_a_quantised_models_category_indexes_keep_its_layout(quantize, factor, stored):
    category = IndexLayout(quantize, 4, factor).for_category()
    assert (category.quantize, category.rerank_factor, category.stored("embedding")) == (quantize, factor, stored)
