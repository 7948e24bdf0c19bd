"""R-MAC region grid (Tolias et al., as in the corrected reference implementation).

Pure Python: the single source of region coordinates for every regional pooling.
"""

from __future__ import annotations

from fractions import Fraction

Region = tuple[int, int, int, int]
"""(top, left, height, width) in feature-map cells."""

#: Candidate numbers of regions along the long side at the coarsest grid (DESIGN §5).
_STEPS = range(2, 8)


def _extra_long_side(height: int, width: int, overlap: float) -> int:
    """Number d of extra regions along the long side (0 for a square map)."""
    short, long_ = min(height, width), max(height, width)
    if short == long_:
        return 0
    # Exact rationals so that ties resolve to the first s, as the rule asks, without
    # float noise; str() keeps the decimal the caller meant (0.4 -> 2/5).
    target = Fraction(str(overlap))

    def mismatch(s: int) -> Fraction:
        b = Fraction(long_ - short, s - 1)
        return abs((short * short - short * b) / (short * short) - target)

    best = min(_STEPS, key=mismatch)  # min() returns the first minimiser
    return best - 1


def _positions(length: int, side: int, count: int) -> list[int]:
    """``count`` start offsets of windows of ``side`` cells spanning ``length`` cells.

    The first window touches 0 and the last touches ``length``; in between they are evenly
    spaced and rounded down. A single window is placed at 0 (with the DESIGN rule it then
    always spans the whole axis, so this is also centred).
    """
    if count == 1:
        return [0]
    # Integer arithmetic: floor(i * (length - side) / (count - 1)) without rounding error,
    # so the last window ends exactly on the border.
    return [i * (length - side) // (count - 1) for i in range(count)]


def rmac_regions(
    height: int, width: int, levels: int = 3, overlap: float = 0.4
) -> list[Region]:
    """R-MAC regions of an ``height`` x ``width`` map, without the global region.

    Level ``l`` (1..levels) has square regions of side ``floor(2w / (l + 1))`` with
    ``w = min(height, width)``: ``l`` along the short side and ``l + d`` along the long
    side. Levels whose side would be 0 (maps smaller than the level) are skipped.
    Order: level by level, then row-major (top, then left).
    """
    if height < 1 or width < 1:
        raise ValueError(f"feature map must be at least 1x1, got {height}x{width}")
    if levels < 1:
        raise ValueError(f"levels must be >= 1, got {levels}")
    short = min(height, width)
    extra = _extra_long_side(height, width, overlap)
    extra_h, extra_w = (extra, 0) if height > width else (0, extra)
    regions: list[Region] = []
    for level in range(1, levels + 1):
        side = (2 * short) // (level + 1)
        if side == 0:
            continue
        for top in _positions(height, side, level + extra_h):
            for left in _positions(width, side, level + extra_w):
                regions.append((top, left, side, side))
    return regions
