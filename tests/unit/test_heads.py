"""Classifier heads against hand-computed logits."""

from __future__ import annotations

import pytest
import torch

from manet.nn.heads import CosineClassifier, build_head, cosine_logits, imprinted_weights


def test_cosine_logits_by_hand():
    # (3, 4) has norm 5: cos with (1, 0) is 0.6, with (0, 2) is 0.8; the scale multiplies.
    logits = cosine_logits(torch.tensor([[3.0, 4.0]]), torch.tensor([[1.0, 0.0], [0.0, 2.0]]), scale=10.0)
    assert torch.allclose(logits, torch.tensor([[6.0, 8.0]]))


def test_cosine_classifier_and_build_head():
    head = build_head("cosine", 4, 3)
    assert isinstance(head, CosineClassifier) and head.weight.shape == (3, 4)
    assert isinstance(build_head("linear", 4, 3), torch.nn.Linear)
    with pytest.raises(ValueError, match="unknown head 'arc'; use one of: linear, cosine"):
        build_head("arc", 4, 3)


def test_imprinted_weights_by_hand():
    # Class 0's unit descriptors sum to (1, 1): unit mean (0.7071, 0.7071). Class 1 has (0, 2):
    # (0, 1). Class 2 has none and keeps its row.
    sums = torch.tensor([[1.0, 1.0], [0.0, 2.0], [0.0, 0.0]])
    current = torch.tensor([[5.0, 5.0], [5.0, 5.0], [0.3, -0.4]])
    weights = imprinted_weights(sums, torch.tensor([2.0, 1.0, 0.0]), current)
    half = 0.5 ** 0.5
    assert torch.allclose(weights, torch.tensor([[half, half], [0.0, 1.0], [0.3, -0.4]]))
