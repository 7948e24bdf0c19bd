"""Printed text in a grey image without weights: character-like MSER regions (Matas et al.
2002) kept where they line up with similar neighbours, the classic recipe of Neumann & Matas
(2010) and Chen et al. (2011). The ``mser`` text detector (:mod:`manet.plugins.text_detectors`)
turns :func:`text_boxes_mask` into its soft mask. Not a plugin module: nothing registers here.
OpenCV and scipy are imported inside the functions so that listing plugins stays cheap.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FloatMap = npt.NDArray[np.float32]

#: MSER: intensity step between compared levels; 5 is OpenCV's default.
_MSER_DELTA = 5
#: MSER: largest relative area change over delta levels; blurred thin strokes change fast,
#: so this is looser than OpenCV's 0.25.
_MSER_MAX_VARIATION = 0.5
#: Largest region, as a fraction of the image area: a big word, not a pack face.
_MAX_REGION_FRACTION = 0.06
#: Tallest print (a box's short side) as a fraction of the shorter image side.
_MAX_CHAR_FRACTION = 0.25
#: Long / short box side: beyond this a region is a line or an edge, not a letter or word.
_MAX_ELONGATION = 10.0
#: Least fraction of its box a region covers: less is a thin outline (a frame, a ring).
_MIN_FILL = 0.12
#: Stroke width / long box side: letters are thin-stroked; discs, squares and dots are ~1.
_MAX_STROKE_RATIO = 0.42
#: Std / mean of the half stroke width along a region's ridge: print has even strokes.
_MAX_STROKE_VARIATION = 0.45
#: Neighbours on a line: sizes across the line within this ratio ...
_SIZE_RATIO = 1.7
#: ... centres across the line closer than this x size, gap along it at most this x size ...
_ALIGN_TOLERANCE = 0.45
_MAX_GAP = 0.6
#: ... and each box at most this x its size along the line (a letter, not a word or bar).
_MAX_LETTER_EXTENT = 2.0
#: Fewest candidates forming a line: isolated logos and shapes have no aligned neighbours.
_MIN_GROUP = 3
#: A region covering more of its box than this is a solid bar (or i, l, I); lines with a
#: larger share of bars than this are shelf wires, stripes or barcodes rather than words.
_SOLID_FILL = 0.8
_MAX_SOLID_SHARE = 0.5
#: A word found as one region: long / short side, fill range, stroke width / short side.
_WORD_ELONGATION = 2.5
_WORD_FILL = (0.3, 0.75)
_WORD_STROKE_RATIO = 0.4


def _mser_candidates(gray: npt.NDArray[np.uint8], min_height: int
                     ) -> tuple[list[npt.NDArray[np.int32]], npt.NDArray[np.int32], FloatMap]:
    """MSER regions with a character-like box: their pixels (x, y), boxes (n, 4) as x, y, w, h,
    and the fraction of its box each region covers."""
    import cv2

    rows, cols = gray.shape
    # min_diversity=0: the default 0.2 prunes a character nested in a slightly larger
    # stable region, which on clean print (flat ink on a flat background) drops nearly all.
    mser = cv2.MSER_create(delta=_MSER_DELTA, min_area=max(4, min_height * min_height // 4),
                           max_area=max(16, int(_MAX_REGION_FRACTION * rows * cols)),
                           max_variation=_MSER_MAX_VARIATION, min_diversity=0.0)
    regions, boxes = mser.detectRegions(gray)
    boxes = np.asarray(boxes, dtype=np.int32).reshape(-1, 4)
    w, h = boxes[:, 2].astype(np.float32), boxes[:, 3].astype(np.float32)
    long_side, short_side = np.maximum(w, h), np.minimum(w, h)
    fill = np.fromiter((len(r) for r in regions), np.float32, len(regions)) / np.maximum(w * h, 1)
    keep = np.flatnonzero(
        (long_side >= min_height)
        & (short_side <= _MAX_CHAR_FRACTION * min(rows, cols))
        & (long_side <= _MAX_ELONGATION * short_side)
        & (fill >= _MIN_FILL)
    )
    # One character is found at several intensity levels, often with the same box.
    keep = keep[np.unique(boxes[keep], axis=0, return_index=True)[1]]
    return [regions[i] for i in keep], boxes[keep], fill[keep]


def _stroke_widths(regions: list[npt.NDArray[np.int32]], boxes: npt.NDArray[np.int32]
                   ) -> tuple[FloatMap, FloatMap]:
    """Stroke width of each region (twice its largest inscribed radius) and the spread
    (std / mean) of its half-width along the medial ridge: print has thin, even strokes."""
    import cv2

    width = np.empty(len(regions), np.float32)
    spread = np.empty(len(regions), np.float32)
    kernel = np.ones((3, 3), np.uint8)
    for k, (points, (x, y, w, h)) in enumerate(zip(regions, boxes)):
        canvas = np.zeros((h + 2, w + 2), np.uint8)  # 1 px border so the edge counts as background
        canvas[points[:, 1] - y + 1, points[:, 0] - x + 1] = 1
        dist = cv2.distanceTransform(canvas, cv2.DIST_L2, 3)
        ridge = cv2.compare(dist, cv2.dilate(dist, kernel), cv2.CMP_GE) & (canvas * 255)
        # OpenCV calls rather than numpy reductions: this loop runs once per region.
        mean, std = (float(v[0, 0]) for v in cv2.meanStdDev(dist, mask=ridge))
        width[k] = 2.0 * cv2.minMaxLoc(dist)[1]
        spread[k] = std / max(mean, 1e-6)
    return width, spread


def _line_neighbours(boxes: npt.NDArray[np.float32]) -> npt.NDArray[np.bool_]:
    """(2, n, n): pairs next to each other on a horizontal line, and on a vertical line."""
    x, y, w, h = boxes.T
    adjacent = np.zeros((2, len(boxes), len(boxes)), bool)
    # A horizontal line compares heights and vertical centres, a vertical one the transpose.
    for k, (lo, extent, across, thickness) in enumerate(((x, w, y, h), (y, h, x, w))):
        size = np.maximum(thickness[:, None], thickness[None, :])
        similar = size <= _SIZE_RATIO * np.minimum(thickness[:, None], thickness[None, :])
        centre = across + thickness / 2
        aligned = np.abs(centre[:, None] - centre[None, :]) <= _ALIGN_TOLERANCE * size
        gap = (np.maximum(lo[:, None], lo[None, :])
               - np.minimum((lo + extent)[:, None], (lo + extent)[None, :]))
        # A negative gap past a third of the narrower box is the same character found at
        # two MSER levels, not a neighbour.
        near = (gap <= _MAX_GAP * size) & (gap >= -np.minimum(extent[:, None], extent[None, :]) / 3)
        # A letter is at most ~1.2x as long along its line as it is tall (m, w).
        letter = extent <= _MAX_LETTER_EXTENT * thickness
        adjacent[k] = similar & aligned & near & letter[:, None] & letter[None, :]
        np.fill_diagonal(adjacent[k], False)
    return adjacent


def _in_lines(adjacent: npt.NDArray[np.bool_], solid: npt.NDArray[np.bool_] | None = None
              ) -> npt.NDArray[np.bool_]:
    """(2, n): which nodes belong to a horizontal / vertical line of at least ``_MIN_GROUP``.

    With ``solid`` (n,), lines made mostly of solid bars are refused: cells of a wire shelf
    or stripes line up like letters, but a word has only a few solid members (i, l, I).
    Lines of one orientation only: a chain turning a corner is not a line of text.
    """
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    result = np.zeros(adjacent.shape[:2], bool)
    for k, pairs in enumerate(adjacent):
        labels = connected_components(csr_matrix(pairs), directed=False)[1]
        members = np.bincount(labels, minlength=len(labels))
        line = members >= _MIN_GROUP
        if solid is not None:
            line &= np.bincount(labels, weights=solid, minlength=len(labels)) <= (
                _MAX_SOLID_SHARE * members)
        result[k] = line[labels]
    return result


def text_lines(gray: npt.NDArray[np.uint8], min_height: int = 6
               ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
    """Text in a grey image: boxes (n, 4) as x, y, w, h of characters on lines and of words
    found as one region, and which pairs are neighbours on a line (n, n)."""
    regions, boxes, fill = _mser_candidates(gray, min_height)
    long_side = np.maximum(boxes[:, 2], boxes[:, 3]).astype(np.float32)
    short_side = np.minimum(boxes[:, 2], boxes[:, 3]).astype(np.float32)
    # Blur and small print merge a word's letters into one region with no neighbours.
    wordlike = ((long_side >= _WORD_ELONGATION * short_side)
                & (fill >= _WORD_FILL[0]) & (fill <= _WORD_FILL[1]))
    # Grouping is cheap and vectorised; the per-region stroke test (a Python loop) runs only
    # on candidates already in a line or shaped like a word, then lines are formed again.
    adjacent = _line_neighbours(boxes.astype(np.float32))
    keep = np.flatnonzero(_in_lines(adjacent).any(axis=0) | wordlike)
    width, spread = _stroke_widths([regions[i] for i in keep], boxes[keep])
    even = (width <= _MAX_STROKE_RATIO * long_side[keep]) & (spread <= _MAX_STROKE_VARIATION)
    # A word's strokes are thin across its height too; a straight bar's fill it.
    word = wordlike[keep] & (width <= _WORD_STROKE_RATIO * short_side[keep])
    keep, word = keep[even], word[even]
    adjacent = adjacent[:, keep][:, :, keep]
    lines = _in_lines(adjacent, fill[keep] > _SOLID_FILL)
    chosen = lines.any(axis=0) | word
    # Neighbours on a kept line (of the orientation that kept them) get the gap filled.
    pairs = (adjacent & lines[:, :, None] & lines[:, None, :]).any(axis=0)
    return boxes[keep][chosen].astype(np.float32), pairs[np.ix_(chosen, chosen)]


def text_boxes_mask(rgb: npt.NDArray[np.uint8], min_height: int = 6) -> FloatMap:
    """Binary text mask (H, W) of one RGB uint8 image: the boxes of characters on text lines
    and the spaces between neighbouring characters."""
    import cv2

    boxes, adjacent = text_lines(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), min_height)
    corners = np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1).astype(int)
    # A pair's spanning box covers its own two boxes and the space between them.
    first, second = np.nonzero(np.triu(adjacent))
    spans = np.concatenate([np.minimum(corners[first, :2], corners[second, :2]),
                            np.maximum(corners[first, 2:], corners[second, 2:])], axis=1)
    mask = np.zeros(rgb.shape[:2], np.float32)
    for x0, y0, x1, y1 in np.concatenate([corners, spans]):
        mask[y0:y1, x0:x1] = 1.0
    return mask
