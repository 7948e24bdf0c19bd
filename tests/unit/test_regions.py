"""R-MAC region grid: counts, exact coordinates, borders."""

from __future__ import annotations

import pytest

from manet.nn.regions import rmac_regions

SHAPES = [(15, 15), (15, 20), (20, 15), (24, 32), (30, 40), (7, 7), (7, 10), (3, 30)]


@pytest.mark.parametrize(
    ("height", "width", "count"),
    [
        # Square: d = 0, levels have 1 + 4 + 9 regions.
        (15, 15, 14),
        # w = 15, long - w = 5: s = 2 -> b = 5, |1 - 5/15 - 0.4| = 0.267;
        # s = 3 -> b = 2.5, |1 - 1/6 - 0.4| = 0.433; larger s is worse -> d = 1,
        # levels have 1x2 + 2x3 + 3x4 = 20 regions. Same ratio for 24x32 and 30x40.
        (15, 20, 20),
        (20, 15, 20),
        (24, 32, 20),
        (30, 40, 20),
    ],
)
def test_counts(height: int, width: int, count: int) -> None:
    assert len(rmac_regions(height, width)) == count


def test_15x15_exact() -> None:
    regions = rmac_regions(15, 15)
    # Level 1: side floor(30/2) = 15, one region at 0.
    assert regions[:1] == [(0, 0, 15, 15)]
    # Level 2: side floor(30/3) = 10, 2 per axis, step (15 - 10)/1 = 5 -> 0, 5.
    assert regions[1:5] == [(0, 0, 10, 10), (0, 5, 10, 10), (5, 0, 10, 10), (5, 5, 10, 10)]
    # Level 3: side floor(30/4) = 7, 3 per axis, step (15 - 7)/2 = 4 -> 0, 4, 8.
    assert regions[5:] == [(t, l, 7, 7) for t in (0, 4, 8) for l in (0, 4, 8)]


def test_15x20_exact_level_2() -> None:
    # d = 1 (see test_counts). Level 2: side 10; rows 0, 5; columns: 3 with
    # step (20 - 10)/2 = 5 -> 0, 5, 10.
    level2 = [r for r in rmac_regions(15, 20) if r[2] == 10]
    assert level2 == [(t, l, 10, 10) for t in (0, 5) for l in (0, 5, 10)]


def test_2x2_exact() -> None:
    # Level 1: side 2 at 0. Level 2: side floor(4/3) = 1, positions 0, 1.
    # Level 3: side floor(4/4) = 1, step (2 - 1)/2 = 0.5 -> floor(0, 0.5, 1) = 0, 0, 1.
    level3 = [(t, l, 1, 1) for t in (0, 0, 1) for l in (0, 0, 1)]
    expected = [(0, 0, 2, 2)] + [(t, l, 1, 1) for t in (0, 1) for l in (0, 1)] + level3
    assert rmac_regions(2, 2) == expected


def test_levels_parameter_and_tiny_maps() -> None:
    assert rmac_regions(15, 15, levels=1) == [(0, 0, 15, 15)]
    # 1x1: levels 2 and 3 would have side floor(2/3) = floor(2/4) = 0 and are skipped.
    assert rmac_regions(1, 1) == [(0, 0, 1, 1)]
    with pytest.raises(ValueError):
        rmac_regions(0, 5)


@pytest.mark.parametrize(("height", "width"), SHAPES)
def test_regions_inside_and_touch_borders(height: int, width: int) -> None:
    regions = rmac_regions(height, width)
    for top, left, h, w in regions:
        assert h == w >= 1
        assert 0 <= top and top + h <= height
        assert 0 <= left and left + w <= width
    for side in {r[2] for r in regions}:
        level = [r for r in regions if r[2] == side]
        first, last = level[0], level[-1]
        assert (first[0], first[1]) == (0, 0)
        assert (last[0] + side, last[1] + side) == (height, width)
