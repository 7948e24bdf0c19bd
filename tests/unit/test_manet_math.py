"""MANet math (Eq. 1-3) against numbers worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from manet.nn.attention_math import (
    binarize_at_mean,
    dice_loss,
    resize_map,
    saliency_weight,
    text_weight,
    weight_features,
)

LN3 = math.log(3.0)  # sigmoid(ln 3) = 0.75, sigmoid(-ln 3) = 0.25


def close(actual: torch.Tensor, expected, **kwargs) -> None:
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), **kwargs)


def test_dice_loss_by_hand() -> None:
    # p = [[0.75, 0.25], [0.5, 0.5]], t = [[1, 0], [1, 0]]
    # sum(p*t) = 0.75 + 0.5 = 1.25, sum(p) = 2, sum(t) = 2
    logits = torch.tensor([[[[LN3, -LN3], [0.0, 0.0]]]])
    target = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
    # eps = 0: Dice = 2.5 / 4 = 0.625 -> loss 0.375
    close(dice_loss(logits, target, eps=0.0), 0.375)
    # eps = 1: Dice = (2.5 + 1) / (4 + 1) = 0.7 -> loss 0.3
    close(dice_loss(logits, target), 0.3)


def test_dice_loss_is_mean_over_batch() -> None:
    logits = torch.tensor([[[[LN3, -LN3], [0.0, 0.0]]]])
    target = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
    perfect = torch.full((1, 1, 2, 2), 50.0)  # sigmoid ~ 1 everywhere, target all 1 -> loss ~ 0
    batch = dice_loss(torch.cat([logits, perfect]), torch.cat([target, torch.ones(1, 1, 2, 2)]), eps=0.0)
    close(batch, (0.375 + 0.0) / 2, atol=1e-6, rtol=0)


def test_dice_loss_resizes_target_by_area() -> None:
    logits = torch.zeros(1, 1, 1, 2)  # p = 0.5, 0.5
    # 2x4 target -> 1x2 by area: left cell covered 3/4, right cell 0
    target = torch.tensor([[[[1.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]]]])
    # Dice = 2 * 0.375 / (1 + 0.75) = 0.75 / 1.75
    close(dice_loss(logits, target, eps=0.0), 1 - 0.75 / 1.75)


def test_dice_loss_empty_mask_and_empty_prediction_is_zero() -> None:
    close(dice_loss(torch.full((2, 1, 3, 3), -100.0), torch.zeros(2, 1, 3, 3)), 0.0, atol=1e-6, rtol=0)


def test_binarize_at_mean() -> None:
    maps = torch.tensor([[[[0.0, 1.0], [2.0, 5.0]]], [[[3.0, 3.0], [3.0, 3.0]]]])
    # image 0: mean 2 -> only 5 is strictly above; image 1: constant -> all 0
    close(binarize_at_mean(maps), [[[[0.0, 0.0], [0.0, 1.0]]], [[[0.0, 0.0], [0.0, 0.0]]]])


def test_text_weight_eq2() -> None:
    close(text_weight(torch.tensor([0.0, LN3, -LN3])), [1.5, 1.75, 1.25])
    assert text_weight(torch.tensor([1.0])).item() == pytest.approx(1 + 1 / (1 + math.exp(-1)))


def test_text_weight_neutral_scale() -> None:
    # The paper's T divided by 1.5: a text-free cell keeps X, T_m = ln 3 gives 1.75 / 1.5.
    close(text_weight(torch.tensor([0.0, LN3, -LN3]), "neutral"), [1.0, 7 / 6, 5 / 6])
    x = torch.tensor([[[[2.0, 3.0]]]])
    close(weight_features(x, text_mask=torch.tensor([[[[0.0, LN3]]]]), text_scale="neutral"), [[[[2.0, 3.5]]]])
    with pytest.raises(ValueError, match="unknown text scale 'loud'"):
        text_weight(torch.zeros(1), "loud")


def test_text_weight_logit_scale_spans_one_to_two() -> None:
    # 1 + T_m: no text keeps X, sure text doubles it; the paper's T only spans 1.5 .. 1.73 on [0, 1].
    close(text_weight(torch.tensor([0.0, 0.25, 1.0]), "logit"), [1.0, 1.25, 2.0])
    x = torch.tensor([[[[2.0, 3.0]]]])
    close(weight_features(x, text_mask=torch.tensor([[[[0.0, 0.5]]]]), text_scale="logit"), [[[[2.0, 4.5]]]])


def test_weight_features_eq3() -> None:
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[-1.0, 0.0], [10.0, 1.0]]]])  # (1, 2, 2, 2)
    s = torch.tensor([[[[1.0, 0.5], [0.0, 0.25]]]])
    t_m = torch.tensor([[[[0.0, LN3], [0.0, -LN3]]]])  # T = [[1.5, 1.75], [1.5, 1.25]]
    expected = torch.tensor([[[[1.5, 1.75], [0.0, 1.25]], [[-1.5, 0.0], [0.0, 0.3125]]]])
    close(weight_features(x, s, t_m), expected)


def test_weight_features_residual_gate() -> None:
    # X_s = X * (1 + S): a cell with S = 0 keeps X, S = 1 doubles it; then T as in Eq. 3.
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])  # (1, 1, 2, 2)
    s = torch.tensor([[[[1.0, 0.5], [0.0, 0.25]]]])
    t_m = torch.tensor([[[[0.0, LN3], [0.0, -LN3]]]])  # T = [[1.5, 1.75], [1.5, 1.25]]
    expected = torch.tensor([[[[3.0, 5.25], [4.5, 6.25]]]])
    close(weight_features(x, s, t_m, gate="residual"), expected)
    close(saliency_weight(s, "residual"), [[[[2.0, 1.5], [1.0, 1.25]]]])
    assert torch.equal(saliency_weight(s, "multiply"), s)
    with pytest.raises(ValueError, match="unknown saliency gate 'sum'"):
        saliency_weight(s, "sum")


def test_weight_features_detached_gate() -> None:
    # The paper's values, but no gradient reaches S from X~: only Eq. 1 trains the branch.
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]], requires_grad=True)
    s = torch.tensor([[[[1.0, 0.5], [0.0, 0.25]]]], requires_grad=True)
    out = weight_features(x, s, gate="detached")
    close(out, [[[[1.0, 1.0], [0.0, 1.0]]]])
    out.sum().backward()
    assert s.grad is None  # X~ does not depend on S for autograd
    close(x.grad, [[[[1.0, 0.5], [0.0, 0.25]]]])  # dX~/dX = S, as with the paper's gate


def test_weight_features_branches_off() -> None:
    x = torch.rand(2, 3, 4, 4)
    s = torch.rand(2, 1, 4, 4)
    assert torch.equal(weight_features(x), x)  # both off: X~ = X
    close(weight_features(x, saliency_prob=s), x * s)  # text off: T = 1
    close(weight_features(x, text_mask=torch.zeros(2, 1, 4, 4)), 1.5 * x)  # saliency off: X_s = X


def test_weight_features_resizes_maps_to_the_features() -> None:
    x = torch.rand(2, 3, 2, 3)
    # constant maps stay constant through bilinear resizing, up or down
    close(weight_features(x, torch.full((2, 1, 8, 12), 0.5), torch.zeros(2, 1, 1, 1)), 0.75 * x)
    assert resize_map(torch.rand(2, 1, 16, 16), (4, 4)).shape == (2, 1, 4, 4)
