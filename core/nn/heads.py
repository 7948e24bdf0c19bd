"""The classifier heads MANet trains with (pure logits function + thin module).

``linear`` is the usual affine layer. ``cosine`` is the normalised softmax of NormFace (Wang
et al. 2017) and of "Classification is a Strong Baseline for Deep Metric Learning" (Zhai & Wu
2019): logits are ``scale`` x the cosine between the pooled descriptor and each class weight, so
the loss sees only the descriptor's direction, which is what retrieval compares. It also stops
the head from reading the overall feature scale that Eq. 3's weights change.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from manet.config import HEADS

#: Cosine head's logit scale (Zhai & Wu's temperature 0.05).
COSINE_SCALE = 20.0


def cosine_logits(descriptors: Tensor, weight: Tensor, scale: float = COSINE_SCALE) -> Tensor:
    """``scale`` * cos(descriptor_b, weight_k): (B, D) x (K, D) -> (B, K)."""
    return scale * F.linear(F.normalize(descriptors, dim=-1), F.normalize(weight, dim=-1))


class CosineClassifier(nn.Linear):
    """:func:`cosine_logits` over a learnt (K, D) weight (a bias-free linear layer's, so it starts
    as :class:`torch.nn.Linear` does)."""

    def __init__(self, in_features: int, num_classes: int, scale: float = COSINE_SCALE) -> None:
        super().__init__(in_features, num_classes, bias=False)
        self.scale = float(scale)

    def forward(self, descriptors: Tensor) -> Tensor:
        return cosine_logits(descriptors, self.weight, self.scale)


def imprinted_weights(sums: Tensor, counts: Tensor, current: Tensor) -> Tensor:
    """Class weights imprinted from descriptors (Qi et al. 2018, "Low-shot learning with imprinted
    weights"): row k is the unit mean of class k's unit descriptors, whose per-class ``sums`` (K, D)
    and ``counts`` (K,) are given; a class with no descriptor keeps its ``current`` row."""
    means = F.normalize(sums, dim=-1)
    return torch.where((counts > 0).unsqueeze(-1), means, current)


def build_head(kind: str, in_features: int, num_classes: int) -> nn.Module:
    """The classifier for ``kind`` (:data:`manet.config.HEADS`)."""
    if kind == "linear":
        return nn.Linear(in_features, num_classes)
    if kind == "cosine":
        return CosineClassifier(in_features, num_classes)
    raise ValueError(f"unknown head {kind!r}; use one of: {', '.join(HEADS)}")
