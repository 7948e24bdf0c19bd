"""Rendering a synthetic product's pack (bottle, tube, box or jar) with its label, logo and
brand word, as a straight-alpha RGBA image centred in a square frame."""

from __future__ import annotations

import math
from functools import lru_cache

import cv2
import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont

from manet.tools.synthetic_specs import RGB, PackSpec

Box = tuple[float, float, float, float]
Array = npt.NDArray[np.uint8]
_SUPERSAMPLE = 2  # packs are drawn at 2x and downsampled: PIL polygons are not anti-aliased


@lru_cache(maxsize=64)
def _font(px: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=px)  # scalable font, Pillow >= 10.1 with FreeType
    except (TypeError, OSError, AttributeError, ImportError):
        return ImageFont.load_default()  # small bitmap font; _draw_text scales it up


def _shade(c: RGB, f: float) -> RGB:
    return tuple(int(min(255, max(0, round(x * f)))) for x in c)  # type: ignore[return-value]


def _ink(bg: RGB) -> RGB:
    """Near-black or near-white, whichever reads better on ``bg``."""
    lum = 0.299 * bg[0] + 0.587 * bg[1] + 0.114 * bg[2]
    return (25, 25, 30) if lum > 140 else (250, 250, 245)


def _draw_text(img: Image.Image, text: str, box: Box, colour: RGB, vertical: bool = False) -> None:
    """Print ``text`` as large as fits in ``box`` (centred), optionally rotated 90 degrees."""
    x0, y0, x1, y1 = box
    bw, bh = x1 - x0, y1 - y0
    if bw < 2 or bh < 2:
        return
    font = _font(int(min(max(min(bw, bh), 8), 128)))  # then resized to fit exactly
    left, top, right, bottom = font.getbbox(text)
    mask = Image.new("L", (right - left + 4, bottom - top + 4), 0)
    ImageDraw.Draw(mask).text((2 - left, 2 - top), text, fill=255, font=font)
    if vertical:
        mask = mask.transpose(Image.Transpose.ROTATE_90)
    # Rendering once and resizing to fit works the same for scalable and bitmap fonts.
    scale = min(bw / mask.width, bh / mask.height)
    w, h = max(1, int(mask.width * scale)), max(1, int(mask.height * scale))
    mask = mask.resize((w, h), Image.Resampling.LANCZOS)
    img.paste(colour, (int(x0 + (bw - w) / 2), int(y0 + (bh - h) / 2)), mask)


def _draw_logo(draw: ImageDraw.ImageDraw, kind: str, cx: float, cy: float, r: float, fill: RGB) -> None:
    if kind == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        return
    if kind == "star":
        pts = [
            (cx + (r if k % 2 == 0 else r * 0.45) * math.sin(k * math.pi / 5),
             cy - (r if k % 2 == 0 else r * 0.45) * math.cos(k * math.pi / 5))
            for k in range(10)
        ]  # fmt: skip
    elif kind == "triangle":
        pts = [(cx, cy - r), (cx + r * 0.95, cy + r * 0.7), (cx - r * 0.95, cy + r * 0.7)]
    else:  # diamond
        pts = [(cx, cy - r), (cx + r * 0.75, cy), (cx, cy + r), (cx - r * 0.75, cy)]
    draw.polygon(pts, fill=fill)


def _silhouette(spec: PackSpec, size: int) -> tuple[Image.Image, Image.Image, Box, bool]:
    """Draw the pack's body, cap/lid and faces; return (rgb, mask, label box, is_round)."""
    img = Image.new("RGB", (size, size), (255, 255, 255))
    mask = Image.new("L", (size, size), 0)
    di, dm = ImageDraw.Draw(img), ImageDraw.Draw(mask)
    ws, hs = spec.width_scale, spec.height_scale

    def p(x: float, y: float) -> tuple[float, float]:
        # Fractions of the frame -> pixels, with the product's proportion jitter about the centre.
        return (0.5 + (x - 0.5) * ws) * size, (0.5 + (y - 0.5) * hs) * size

    def bx(x0: float, y0: float, x1: float, y1: float) -> Box:
        return (*p(x0, y0), *p(x1, y1))

    def part(kind: str, xy: object, fill: RGB, **kw: float) -> None:
        getattr(di, kind)(xy, fill=fill, **kw)
        getattr(dm, kind)(xy, fill=255, **kw)

    body, cap, r = spec.body, spec.accent2, size * 0.06
    if spec.shape == "bottle":
        part("ellipse", bx(0.30, 0.22, 0.70, 0.48), body)
        part("rounded_rectangle", bx(0.30, 0.34, 0.70, 0.92), body, radius=r)
        part("rectangle", bx(0.44, 0.15, 0.56, 0.26), body)
        part("rounded_rectangle", bx(0.42, 0.07, 0.58, 0.17), cap, radius=r / 3)
        return img, mask, bx(0.30, 0.46, 0.70, 0.86), True
    if spec.shape == "tube":
        part("rectangle", bx(0.27, 0.07, 0.73, 0.15), _shade(body, 0.8))
        part("polygon", [p(0.27, 0.15), p(0.73, 0.15), p(0.64, 0.80), p(0.36, 0.80)], body)
        part("rounded_rectangle", bx(0.39, 0.79, 0.61, 0.93), cap, radius=r / 3)
        for k in range(1, 6):  # crimp ridges
            y = 0.07 + 0.08 * k / 6
            di.line([p(0.27, y), p(0.73, y)], fill=_shade(body, 0.65), width=max(1, size // 160))
        return img, mask, bx(0.31, 0.20, 0.69, 0.58), True
    if spec.shape == "box":
        part("rectangle", bx(0.24, 0.20, 0.66, 0.90), body)
        part("polygon", [p(0.24, 0.20), p(0.36, 0.11), p(0.78, 0.11), p(0.66, 0.20)], _shade(body, 1.18))
        part("polygon", [p(0.66, 0.20), p(0.78, 0.11), p(0.78, 0.81), p(0.66, 0.90)], _shade(body, 0.65))
        return img, mask, bx(0.24, 0.24, 0.66, 0.88), False
    # jar
    part("rounded_rectangle", bx(0.18, 0.31, 0.82, 0.88), body, radius=r * 1.3)
    part("rounded_rectangle", bx(0.22, 0.18, 0.78, 0.34), cap, radius=r / 3)
    for k in range(1, 8):  # lid ridges
        x = 0.22 + 0.56 * k / 8
        di.line([p(x, 0.19), p(x, 0.33)], fill=_shade(cap, 0.7), width=max(1, size // 128))
    return img, mask, bx(0.18, 0.43, 0.82, 0.80), True


def _draw_label(img: Image.Image, spec: PackSpec, box: Box) -> None:
    """Label layout: where the accent colour, the logo and the two lines of text go."""
    draw = ImageDraw.Draw(img)
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    pad = 0.07 * w
    small = spec.adjective.upper()
    if spec.layout == "band":
        band = (x0, y0 + 0.25 * h, x1, y0 + 0.62 * h)
        draw.rectangle(band, fill=spec.accent)
        _draw_logo(draw, spec.logo, x0 + w / 2, y0 + 0.12 * h, 0.1 * h, spec.accent2)
        brand_box = (x0 + pad, band[1] + 0.05 * h, x1 - pad, band[3] - 0.05 * h)
        _draw_text(img, spec.brand, brand_box, _ink(spec.accent))
        _draw_text(img, small, (x0 + 2 * pad, y0 + 0.68 * h, x1 - 2 * pad, y0 + 0.86 * h), _ink(spec.body))
    elif spec.layout == "split":
        draw.rectangle((x0, y0, x1, y0 + 0.45 * h), fill=spec.accent)
        draw.line((x0, y0 + 0.45 * h, x1, y0 + 0.45 * h), fill=spec.accent2, width=max(1, int(0.03 * h)))
        _draw_logo(draw, spec.logo, x0 + w / 2, y0 + 0.22 * h, 0.15 * h, spec.accent2)
        _draw_text(img, spec.brand, (x0 + pad, y0 + 0.52 * h, x1 - pad, y0 + 0.78 * h), _ink(spec.body))
        _draw_text(img, small, (x0 + 2 * pad, y0 + 0.82 * h, x1 - 2 * pad, y0 + 0.96 * h), _ink(spec.body))
    elif spec.layout == "panel":
        panel = (x0 + pad, y0 + 0.08 * h, x1 - pad, y1 - 0.08 * h)
        edge = max(1, int(0.04 * w))
        draw.rounded_rectangle(panel, radius=0.1 * w, fill=(250, 248, 240), outline=spec.accent, width=edge)
        _draw_logo(draw, spec.logo, x0 + w / 2, y0 + 0.25 * h, 0.1 * h, spec.accent)
        brand_box = (x0 + 2 * pad, y0 + 0.40 * h, x1 - 2 * pad, y0 + 0.66 * h)
        _draw_text(img, spec.brand, brand_box, _shade(spec.accent, 0.8))
        _draw_text(img, small, (x0 + 3 * pad, y0 + 0.70 * h, x1 - 3 * pad, y0 + 0.84 * h), (60, 60, 60))
    else:  # vertical: accent side stripes, brand printed bottom-to-top
        sw = 0.14 * w
        draw.rectangle((x0, y0, x0 + sw, y1), fill=spec.accent)
        draw.rectangle((x1 - sw, y0, x1, y1), fill=spec.accent)
        _draw_logo(draw, spec.logo, x0 + w / 2, y0 + 0.1 * h, 0.08 * h, spec.accent2)
        ink, split = _ink(spec.body), x0 + 0.62 * w
        _draw_text(img, spec.brand, (x0 + sw + pad / 2, y0 + 0.2 * h, split, y1), ink, vertical=True)
        _draw_text(img, small, (split, y0 + 0.2 * h, x1 - sw - pad / 2, y1), ink, vertical=True)


def _cylinder_shading(rgb: npt.NDArray[np.float32], alpha: npt.NDArray[np.float32]) -> None:
    """Darken towards the pack's left/right edges and add a highlight, in place."""
    cols = np.nonzero(alpha.max(axis=0) > 0)[0]
    if cols.size == 0:
        return
    t = np.clip((np.arange(rgb.shape[1]) - cols[0]) / max(1, cols[-1] - cols[0]), 0, 1)
    profile = 0.72 + 0.28 * np.sin(np.pi * t) + 0.18 * np.exp(-(((t - 0.3) / 0.07) ** 2))
    rgb *= profile[None, :, None].astype(np.float32)


def render_pack(spec: PackSpec, size: int) -> Array:
    """Render a pack as a straight-alpha RGBA uint8 array of shape (size, size, 4), centred."""
    big = size * _SUPERSAMPLE
    img, mask, label, round_ = _silhouette(spec, big)
    _draw_label(img, spec, label)
    # Downsample premultiplied colour so edges do not pick up the white canvas colour.
    a = np.asarray(mask, dtype=np.float32) / 255.0
    pre = np.asarray(img, dtype=np.float32) * a[..., None]
    pre = cv2.resize(pre, (size, size), interpolation=cv2.INTER_AREA)
    a = cv2.resize(a, (size, size), interpolation=cv2.INTER_AREA)
    rgb = pre / np.maximum(a, 1e-6)[..., None]
    if round_:
        _cylinder_shading(rgb, a)
    out = np.empty((size, size, 4), dtype=np.uint8)
    out[..., :3] = np.clip(rgb, 0, 255).round().astype(np.uint8)
    out[..., 3] = np.clip(a * 255, 0, 255).round().astype(np.uint8)
    return out
