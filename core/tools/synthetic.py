"""Synthetic product catalogue for the offline demo and tests.

Each product is a rendered pack (bottle, tube, box or jar) with its own colour scheme, label
layout, logo and a made-up brand word printed on it. The catalogue image shows the pack
centred on a plain light background; "shopper photos" put the same pack on a cluttered
background with random scale, rotation, perspective, occlusion, lighting and blur, so the
retrieval task is cross-domain like Perfect-500K, only smaller.

Everything is deterministic for a seed: all randomness comes from ``numpy.random.Generator``
objects seeded from ``(seed, purpose, indices)``; no global RNG state is touched.
"""

from __future__ import annotations

import colorsys
import csv
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "MANIFEST_COLUMNS",
    "SHAPES",
    "PackSpec",
    "catalogue_image",
    "clutter_background",
    "generate_catalogue",
    "make_specs",
    "render_pack",
    "shopper_photo",
]

MANIFEST_COLUMNS = ("sku", "image", "title", "brand", "description", "category", "domain", "split")
SHAPES = ("bottle", "tube", "box", "jar")
LAYOUTS = ("band", "split", "panel", "vertical")
LOGOS = ("circle", "triangle", "diamond", "star")
NOUNS = {
    "bottle": ("Shampoo", "Body Lotion", "Orange Juice", "Shower Gel", "Olive Oil"),
    "tube": ("Toothpaste", "Hand Cream", "Sunscreen", "Face Wash", "Tomato Paste"),
    "box": ("Cereal", "Green Tea", "Crackers", "Detergent", "Chocolate Biscuits"),
    "jar": ("Strawberry Jam", "Honey", "Peanut Butter", "Night Cream", "Pickles"),
}
ADJECTIVES = (
    "Fresh", "Classic", "Organic", "Gentle", "Extra", "Pure", "Golden", "Natural",
    "Intense", "Daily", "Premium", "Light", "Family", "Sensitive", "Rich", "Crispy",
)  # fmt: skip
CLAIMS = (
    "made for everyday use",
    "with natural ingredients",
    "now in a bigger pack",
    "trusted by families",
    "with no added preservatives",
    "for a lasting fresh feeling",
)
_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z",
           "br", "kr", "st", "tr", "pl", "sh")  # fmt: skip
_VOWELS = ("a", "e", "i", "o", "u", "ai", "o", "a")
_CODAS = ("", "", "", "n", "x", "s", "r", "l")
_HUE_NAMES = ((0.04, "red"), (0.10, "orange"), (0.18, "yellow"), (0.42, "green"), (0.52, "teal"),
              (0.70, "blue"), (0.80, "purple"), (0.93, "pink"), (1.01, "red"))  # fmt: skip

RGB = tuple[int, int, int]
Box = tuple[float, float, float, float]
Array = npt.NDArray[np.uint8]
_SUPERSAMPLE = 2  # packs are drawn at 2x and downsampled: PIL polygons are not anti-aliased


@dataclass(frozen=True)
class PackSpec:
    """Everything that identifies one product's look and text."""

    sku: str
    shape: str
    layout: str
    logo: str
    brand: str
    adjective: str
    noun: str
    body: RGB  # pack colour
    accent: RGB  # label / stripe colour
    accent2: RGB  # cap, lid and logo colour
    colour_name: str
    accent_name: str
    claim: str
    width_scale: float  # proportions jitter, so packs of one shape still differ
    height_scale: float

    @property
    def title(self) -> str:
        return f"{self.brand} {self.adjective} {self.noun}"

    @property
    def description(self) -> str:
        return (
            f"{self.title} in a {self.colour_name} {self.shape} with a {self.accent_name} label, "
            f"{self.claim}."
        )


# ----------------------------------------------------------------------------- specs


def _brand_word(rng: np.random.Generator) -> str:
    syllables = int(rng.integers(2, 4))
    word = "".join(str(rng.choice(_ONSETS)) + str(rng.choice(_VOWELS)) for _ in range(syllables))
    return (word + str(rng.choice(_CODAS))).capitalize()


def _hsv(h: float, s: float, v: float) -> RGB:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return int(r * 255), int(g * 255), int(b * 255)


def _hue_name(h: float, s: float, v: float) -> str:
    if s < 0.2:
        return "grey" if v < 0.8 else "white"
    name = next(n for limit, n in _HUE_NAMES if h % 1.0 < limit)
    return f"dark {name}" if v < 0.45 else name


def make_specs(products: int, seed: int = 0) -> list[PackSpec]:
    """Draw ``products`` distinct pack specs (unique brand words, spread-out hues)."""
    rng = np.random.default_rng([seed, 0])
    hue0 = float(rng.random())
    shape_order = np.arange(len(SHAPES))
    brands: set[str] = set()
    specs: list[PackSpec] = []
    for i in range(products):
        brand = _brand_word(rng)
        while brand in brands or len(brand) > 9:  # unique, and short enough to print large
            brand = _brand_word(rng)
        brands.add(brand)
        # Golden-ratio hue steps keep neighbouring products' colours far apart.
        h = hue0 + i * 0.6180339887 + float(rng.uniform(-0.03, 0.03))
        s, v = float(rng.uniform(0.45, 0.95)), float(rng.uniform(0.45, 0.95))
        ha = h + float(rng.uniform(0.25, 0.75))
        # Accent brightness opposite to the body's so labels stand out.
        sa = float(rng.uniform(0.3, 1.0))
        va = float(rng.uniform(0.15, 0.4)) if v > 0.7 else float(rng.uniform(0.8, 1.0))
        if i % len(SHAPES) == 0:  # shuffled blocks keep the categories balanced
            shape_order = rng.permutation(len(SHAPES))
        shape = SHAPES[int(shape_order[i % len(SHAPES)])]
        specs.append(
            PackSpec(
                sku=f"syn{i:05d}",
                shape=shape,
                layout=str(rng.choice(LAYOUTS)),
                logo=str(rng.choice(LOGOS)),
                brand=brand,
                adjective=str(rng.choice(ADJECTIVES)),
                noun=str(rng.choice(NOUNS[shape])),
                body=_hsv(h, s, v),
                accent=_hsv(ha, sa, va),
                accent2=_hsv(*(float(x) for x in rng.uniform((h + 0.4, 0.2, 0.2), (h + 0.6, 0.9, 0.95)))),
                colour_name=_hue_name(h % 1.0, s, v),
                accent_name=_hue_name(ha % 1.0, sa, va),
                claim=str(rng.choice(CLAIMS)),
                width_scale=float(rng.uniform(0.85, 1.15)),
                height_scale=float(rng.uniform(0.9, 1.05)),
            )
        )
    return specs


# ----------------------------------------------------------------------------- pack rendering


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


# ----------------------------------------------------------------------------- images


def _composite(bg: npt.NDArray[np.float32], rgba: Array) -> npt.NDArray[np.float32]:
    a = rgba[..., 3:].astype(np.float32) / 255.0
    return bg * (1.0 - a) + rgba[..., :3].astype(np.float32) * a


def _to_uint8(img: npt.NDArray[np.float32]) -> Array:
    return np.clip(img, 0, 255).round().astype(np.uint8)


def catalogue_image(pack: Array, rng: np.random.Generator) -> Array:
    """The clean catalogue shot: the pack centred on a white or very light plain background."""
    tint = 255.0 - rng.uniform(0, 18) * (rng.random() < 0.5) - rng.uniform(0, 6, size=3)
    bg = np.broadcast_to(tint.astype(np.float32), pack.shape[:2] + (3,))
    return _to_uint8(_composite(bg, pack))


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(0, 256, size=3))  # type: ignore[return-value]


def clutter_background(size: int, rng: np.random.Generator) -> Array:
    """A busy RGB scene: smooth colour noise plus random rectangles, ellipses, lines and text."""
    g = int(rng.integers(3, 8))
    coarse = rng.uniform(20, 235, size=(g, g, 3)).astype(np.float32)
    # Half-desaturate: real scenes are not rainbow noise, but keep enough colour to distract.
    coarse = 0.5 * coarse + 0.5 * coarse.mean(axis=2, keepdims=True)
    base = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    img = np.ascontiguousarray(_to_uint8(base))
    for _ in range(int(rng.integers(12, 26))):
        kind = rng.integers(0, 4)
        x, y = (int(v) for v in rng.integers(-size // 4, size + size // 4, size=2))
        w, h = (int(v) for v in rng.integers(size // 20, size // 2, size=2))
        thick = -1 if rng.random() < 0.6 else max(1, int(rng.integers(1, max(2, size // 40))))
        col = _colour(rng)
        if kind == 0:
            cv2.rectangle(img, (x, y), (x + w, y + h), col, thick)
        elif kind == 1:
            cv2.ellipse(img, (x, y), (w // 2, h // 2), float(rng.uniform(0, 180)), 0, 360, col, thick)
        elif kind == 2:
            cv2.line(img, (x, y), (x + w - size // 4, y + h - size // 4), col, max(1, abs(thick)))
        else:  # distractor text, as on shelf labels and neighbouring products
            word = "".join(chr(int(c)) for c in rng.integers(65, 91, size=int(rng.integers(3, 8))))
            scale = size / 256 * float(rng.uniform(0.4, 1.5))
            cv2.putText(img, word, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, col, max(1, size // 128))
    noise = rng.normal(0, rng.uniform(4, 14), size=img.shape)
    return _to_uint8(img.astype(np.float32) + noise.astype(np.float32))


def _place_pack(pack: Array, rng: np.random.Generator) -> Array:
    """Warp the pack with one homography: scale 0.5-0.9 of the frame, rotation +-25 deg, perspective."""
    size = pack.shape[0]
    ys, xs = np.nonzero(pack[..., 3])
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    src = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float32)
    extent = float(rng.uniform(0.5, 0.9)) * size
    scale = extent / max(x1 - x0, y1 - y0)
    theta = math.radians(float(rng.uniform(-25, 25)))
    c, s = math.cos(theta), math.sin(theta)
    rot = np.array([[c, -s], [s, c]], dtype=np.float32)
    slack = 0.35 * (size - extent)  # keeps most of the rotated pack inside the frame
    centre = size / 2 + rng.uniform(-slack, slack, size=2)
    dst = (src - src.mean(axis=0)) * scale @ rot.T + centre
    dst += rng.uniform(-0.09, 0.09, size=(4, 2)) * extent  # corner jitter = perspective
    h = cv2.getPerspectiveTransform(src, dst.astype(np.float32))
    # Premultiply before warping so bilinear edges blend towards transparent, not white.
    a = pack[..., 3:].astype(np.float32) / 255.0
    pre = np.concatenate([pack[..., :3].astype(np.float32) * a, a * 255.0], axis=2)
    warped = cv2.warpPerspective(
        pre, h, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    )
    wa = np.clip(warped[..., 3:] / 255.0, 0, 1)
    out = np.empty_like(pack)
    out[..., :3] = _to_uint8(warped[..., :3] / np.maximum(wa, 1e-6))
    out[..., 3:] = _to_uint8(wa * 255.0)
    return out


def _occluder(pack_mask: npt.NDArray[np.bool_], rng: np.random.Generator) -> npt.NDArray[np.float32]:
    """A soft rectangle or blob covering ~10-25% of the visible pack (0..1 float mask)."""
    size = pack_mask.shape[0]
    area = int(pack_mask.sum())
    occ = np.zeros(pack_mask.shape, np.uint8)
    if area == 0:
        return occ.astype(np.float32)
    target = float(rng.uniform(0.10, 0.25))
    ys, xs = np.nonzero(pack_mask)
    k = int(rng.integers(0, area))
    cx, cy = float(xs[k]), float(ys[k])
    angle = float(rng.uniform(0, 180))
    aspect = float(rng.uniform(0.4, 1.0))
    blob = rng.random() < 0.5
    lobes = rng.uniform(-0.8, 0.8, size=(int(rng.integers(2, 5)), 2))
    radius = math.sqrt(target * area / math.pi)
    for _ in range(4):  # rescale until the covered fraction is close to the target
        occ[:] = 0
        if blob:
            for dx, dy in lobes:
                centre = (int(cx + dx * radius), int(cy + dy * radius))
                cv2.circle(occ, centre, max(1, int(radius * 0.8)), 1, -1)
        else:
            rect = ((cx, cy), (2 * radius, 2 * radius * aspect), angle)
            cv2.fillPoly(occ, [cv2.boxPoints(rect).astype(np.int32)], 1)
        covered = (occ.astype(bool) & pack_mask).sum() / area
        if abs(covered - target) < 0.02 or covered == 0:
            break
        radius *= math.sqrt(target / covered)
    return cv2.GaussianBlur(occ.astype(np.float32), (0, 0), max(0.5, size / 256))


def _lighting(img: npt.NDArray[np.float32], rng: np.random.Generator) -> npt.NDArray[np.float32]:
    """Contrast, brightness, colour cast, a directional light ramp and gamma, on a 0..1 image."""
    size = img.shape[0]
    contrast, bright = rng.uniform(0.7, 1.2), rng.uniform(-0.12, 0.12)
    cast = (1.0 + rng.uniform(-0.12, 0.12, size=3)).astype(np.float32)
    gx, gy = rng.uniform(-0.25, 0.25, size=2)
    lin = np.linspace(-0.5, 0.5, size, dtype=np.float32)
    ramp = 1.0 + gx * lin[None, :] + gy * lin[:, None]
    out = ((img - 0.5) * contrast + 0.5 + bright) * cast * ramp[..., None]
    return np.clip(out, 0, 1) ** np.float32(math.exp(rng.uniform(-0.35, 0.35)))


def shopper_photo(pack: Array, rng: np.random.Generator) -> Array:
    """A hard but recognisable photo of ``pack``: clutter, warp, occlusion, lighting, blur, noise."""
    size = pack.shape[0]
    bg = clutter_background(size, rng).astype(np.float32)
    placed = _place_pack(pack, rng)
    img = _composite(bg, placed)
    occ = _occluder(placed[..., 3] > 127, rng)[..., None]
    # The occluder is a flat-ish object (hand, other product): a colour with a little gradient.
    shade = np.linspace(0.8, 1.1, size, dtype=np.float32)[:, None, None]
    occ_col = np.asarray(_colour(rng), np.float32) * shade
    img = img * (1.0 - occ) + occ_col * occ
    img = _lighting(img / 255.0, rng)
    img = cv2.GaussianBlur(img, (0, 0), float(rng.uniform(0.3, 1.8)) * size / 256)
    img = img + rng.normal(0, rng.uniform(0.005, 0.025), size=img.shape).astype(np.float32)
    return _to_uint8(img * 255.0)


def _save_jpeg(arr: Array, path: Path, quality: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format="JPEG", quality=quality)


def generate_catalogue(
    out_dir: Path, products: int = 50, photos_per_product: int = 2, size: int = 256, seed: int = 0,
    train_photos_per_product: int = 0,
) -> Path:
    """Write catalogue images, shopper photos and ``manifest.csv`` under ``out_dir``.

    One manifest row per image with columns ``MANIFEST_COLUMNS``; image paths are relative
    to the manifest's folder. Catalogue rows: ``domain=catalog``, empty split; photo rows:
    ``domain=query``, ``split=val``; ``train_photos_per_product`` more photos per product with
    ``split=train`` (training material, never evaluation queries). Returns the manifest path.
    """
    if products < 1 or photos_per_product < 0 or train_photos_per_product < 0 or size < 32:
        raise ValueError("need products >= 1, photos_per_product >= 0 and size >= 32")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, str]] = []
    for i, spec in enumerate(make_specs(products, seed)):
        # Independent streams per image: an image does not change when others are added.
        pack = render_pack(spec, size)
        common = {"sku": spec.sku, "title": spec.title, "brand": spec.brand,
                  "description": spec.description, "category": spec.shape}  # fmt: skip
        rel = f"catalog/{spec.sku}.jpg"
        _save_jpeg(catalogue_image(pack, np.random.default_rng([seed, 1, i])), out_dir / rel, 95)
        rows.append({**common, "image": rel, "domain": "catalog", "split": ""})
        for j in range(photos_per_product + train_photos_per_product):
            rng = np.random.default_rng([seed, 2, i, j])
            split = "val" if j < photos_per_product else "train"
            rel = f"{'query' if split == 'val' else 'train'}/{spec.sku}_{j}.jpg"
            _save_jpeg(shopper_photo(pack, rng), out_dir / rel, int(rng.integers(75, 93)))
            rows.append({**common, "image": rel, "domain": "query", "split": split})
    manifest = out_dir / "manifest.csv"
    with manifest.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return manifest
