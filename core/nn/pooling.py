"""Global poolings of a feature map: pure, batched tensor functions.

Every function takes ``x`` of shape (B, C, h, w) and returns (B, C). None of them
L2-normalises its final output; the pipeline does that (and optional whitening).
Regional poolings (R-MAC, RA-MAC, SR-MAC) take their regions from
:func:`manet.nn.regions.rmac_regions` plus the global region.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from manet.nn.regions import Region, rmac_regions

__all__ = [
    "PoolingModule",
    "all_regions",
    "amac",
    "gem",
    "l2_normalize",
    "mac",
    "ramac",
    "region_fraction",
    "rmac",
    "salient_cells",
    "spoc",
    "srmac",
    "srmac_weights",
]


def l2_normalize(x: Tensor, eps: float = 1e-6, dim: int = 1) -> Tensor:
    """Divide by the L2 norm along ``dim`` (+ ``eps``, so zero vectors stay zero)."""
    return x / (x.norm(p=2, dim=dim, keepdim=True) + eps)


def mac(x: Tensor) -> Tensor:
    """Global max pooling."""
    return x.amax(dim=(2, 3))


def spoc(x: Tensor) -> Tensor:
    """Sum pooling, computed as the mean (as cirtorch): it differs from the sum only by
    the factor h*w, which the final L2 normalisation removes, and keeps magnitudes
    independent of the image size."""
    return x.mean(dim=(2, 3))


def gem(x: Tensor, p: float | Tensor = 3.0, eps: float = 1e-6) -> Tensor:
    """Generalized mean pooling ``mean(clamp(x, eps)^p)^(1/p)``.

    ``p`` may be a float or a 0-d / 1-element tensor (e.g. a learnable parameter).
    """
    if isinstance(p, Tensor):
        p = p.reshape(())  # broadcast a 1-element parameter as a scalar
    return x.clamp(min=eps).pow(p).mean(dim=(2, 3)).pow(1.0 / p)


def above_mean(t: Tensor) -> Tensor:
    """Boolean mask of the positions of ``t`` (B, C, h, w) above their per-image, per-channel mean."""
    return t > t.mean(dim=(2, 3), keepdim=True)


def _all_if_empty(mask: Tensor) -> Tensor:
    """Select every position of the images whose ``mask`` (B, 1, h, w) is empty."""
    empty = ~mask.flatten(1).any(dim=1)
    return mask | empty.view(-1, 1, 1, 1)


def _activation_mask(x: Tensor) -> Tensor:
    """Positions whose channel-sum activation exceeds its spatial mean: (B, 1, h, w)."""
    return above_mean(x.sum(dim=1, keepdim=True))


def amac(x: Tensor) -> Tensor:
    """MAC over the above-mean activation mask; plain MAC for an image whose mask is empty."""
    mask = _all_if_empty(_activation_mask(x))
    return x.masked_fill(~mask, float("-inf")).amax(dim=(2, 3))


def all_regions(height: int, width: int, levels: int = 3, overlap: float = 0.4) -> list[Region]:
    """The global region followed by the R-MAC regions: every region a regional pooling sums."""
    return [(0, 0, height, width), *rmac_regions(height, width, levels, overlap)]


def _region_reduce(
    x: Tensor, regions: list[Region], reduce: Callable[[Tensor], Tensor]
) -> Tensor:
    """Apply ``reduce`` over the spatial dims of each region of ``x``: (B, R, C)."""
    return torch.stack(
        [reduce(x[:, :, t : t + h, l : l + w]) for t, l, h, w in regions], dim=1
    )


def _normalised_region_max(x: Tensor, regions: list[Region]) -> Tensor:
    """L2-normalised max-pooled vector of each region: (B, R, C)."""
    return l2_normalize(_region_reduce(x, regions, mac), dim=2)


def region_fraction(mask: Tensor, regions: list[Region]) -> Tensor:
    """Fraction of each region's cells set in ``mask`` (B, 1, h, w): (B, R) float32."""
    return _region_reduce(mask.to(torch.float32), regions, spoc).squeeze(2)


def _pool_regions(x: Tensor, regions: list[Region], weights: Tensor | None, floor: float = 0.0) -> Tensor:
    """Sum over ``regions`` of the normalised region max, each times its weight (B, R)
    (weights <= ``floor`` set to 0; None: weights 1)."""
    vectors = _normalised_region_max(x, regions)
    if weights is None:
        return vectors.sum(dim=1)
    weights = weights.to(vectors.dtype)  # cast before the floor, as the floor compares in x's dtype
    if floor > 0:
        weights = weights.masked_fill(weights <= floor, 0.0)
    return (vectors * weights.unsqueeze(2)).sum(dim=1)


def rmac(x: Tensor, levels: int = 3, overlap: float = 0.4) -> Tensor:
    """R-MAC: sum of the L2-normalised max of each region (R-MAC grid + global)."""
    return _pool_regions(x, all_regions(x.shape[2], x.shape[3], levels, overlap), None)


def ramac(x: Tensor, levels: int = 3, overlap: float = 0.4) -> Tensor:
    """RA-MAC: R-MAC with each region weighted by its fraction of above-mean activations
    (channel sum vs. the whole map's mean); weights <= 1/3 are set to 0. A constant
    activation map (empty mask) falls back to weights 1 rather than a zero descriptor."""
    regions = all_regions(x.shape[2], x.shape[3], levels, overlap)
    mask = _all_if_empty(_activation_mask(x))
    return _pool_regions(x, regions, region_fraction(mask, regions), floor=1.0 / 3.0)


def salient_cells(saliency: Tensor, size: tuple[int, int] | torch.Size) -> Tensor:
    """SR-MAC's set S (B, 1, h, w) bool: ``saliency`` (B, 1, h', w') resized bilinearly to
    ``size`` if needed (in float32), binarised at its per-image mean; an image whose S would
    be empty (a constant map) gets every cell, i.e. uniform region weights."""
    saliency = saliency.to(torch.float32)
    if tuple(saliency.shape[2:]) != tuple(size):
        saliency = F.interpolate(saliency, size=tuple(size), mode="bilinear", align_corners=False)
    return _all_if_empty(above_mean(saliency))


def srmac_weights(saliency: Tensor, height: int, width: int, levels: int = 3,
                  overlap: float = 0.4) -> tuple[list[Region], Tensor]:
    """SR-MAC's regions of an ``height`` x ``width`` feature map (:func:`all_regions`) and
    their weights ``|R ∩ S| / |R|`` (B, R) float32, S = :func:`salient_cells`."""
    regions = all_regions(height, width, levels, overlap)
    return regions, region_fraction(salient_cells(saliency, (height, width)), regions)


def srmac(x: Tensor, saliency: Tensor, levels: int = 3, overlap: float = 0.4) -> Tensor:
    """SR-MAC (DESIGN Eq. 4-7): R-MAC with region weights ``|R ∩ S| / |R|``.

    ``saliency`` (B, 1, h', w') in [0, 1] is resized bilinearly to the feature size if
    needed, then binarised at its per-image mean into S. An image whose S is empty
    (e.g. constant saliency) gets uniform weights 1, i.e. plain R-MAC.
    """
    if saliency.dim() != 4 or saliency.shape[1] != 1 or saliency.shape[0] != x.shape[0]:
        raise ValueError(
            f"saliency must be (B, 1, h, w) with B={x.shape[0]}, got {tuple(saliency.shape)}"
        )
    regions, weights = srmac_weights(saliency.to(x.device), x.shape[2], x.shape[3], levels, overlap)
    return _pool_regions(x, regions, weights)


class PoolingModule(nn.Module):
    """``nn.Module`` wrapper of a pooling function: ``forward(features, saliency=None)``.

    Parameters named in ``learnable`` become 1-element ``nn.Parameter``s (e.g. GeM's p).
    ``region_weights``: for a pooling over saliency-weighted regions (SR-MAC), the function of
    its regions and weights, ``(saliency, height, width, **params) -> (regions, (B, R))``, so
    that attention maps can show them (:func:`srmac_weights`); None for any other pooling.
    """

    def __init__(
        self,
        name: str,
        function: Callable[..., Tensor],
        params: dict[str, Any],
        uses_saliency: bool = False,
        learnable: tuple[str, ...] = (),
        region_weights: Callable[..., tuple[list[Region], Tensor]] | None = None,
    ) -> None:
        super().__init__()
        self.name = name
        self.function = function
        self.region_weights = region_weights
        self.uses_saliency = uses_saliency
        self.fixed = {k: v for k, v in params.items() if k not in learnable}
        self.learnable = learnable
        for key in learnable:
            self.register_parameter(key, nn.Parameter(torch.tensor([float(params[key])])))

    def forward(self, features: Tensor, saliency: Tensor | None = None) -> Tensor:
        kwargs = {**self.fixed, **{k: getattr(self, k) for k in self.learnable}}
        if not self.uses_saliency:
            return self.function(features, **kwargs)
        if saliency is None:
            raise ValueError(
                f"pooling '{self.name}' needs a saliency map (B, 1, h, w); got None"
            )
        return self.function(features, saliency, **kwargs)

    def extra_repr(self) -> str:
        args = {**self.fixed, **{k: "learnable" for k in self.learnable}}
        return f"{self.name}: " + ", ".join(f"{k}={v}" for k, v in args.items())
