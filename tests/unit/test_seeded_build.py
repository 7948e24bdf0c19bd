"""Random-weight networks are the same network in every thread (plugins.backbones.seeded)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch

from manet.plugins.backbones import seeded


def _build() -> torch.Tensor:
    # Big enough that two unguarded builds would overlap and interleave their draws.
    layers = [torch.nn.Linear(1000, 1000) for _ in range(4)]
    return torch.cat([layer.weight.flatten() for layer in layers])


def test_concurrent_seeded_builds_get_the_same_weights() -> None:
    expected = seeded(_build)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: seeded(_build), range(8)))
    assert all(torch.equal(result, expected) for result in results)


def test_seeded_leaves_the_callers_generator_alone() -> None:
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    seeded(_build)
    assert torch.equal(torch.rand(3), before)
