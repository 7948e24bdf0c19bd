"""The synthetic products' specs: what identifies one product's look and text (shape, label
layout, logo, colours, a made-up brand word and its title), drawn deterministically from a seed."""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np

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
