"""The images of a rendered pack: the clean catalogue shot, and a shopper photo with clutter,
warp, occlusion, lighting, blur and noise. All randomness comes from the ``rng`` passed in."""

from __future__ import annotations

import math

import cv2
import numpy as np
import numpy.typing as npt

from manet.tools.synthetic_packs import Array


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
