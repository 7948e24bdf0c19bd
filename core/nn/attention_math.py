"""MANet's training and feature-weighting math (DESIGN §5): pure, batched tensor functions.

Maps are (B, 1, H, W); features are (B, C, h, w). Nothing here holds parameters, so the
model (:mod:`manet.nn.network`) and any trainer share exactly one definition of each equation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from manet.config import SALIENCY_GATES, TEXT_SCALES
from manet.nn.pooling import above_mean

__all__ = ["SALIENCY_GATES", "TEXT_SCALES", "binarize_at_mean", "dice_loss", "resize_map", "saliency_weight", "text_weight",
           "weight_features"]


def resize_map(maps: Tensor, size: tuple[int, int] | torch.Size) -> Tensor:
    """Resize (B, 1, H, W) maps bilinearly to ``size`` (returned unchanged when already there).

    Anti-aliased, because shrinking a stride-8 saliency map to a stride-32 feature map with
    plain bilinear sampling would read only a quarter of its pixels (and pass gradients to
    only those); when enlarging, anti-aliasing changes nothing. Computed in float32: a map
    from a bf16 forward pass would otherwise fail (no anti-aliased bf16 kernel on the CPU).
    """
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps.float(), size=tuple(size), mode="bilinear", align_corners=False, antialias=True)


def dice_loss(logits: Tensor, target: Tensor, eps: float = 1.0) -> Tensor:
    """Eq. 1: ``L_S = 1 - Dice(sigmoid(logits), target)`` per image, averaged over the batch.

    ``Dice(p, t) = (2 * sum(p * t) + eps) / (sum(p) + sum(t) + eps)`` over each image's pixels;
    ``eps`` smooths the ratio so an empty prediction of an empty mask scores 1, not 0/0.
    ``logits`` is (B, 1, h, w); ``target`` (B, 1, H, W) in {0, 1} is resized to (h, w) with
    *area* interpolation when the sizes differ: each logit cell then targets the fraction of
    it covered by the mask (a soft target), so thin objects do not vanish or alias as they
    would with nearest sampling.
    """
    if logits.dim() != 4 or target.dim() != 4 or logits.shape[0] != target.shape[0]:
        raise ValueError(
            f"dice_loss needs (B, 1, h, w) logits and (B, 1, H, W) target, got "
            f"{tuple(logits.shape)} and {tuple(target.shape)}"
        )
    target = target.to(logits.dtype)
    if target.shape[-2:] != logits.shape[-2:]:
        target = F.interpolate(target, size=logits.shape[-2:], mode="area")
    prob = torch.sigmoid(logits).flatten(1)
    target = target.flatten(1)
    dice = (2.0 * (prob * target).sum(1) + eps) / (prob.sum(1) + target.sum(1) + eps)
    return (1.0 - dice).mean()


def binarize_at_mean(maps: Tensor) -> Tensor:
    """The pseudo-saliency target: 1 where a map is strictly above its own mean, else 0.

    The mean is taken per image (and channel) over the last two dims; a constant map is all 0.
    Returns a tensor of the same shape and floating dtype as ``maps``.
    """
    dtype = maps.dtype if maps.is_floating_point() else torch.float32
    return above_mean(maps.to(dtype)).to(dtype)


def text_weight(text_mask: Tensor, scale: str = "paper") -> Tensor:
    """Eq. 2: ``T = sigmoid(T_m) + 1``, so a text-free cell (T_m = 0) gets 1.5 and the weight
    stays in (1, 2): text boosts features but never suppresses them. ``scale`` ``neutral`` divides
    T by 1.5: the same ratios between cells, but a text-free cell keeps its features. Extraction
    L2-normalises every region, so the two give the same descriptors from the same network; they
    differ in training, where T scales the features that reach the classifier.

    ``logit`` gives ``1 + T_m``. A detector's mask is already a probability, sigmoid(logit), so
    Eq. 2's own sigmoid over it squeezes T into [1.5, 1.73]: a text cell weighs at most 1.155 times
    a text-free one. Taking T_m as the sigmoid of the logit that Eq. 2 expects gives its whole range,
    1 without text to 2 on sure text, and changes the descriptors, not only the training."""
    if scale == "logit":
        return 1.0 + text_mask
    weight = torch.sigmoid(text_mask) + 1.0
    if scale == "paper":
        return weight
    if scale == "neutral":
        return weight / 1.5
    raise ValueError(f"unknown text scale {scale!r}; use one of: {', '.join(TEXT_SCALES)}")


def saliency_weight(saliency_prob: Tensor, gate: str = "multiply") -> Tensor:
    """The factor of X in ``X_s``: S itself (``multiply``, in [0, 1]), ``1 + S``
    (``residual``, in [1, 2]: attention that boosts salient cells and never zeroes the rest, as
    in Wang et al.'s Residual Attention Network), or S as a constant (``detached``: the same
    value as ``multiply``, but the classification loss cannot open S up to the whole image, as
    it does to ``multiply``'s; only the saliency loss trains the branch)."""
    if gate == "multiply":
        return saliency_prob
    if gate == "detached":
        return saliency_prob.detach()
    if gate == "residual":
        return saliency_prob + 1.0
    raise ValueError(f"unknown saliency gate {gate!r}; use one of: {', '.join(SALIENCY_GATES)}")


def weight_features(
    x: Tensor, saliency_prob: Tensor | None = None, text_mask: Tensor | None = None, gate: str = "multiply",
    text_scale: str = "paper",
) -> Tensor:
    """Eq. 3: ``X~ = T ⊙ X_s`` with ``X_s = X ⊙ S`` (``gate`` ``residual``: ``X ⊙ (1 + S)``,
    :func:`saliency_weight`; ``text_scale``: :func:`text_weight`).

    ``x`` is (B, C, h, w). ``saliency_prob`` S (B, 1, h', w') in [0, 1] and the text weight
    ``T = text_weight(text_mask)`` (``text_mask`` T_m (B, 1, h'', w'') in [0, 1]) are resized
    bilinearly to (h, w) with :func:`resize_map` and broadcast over the channels. ``None``
    switches a branch off: ``S = 1`` (X_s = X) and/or ``T = 1``.
    """
    out = x
    if saliency_prob is not None:
        out = out * resize_map(saliency_weight(saliency_prob.to(x.dtype), gate), x.shape[-2:])
    if text_mask is not None:
        out = out * resize_map(text_weight(text_mask.to(x.dtype), text_scale), x.shape[-2:])
    return out
