"""What learns and how fast: the frozen backbone stages, AdamW's parameter groups, and the
warm-up + cosine learning-rate schedule (continued where a resumed run left it)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from manet.train.config import TrainConfig


def frozen_stages(model: Any, cfg: TrainConfig) -> list[Any]:
    """The backbone stages that do not learn: all with ``backbone_lr_scale`` 0, else the first
    ``frozen_stages``."""
    return list(model.stages) if cfg.backbone_lr_scale <= 0 else list(model.stages)[:cfg.frozen_stages]


def train_mode(model: Any, cfg: TrainConfig) -> None:
    """Training mode, except frozen stages, whose batch-norm statistics must not drift."""
    model.train()
    for stage in frozen_stages(model, cfg):
        stage.eval()


def build_optimizer(net: Any, cfg: TrainConfig, lr: float, steps_per_epoch: int) -> tuple[Any, Any]:
    """AdamW over what learns (the head and attention at ``lr``, the tuned backbone stages at
    ``lr * backbone_lr_scale``; frozen stages get no gradients) and its LR schedule."""
    import torch

    backbone_ids = {id(p) for p in net.stages.parameters()}
    frozen_ids = {id(p) for stage in frozen_stages(net, cfg) for p in stage.parameters()}
    for param in net.parameters():  # autograd then stops at the first stage that learns
        param.requires_grad_(id(param) not in frozen_ids)
    groups = [{"params": [p for p in net.parameters() if id(p) not in backbone_ids], "lr": lr}]
    tuned = [p for p in net.stages.parameters() if id(p) not in frozen_ids]
    if tuned:
        groups.append({"params": tuned, "lr": lr * cfg.backbone_lr_scale})
    optimizer = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, cfg.epochs * steps_per_epoch,
                                              round(cfg.warmup_epochs * steps_per_epoch)))
    return optimizer, scheduler


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """LR factor: linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def restore_schedule(optimizer: Any, scheduler: Any, base_lrs: Sequence[float], step: int) -> None:
    """Continue the LR schedule at ``step`` with this run's base learning rates: a run resumed
    with another number of processes has another global batch, steps per epoch and LR."""
    scheduler.base_lrs = list(base_lrs)
    scheduler.last_epoch = step
    factor = scheduler.lr_lambdas[0](step)
    for group, base in zip(optimizer.param_groups, base_lrs, strict=True):
        group["initial_lr"] = base
        group["lr"] = base * factor
