"""Imprinted class weights for the cosine head (``--head-init imprint``): one pass of the starting
network over the un-augmented training images, each class's weight set to its mean descriptor
(:func:`manet.nn.heads.imprinted_weights`). Data-parallel: each rank sums its shard, the sums are
added over ranks, so every rank imprints the same weights."""

from __future__ import annotations

from typing import Any

from manet.train.config import TrainConfig
from manet.train.data import text_mask_of
from manet.train.optimizer import train_mode


def imprint_head(group: Any, net: Any, normalise: Any, loader: Any, device: str, cfg: TrainConfig) -> int:
    """Set ``net.classifier.weight`` from the descriptors ``net`` pools for ``loader``'s images
    (``normalise`` is the backbone's input normalisation); the number of images seen (all ranks)."""
    import torch
    import torch.nn.functional as F

    from manet.nn.heads import imprinted_weights

    weight = net.classifier.weight
    sums = torch.zeros(weight.shape, dtype=torch.float64)
    counts = torch.zeros(weight.shape[0], dtype=torch.float64)
    net.eval()
    with torch.no_grad():
        for images, masks, target in loader:
            images = images.to(device).contiguous(memory_format=torch.channels_last)
            text = text_mask_of(masks.to(device), cfg.text)
            pooled = net(normalise(images.float() / 255), text)["pooled"].float().cpu()
            sums.index_add_(0, target, F.normalize(pooled, dim=-1).double())
            counts += torch.bincount(target, minlength=len(counts)).double()
    train_mode(net, cfg)
    flat = group.sum(sums.flatten().tolist() + counts.tolist())
    total = torch.tensor(flat, dtype=torch.float64)
    sums, counts = total[: sums.numel()].view_as(sums), total[sums.numel():]
    with torch.no_grad():
        weight.copy_(imprinted_weights(sums.float(), counts, weight.detach().cpu()).to(weight))
    return int(counts.sum())
