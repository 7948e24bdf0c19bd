"""Training-free saliency estimators on synthetic images of a square object."""

from __future__ import annotations

import pytest
import torch

from manet.errors import PluginError
from manet.plugins.saliency import SALIENCY_ESTIMATORS, register_saliency_estimators

# (height, width, top, left, side, object value, background value)
SCENES = [
    (64, 64, 20, 20, 17, 0.9, 0.3),  # bright square, centre
    (48, 80, 6, 50, 14, 1.0, 0.2),   # non-square image, off-centre square
    (96, 72, 30, 10, 24, 0.1, 0.95),  # dark product on a white background
]


def scene(height: int, width: int, top: int, left: int, side: int, fg: float, bg: float):
    image = torch.full((1, 3, height, width), bg)
    image[..., top : top + side, left : left + side] = fg
    mask = torch.zeros(height, width, dtype=torch.bool)
    mask[top : top + side, left : left + side] = True
    return image, mask


def registered() -> dict[str, type]:
    found: list[type] = []
    register_saliency_estimators(found.append)
    return {cls.name: cls for cls in found}


def test_registered() -> None:
    assert set(registered()) == {"spectral-residual", "frequency-tuned"}


@pytest.mark.parametrize("cls", SALIENCY_ESTIMATORS, ids=lambda cls: cls.name)
@pytest.mark.parametrize("spec", SCENES)
def test_object_more_salient_than_background(cls: type, spec: tuple) -> None:
    image, mask = scene(*spec)
    saliency = cls().estimate(image)
    assert saliency.shape == (1, 1, *image.shape[2:])
    assert saliency.min() >= 0.0 and saliency.max() <= 1.0
    assert saliency[0, 0][mask].mean() > saliency[0, 0][~mask].mean()


@pytest.mark.parametrize("cls", SALIENCY_ESTIMATORS, ids=lambda cls: cls.name)
def test_batch_of_two(cls: type) -> None:
    first, first_mask = scene(*SCENES[0])
    second, second_mask = scene(64, 64, 5, 40, 12, 0.0, 0.7)
    saliency = cls().estimate(torch.cat([first, second]))
    assert saliency.shape == (2, 1, 64, 64)
    assert saliency.min() >= 0.0 and saliency.max() <= 1.0
    for maps, mask in zip(saliency[:, 0], (first_mask, second_mask)):
        assert maps[mask].mean() > maps[~mask].mean()
    # Batched equals one at a time.
    torch.testing.assert_close(saliency[1:], cls().estimate(second), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("cls", SALIENCY_ESTIMATORS, ids=lambda cls: cls.name)
def test_flat_image_and_bad_input(cls: type) -> None:
    flat = cls().estimate(torch.full((1, 3, 20, 30), 0.5))
    assert flat.shape == (1, 1, 20, 30) and torch.isfinite(flat).all()
    with pytest.raises(ValueError):
        cls().estimate(torch.rand(1, 1, 8, 8))


def test_parameters_validated() -> None:
    plugins = registered()
    assert plugins["spectral-residual"](size="32").params["size"] == 32
    with pytest.raises(PluginError):
        plugins["spectral-residual"](radius=3)
    with pytest.raises(PluginError):
        plugins["frequency-tuned"](sigma=0)
