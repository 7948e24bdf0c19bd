"""Pure pooling functions on tiny maps with hand-computed values, and the pooling plugins."""

from __future__ import annotations

import math

import pytest
import torch

from manet.errors import PluginError
from manet.nn.pooling import amac, gem, l2_normalize, mac, ramac, rmac, spoc, srmac
from manet.plugins.poolings import POOLINGS, register_poolings

R2 = math.sqrt(2.0)


def cells(a, b, c, d) -> torch.Tensor:
    """A (1, 2, 2, 2) map from its four cell vectors: a=(0,0), b=(0,1), c=(1,0), d=(1,1)."""
    return torch.tensor([a, b, c, d], dtype=torch.float32).T.reshape(1, 2, 2, 2)


# Cells a=(3,4), b=(1,0), c=(0,2), d=(4,3); normalised: a=(.6,.8), b=(1,0), c=(0,1),
# d=(.8,.6); channel sums 7, 1, 2, 7 (mean 4.25).
X1 = cells((3, 4), (1, 0), (0, 2), (4, 3))

# Regions of a 2x2 map (see test_regions.test_2x2_exact) plus the global one:
# global, level 1 (= global), level 2: a, b, c, d; level 3: a a b / a a b / c c d.
# So each region sum is 2*G + 5*A + 3*B + 3*C + 2*D with G the global term.


def close(actual: torch.Tensor, expected) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype),
                               atol=1e-4, rtol=1e-4)


def test_l2_normalize() -> None:
    close(l2_normalize(torch.tensor([[3.0, 4.0], [0.0, 0.0]])), [[0.6, 0.8], [0.0, 0.0]])


def test_mac_and_spoc() -> None:
    close(mac(X1), [[4.0, 4.0]])  # max(3,1,0,4), max(4,0,2,3)
    close(spoc(X1), [[2.0, 2.25]])  # (3+1+0+4)/4, (4+0+2+3)/4


def test_gem() -> None:
    # p = 3: channel 0 cubes 27 + 1 + (1e-6)^3 + 64 = 92; channel 1: 64 + 1e-18 + 8 + 27 = 99.
    expected = [[(92 / 4) ** (1 / 3), (99 / 4) ** (1 / 3)]]
    close(gem(X1), expected)
    close(gem(X1, p=torch.tensor([3.0])), expected)
    close(gem(X1, p=torch.tensor(3.0)), expected)
    # p = 1 is average pooling (on positive values, where the clamp does nothing).
    x = torch.rand(2, 5, 4, 3) + 0.1
    torch.testing.assert_close(gem(x, p=1.0), x.mean(dim=(2, 3)))


def test_gem_learnable_p_gets_gradient() -> None:
    p = torch.nn.Parameter(torch.tensor([3.0]))
    gem(torch.rand(2, 3, 4, 4) + 0.1, p=p).sum().backward()
    assert p.grad is not None and p.grad.shape == (1,)


def test_rmac() -> None:
    # G = (4,4)/|.| = (1/√2, 1/√2); 2G + 5(.6,.8) + 3(1,0) + 3(0,1) + 2(.8,.6)
    close(rmac(X1), [[R2 + 3 + 3 + 1.6, R2 + 4 + 3 + 1.2]])


def test_ramac_weights_and_one_third_floor() -> None:
    # X1: above-mean cells a, d. Weights: global and level 1 2/4 = .5, a = d = 1, b = c = 0:
    # 2*.5*G + 5*(.6,.8) + 2*(.8,.6).
    # X2: cells a=(3,4), b=(1,0), c=(0,2), d=(1,1); sums 7, 1, 2, 2, mean 3 -> only a.
    # Global and level 1 weight 1/4 <= 1/3 -> 0; a has weight 1 and 5 copies: 5*(.6,.8).
    x2 = cells((3, 4), (1, 0), (0, 2), (1, 1))
    close(ramac(torch.cat([X1, x2])), [[R2 / 2 + 4.6, R2 / 2 + 5.2], [3.0, 4.0]])


def test_ramac_constant_activation_is_rmac() -> None:
    x = cells((1, 0), (0, 1), (0.5, 0.5), (1, 0))  # every channel sum is 1: empty mask
    torch.testing.assert_close(ramac(x), rmac(x))


def test_amac() -> None:
    # Cells a=(6,1), b=(6,1), c=(0,4), d=(0,0): sums 7, 7, 4, 0, mean 4.5 -> a, b.
    # AMAC = max over a, b = (6, 1) while MAC would be (6, 4).
    close(amac(cells((6, 1), (6, 1), (0, 4), (0, 0))), [[6.0, 1.0]])
    # Equal channel sums: empty mask -> plain MAC = (1, 1).
    close(amac(cells((1, 0), (0, 1), (0.5, 0.5), (1, 0))), [[1.0, 1.0]])


SRMAC_A = [3 + R2 / 4, 4 + R2 / 4]
"""SR-MAC of X1 with S = {a}: weights global = level 1 = 1/4, a = 1, others 0:
2 * (1/4) * (1/√2, 1/√2) + 5 * (.6, .8)."""


def test_srmac_selected_region() -> None:
    saliency = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])  # mean .25 -> S = {a}
    close(srmac(X1, saliency), [SRMAC_A])


def test_srmac_resizes_saliency() -> None:
    # Bilinear 4x4 -> 2x2 (align_corners=False) samples at source (0.5, 0.5) etc., i.e. the
    # mean of each 2x2 block: the top-left block of ones gives [[1, 0], [0, 0]] again.
    saliency = torch.zeros(1, 1, 4, 4)
    saliency[..., :2, :2] = 1.0
    close(srmac(X1, saliency), [SRMAC_A])


def test_srmac_constant_saliency_is_rmac_per_image() -> None:
    x = torch.rand(3, 4, 7, 9)
    saliency = torch.rand(3, 1, 7, 9)
    saliency[1] = 0.5  # constant: S is empty -> uniform weights for this image only
    out = srmac(x, saliency)
    torch.testing.assert_close(out[1], rmac(x[1:2])[0])
    assert not torch.allclose(out[0], rmac(x[0:1])[0])
    # Batched result equals the per-image results.
    torch.testing.assert_close(out[2], srmac(x[2:3], saliency[2:3])[0])


def test_srmac_bad_saliency_shape() -> None:
    with pytest.raises(ValueError, match="saliency"):
        srmac(X1, torch.ones(1, 2, 2, 2))


# --- plugins -------------------------------------------------------------------------------


def registered() -> dict[str, type]:
    found: list[type] = []
    register_poolings(found.append)
    return {cls.name: cls for cls in found}


def test_plugins_registered() -> None:
    plugins = registered()
    assert set(plugins) == {"mac", "spoc", "gem", "rmac", "ramac", "amac", "srmac"}
    assert [name for name, cls in plugins.items() if cls.uses_saliency] == ["srmac"]
    assert all(cls.description and "\n" not in cls.description for cls in POOLINGS)


@pytest.mark.parametrize("cls", POOLINGS, ids=lambda cls: cls.name)
def test_plugin_module_shape(cls: type) -> None:
    features = torch.rand(2, 8, 5, 6)
    saliency = torch.rand(2, 1, 5, 6)
    out = cls().module()(features, saliency if cls.uses_saliency else None)
    assert out.shape == (2, 8)


@pytest.mark.parametrize(
    ("name", "params"),
    [("mac", {"levels": 3}), ("rmac", {"level": 3}), ("rmac", {"levels": "many"}),
     ("rmac", {"levels": 0}), ("srmac", {"overlap": 1.5}), ("gem", {"p": -1.0})],
)
def test_plugin_bad_parameters(name: str, params: dict) -> None:
    with pytest.raises(PluginError):
        registered()[name](**params)


def test_plugin_params_coerced_and_forwarded() -> None:
    plugins = registered()
    pool = plugins["rmac"](levels="1")  # CLI strings are coerced to the default's type
    x = torch.rand(1, 3, 4, 4)
    # One level on a square map: global + one full region, both the same normalised MAC.
    torch.testing.assert_close(pool.module()(x), 2 * l2_normalize(mac(x)))


def test_srmac_module_needs_saliency() -> None:
    with pytest.raises(ValueError, match="saliency"):
        registered()["srmac"]().module()(torch.rand(1, 2, 3, 3))


def test_gem_module_learnable() -> None:
    plugins = registered()
    fixed = plugins["gem"]().module()
    learnable = plugins["gem"](learnable=True, p=2.0).module()
    assert list(fixed.parameters()) == []
    (p,) = learnable.parameters()
    assert p.requires_grad and p.item() == 2.0
    x = torch.rand(2, 3, 4, 4) + 0.1
    torch.testing.assert_close(learnable(x), gem(x, p=2.0))
