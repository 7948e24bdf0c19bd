"""CroW pooling (Kalantidis, Mellina & Osindero, ECCV 2016 workshops), as a pure tensor function.

"Cross-dimensional weighting for aggregated deep convolutional features": a weighted sum
pooling whose spatial weights favour positions of high total activation and whose channel
weights favour sparse (rarely active) channels, an IDF over channels. The descriptor keeps the
feature map's channel count, as manet's pipeline requires; it is not L2-normalised here
(the pipeline does that, as for the built-in poolings).
"""

from __future__ import annotations

import torch
from torch import Tensor


def crow_spatial_weights(x: Tensor, a: float = 2.0, b: float = 2.0, eps: float = 1e-6) -> Tensor:
    """Spatial weights (B, 1, h, w): ``(S / ||S||_a) ** (1 / b)`` with ``S`` the channel sum.

    Negative activations are clamped to 0 first: the method assumes ReLU features, and a
    negative base under a fractional power would give NaN.
    """
    s = x.clamp(min=0).sum(dim=1, keepdim=True)
    norm = s.pow(a).sum(dim=(2, 3), keepdim=True).pow(1.0 / a)
    return (s / (norm + eps)).pow(1.0 / b)


def crow_channel_weights(x: Tensor, eps: float = 1e-6) -> Tensor:
    """Channel weights (B, C): ``log(sum_k Q_k / Q_c)`` with ``Q_c`` the share of non-zero cells of
    channel c; a channel that is never active gets weight 0 (it contributes nothing anyway)."""
    q = (x > 0).to(x.dtype).mean(dim=(2, 3))
    total = q.sum(dim=1, keepdim=True)
    return torch.where(q > 0, torch.log(total.clamp(min=eps) / q.clamp(min=eps)), torch.zeros_like(q))


def crow(x: Tensor, a: float = 2.0, b: float = 2.0) -> Tensor:
    """CroW descriptor (B, C) of feature maps ``x`` (B, C, h, w)."""
    pooled = (x.clamp(min=0) * crow_spatial_weights(x, a, b)).sum(dim=(2, 3))
    return pooled * crow_channel_weights(x)
