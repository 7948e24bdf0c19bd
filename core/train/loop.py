"""MANet training: CE over mined categories + lambda * Dice against pseudo-saliency.

The training set (``manet dataset build``) gives images and class indices. Pseudo-saliency
masks (and text masks) are computed once per run on the un-augmented images and then
transformed together with each augmented image, so no epoch recomputes them. A checkpoint
is written after every epoch; ``resume`` continues after the last finished epoch. The result
is a ``models`` row whose pipeline extracts SR-MAC with the learned saliency.

Under torchrun the same function trains data-parallel (:mod:`manet.train.distributed`): each rank
computes the masks of its shard of the images, trains on its DistributedSampler shard with
DistributedDataParallel, evaluates its shard; metrics are summed over ranks, and only rank 0
prints, writes checkpoints and the models row.

This module holds the loop and its steps (set up, one epoch, one optimisation step, saving an
epoch); the pieces they use have rooms of their own: the run's settings and report
(:mod:`manet.train.config`), samples, masks, seeds and loaders (:mod:`manet.train.data`), what
learns and how fast (:mod:`manet.train.optimizer`), validation (:mod:`manet.train.validation`)
and the checkpoint (:mod:`manet.train.checkpoint`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from manet.config import DEFAULT_HEAD_INITS, HEAD_INITS
from manet.errors import ManetError
from manet.nn.device import training_autocast
from manet.plugin_manager import Registry
from manet.settings import Settings
from manet.store.database import Database
from manet.train.checkpoint import checkpoint_dir, restore, save_checkpoint, starting_point
from manet.train.config import LABELS, EpochMetrics, TrainConfig, TrainReport
from manet.train.data import Loaders, augmentation_seed, make_loaders, shared_masks, text_mask_of
from manet.train.imprint import imprint_head
from manet.train.optimizer import build_optimizer, train_mode
from manet.train.validation import validate, validation_products


def _relabel_by_product(db: Database, *splits: list[tuple[int, str, int, str]]
                        ) -> tuple[list[list[tuple[int, str, int, str]]], list[str]]:
    """The rows of each split with the image's product as its class, and the classes (the
    products' skus, sorted over all splits, so train and val agree)."""
    import sqlalchemy as sa

    ids = [row[0] for rows in splits for row in rows]
    with db.begin() as conn:
        sku_of = dict(conn.execute(sa.text(
            "SELECT i.id, p.sku FROM images i JOIN products p ON p.id = i.product_id WHERE i.id = ANY(:ids)"),
            {"ids": ids}).all())
    classes = sorted(set(sku_of.values()))
    index = {sku: i for i, sku in enumerate(classes)}
    return [[(r[0], r[1], index[sku_of[r[0]]], sku_of[r[0]]) for r in rows if r[0] in sku_of]
            for rows in splits], classes


def _check_rates(cfg: TrainConfig) -> None:
    """A one-line error for a learning rate or loss weight that is negative, nan or inf, before
    any work: nan passes a range check, trains a run of nan weights, and then fails to store."""
    for flag, value, strict in (("--lr", cfg.lr, True), ("--lambda", cfg.lambda_dice, False),
                                ("--backbone-lr-scale", cfg.backbone_lr_scale, False),
                                ("weight_decay", cfg.weight_decay, False), ("warmup_epochs", cfg.warmup_epochs, False)):
        if not math.isfinite(value) or value < 0 or (strict and value == 0):
            raise ManetError(f"{flag} {value} is out of range; use a finite number {'>' if strict else '>='} 0")


def train(db: Database, registry: Registry, cfg: TrainConfig, *, device: str, settings: Settings | None = None,
          resume: bool = False, progress: bool = False, say: Callable[[str], None] = lambda _m: None) -> TrainReport:
    """Train MANet (or the plain classifier with both branches off) and register the model.

    One process, or one rank of a torchrun job (see :mod:`manet.train.distributed`): then only
    rank 0 calls ``say``, shows progress, writes the checkpoint and the models row; every rank
    returns the same report. ``settings`` (default: the defaults) give torchrun's variables, the
    EAST model, the pixel cap and the precision of the validation passes.
    """
    from manet.catalog.trainset import training_images
    from manet.train import distributed

    if cfg.epochs < 1 or cfg.batch_size < 1:
        raise ManetError("--epochs and --batch-size must be at least 1")
    if cfg.frozen_stages < 0:
        raise ManetError("--frozen-stages must be 0 (fine-tune every stage) or more")
    _check_rates(cfg)
    distributed.scaled_learning_rate(cfg.lr, 1, cfg.lr_scaling)  # an unknown rule fails before any work
    backbone = registry.create("backbone", cfg.backbone)
    if cfg.image_size < 2 * backbone.stride or cfg.image_size % backbone.stride:
        raise ManetError(
            f"image size {cfg.image_size} does not suit {cfg.backbone}: use a multiple of "
            f"{backbone.stride} of at least {2 * backbone.stride} (e.g. 128 or 224)"
        )
    cfg.head_init = cfg.head_init or DEFAULT_HEAD_INITS.get(cfg.head, "random")
    if cfg.head_init not in HEAD_INITS:
        raise ManetError(f"unknown --head-init {cfg.head_init!r}; use {' or '.join(HEAD_INITS)}")
    if cfg.head_init == "imprint" and cfg.head != "cosine":
        raise ManetError("--head-init imprint sets a cosine head's class weights; add --head cosine "
                         "or use --head-init random")
    if cfg.labels not in LABELS:
        raise ManetError(f"unknown --labels {cfg.labels!r}; use {' or '.join(LABELS)}")
    train_rows = training_images(db, cfg.training_set, "train")
    val_rows = training_images(db, cfg.training_set, "val")
    classes = sorted({row[3] for row in train_rows + val_rows})
    if cfg.labels == "sku":
        (train_rows, val_rows), classes = _relabel_by_product(db, train_rows, val_rows)
    if len(classes) < 2:
        raise ManetError(f"training set '{cfg.training_set}' has {len(classes)} category; MANet needs at "
                         f"least 2: mine more categories (manet categories mine) and rebuild it")
    if not train_rows or not val_rows:
        empty = "train" if not train_rows else "val"
        raise ManetError(f"the {empty} split of training set '{cfg.training_set}' is empty; "
                         f"rebuild it with more images or another --val-fraction")
    settings = settings or Settings()
    with distributed.session(device, settings.torchrun) as group:
        main = group.info.is_main
        return _fit(db, registry, cfg, group, classes, [(r[0], r[1], r[2]) for r in train_rows],
                    [(r[0], r[1], r[2]) for r in val_rows], resume=resume, progress=progress and main,
                    say=say if main else (lambda _m: None), settings=settings)


@dataclass
class _Run:
    """What the steps of one training run share (on this rank)."""

    cfg: TrainConfig
    group: Any
    device: str
    manet: Any  # the MANetConfig
    classes: list[str]
    net: Any
    #: ``net`` as it trains: DistributedDataParallel under torchrun (rank 0's weights, reduced gradients).
    model: Any | None
    #: Extraction's own pipeline around ``net``: the validation descriptors come from it.
    pipeline: Any | None
    optimizer: Any
    scheduler: Any
    loaders: Loaders
    #: (gallery, val) products of the validation images (:func:`manet.train.validation.validation_products`).
    products: Any
    val_images: int
    last: Path
    history: list[dict[str, Any]] = field(default_factory=list)
    settings: Settings = field(default_factory=Settings)


def _fit(db: Database, registry: Registry, cfg: TrainConfig, group: Any, classes: list[str],
         items_train: list[tuple[int, str, int]], items_val: list[tuple[int, str, int]], *, resume: bool,
         progress: bool, say: Callable[[str], None], settings: Settings) -> TrainReport:
    """The training loop of :func:`train` inside its (possibly single-process) session ``group``."""
    from manet.nn.pipeline import build_pipeline
    from manet.store.models import trained_pipeline_config
    from manet.train.distributed import state_checksum

    info = group.info
    directory = checkpoint_dir(cfg)
    last = directory / "last.pt"
    # Rank 0 reads the checkpoint and hands the same state to every rank (no shared disk needed).
    start_epoch, state = group.broadcast_from_main(lambda: starting_point(cfg, last, resume))
    cfg.epochs = max(cfg.epochs, start_epoch)
    cfg.world_size = info.world_size
    run, report = _set_up(db, registry, cfg, group, classes, items_train, items_val, last, start_epoch, progress,
                          say, settings)
    if state is not None:
        run.history = restore(state, run.net, run.optimizer, run.scheduler, start_epoch * len(run.loaders.train))
        say(f"resuming '{cfg.name}' after epoch {start_epoch}")
    run.model = group.wrap(run.net)
    # Validation descriptors come from extraction's own pipeline around the network in training.
    run.pipeline = build_pipeline(trained_pipeline_config(cfg, asdict(run.manet), str(last)), registry,
                                  manet=run.net, east_model=settings.east_model).to(group.device)

    if state is None and cfg.head_init == "imprint":
        seen = imprint_head(group, run.net, run.pipeline.backbone.normalise, run.loaders.eval_train,
                            group.device, cfg)
        say(f"cosine head imprinted from {seen} training images")
    if info.is_main:
        directory.mkdir(parents=True, exist_ok=True)
    train_mode(run.net, cfg)
    for epoch in range(start_epoch + 1, cfg.epochs + 1):
        metrics = _run_epoch(db, registry, run, epoch, progress)
        report.epochs.append(metrics)
        say(f"epoch {epoch}: loss {metrics.loss:.4f} (ce {metrics.ce:.4f}, dice {metrics.dice:.4f}) "
            f"train acc {metrics.train_accuracy:.3f} val acc {metrics.val_accuracy:.3f} "
            f"val MAP@7 {metrics.val_map7:.4f} ({metrics.seconds:.0f} s)")
    report.parameter_checksums = group.all_gather(state_checksum(run.net.state_dict()))
    if len(set(report.parameter_checksums)) > 1:
        say("warning: the training processes ended with different weights; the checkpoint holds rank 0's")
    return report


def _set_up(db: Database, registry: Registry, cfg: TrainConfig, group: Any, classes: list[str],
            items_train: list[tuple[int, str, int]], items_val: list[tuple[int, str, int]], last: Path,
            start_epoch: int, progress: bool, say: Callable[[str], None],
            settings: Settings) -> tuple[_Run, TrainReport]:
    """The network, its masks and loaders and its optimizer (in this order: the seeded weights
    come first), and the run's empty report; :func:`_fit` wraps the network and builds the
    validation pipeline once any checkpoint is loaded."""
    import torch

    from manet.nn.network import MANetConfig, build_manet
    from manet.train.distributed import scaled_learning_rate

    info, device = group.info, group.device
    world = info.world_size
    torch.manual_seed(cfg.seed)
    manet_cfg = MANetConfig(**cfg.manet_config(len(classes)))
    net = build_manet(manet_cfg, registry).to(device)
    # channels_last: faster on CUDA and on the CPU (EfficientNet-Lite0 training 1.7x on 2 cores).
    net = net.to(memory_format=torch.channels_last)

    estimator, detector = _mask_makers(registry, cfg, settings.east_model)
    say(f"{len(items_train)} training / {len(items_val)} validation images, {len(classes)} classes ({cfg.labels})"
        + (f", {world} processes" if world > 1 else ""))
    masks = shared_masks(group, items_train + items_val, estimator, detector, cfg.image_size, progress,
                         settings.max_pixels)
    loaders = make_loaders(cfg, info, device, items_train, items_val, masks, settings.max_pixels)
    products = validation_products(db, items_train, items_val, world)

    lr = scaled_learning_rate(cfg.lr, world, cfg.lr_scaling)
    optimizer, scheduler = build_optimizer(net, cfg, lr, len(loaders.train))
    report = TrainReport(cfg.name, device, str(last), resumed_from=start_epoch, world_size=world,
                         global_batch_size=world * cfg.batch_size, learning_rate=lr, rank=info.rank)
    run = _Run(cfg, group, device, manet_cfg, classes, net, None, None, optimizer, scheduler, loaders, products,
               len(items_val), last, settings=settings)
    return run, report


def _mask_makers(registry: Registry, cfg: TrainConfig, east_model: Path | None = None) -> tuple[Any, Any | None]:
    """The pseudo-saliency estimator and the text detector (None without the text branch; the
    default detector, EAST when ``east_model`` is set, is recorded in ``cfg``)."""
    estimator = registry.create("saliency_estimator", cfg.saliency_estimator)
    detector = None
    if cfg.text:
        from manet.plugins.text_detectors import create_text_detector, default_text_detector

        cfg.text_detector = cfg.text_detector or default_text_detector(east_model)
        detector = create_text_detector(registry, cfg.text_detector, east_model)
    return estimator, detector


def _run_epoch(db: Database, registry: Registry, run: _Run, epoch: int, progress: bool) -> EpochMetrics:
    """Train one epoch, validate, and (rank 0) write the checkpoint and the models row."""
    started = time.perf_counter()
    totals = _train_epoch(run, epoch, progress)
    loss_sum, ce_sum, dice_sum, correct, seen = run.group.sum(
        [totals["loss"], totals["ce"], totals["dice"], totals["correct"], totals["seen"]])
    run.group.sync_buffers(run.net)
    val_accuracy, val_map7 = validate(run.group, run.net, run.pipeline, run.loaders, run.device, run.cfg,
                                      run.products, run.val_images, run.settings.precision)
    seen = max(1.0, seen)
    metrics = EpochMetrics(epoch, loss_sum / seen, ce_sum / seen, dice_sum / seen, correct / seen,
                           val_accuracy, val_map7, time.perf_counter() - started)
    run.history.append(asdict(metrics))
    if run.group.info.is_main:
        _save_epoch(db, registry, run, epoch)
    return metrics


def _train_epoch(run: _Run, epoch: int, progress: bool) -> dict[str, float]:
    """One pass over this rank's shuffled shard; the epoch's summed loss terms and counts."""
    import torch
    from tqdm import tqdm

    cfg, rank = run.cfg, run.group.info.rank
    run.loaders.sampler.set_epoch(epoch)
    torch.manual_seed(augmentation_seed(cfg.seed, epoch, rank))
    run.loaders.train.generator.manual_seed(augmentation_seed(cfg.seed, epoch, rank))
    totals = {"loss": 0.0, "ce": 0.0, "dice": 0.0, "correct": 0, "seen": 0}
    bar = tqdm(run.loaders.train, desc=f"epoch {epoch}/{cfg.epochs}", disable=not progress)
    for images, masks_batch, target in bar:
        _train_step(run, images, masks_batch, target, totals)
        bar.set_postfix(loss=f"{totals['loss'] / totals['seen']:.3f}",
                        acc=f"{totals['correct'] / totals['seen']:.3f}")
    return totals


def _train_step(run: _Run, images: Any, masks_batch: Any, target: Any, totals: dict[str, float]) -> None:
    """One optimisation step on a batch: CE over the classes + lambda * Dice against the
    pseudo-saliency; adds the batch's figures to ``totals``."""
    import torch

    from manet.nn.attention_math import dice_loss

    cfg, device = run.cfg, run.device
    images = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
    masks_batch = masks_batch.to(device, non_blocking=True)
    saliency_target = (masks_batch[:, :1].float() / 255 > 0.5).float()
    target = target.to(device, non_blocking=True)
    with training_autocast(device):
        out = run.model(run.pipeline.backbone.normalise(images.float() / 255), text_mask_of(masks_batch, cfg.text))
        ce = torch.nn.functional.cross_entropy(out["logits"].float(), target)
        dice = (dice_loss(out["saliency_logits"].float(), saliency_target)
                if out["saliency_logits"] is not None else torch.zeros((), device=device))
        loss = ce + cfg.lambda_dice * dice
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    run.optimizer.step()
    run.scheduler.step()
    n = len(target)
    totals["loss"] += float(loss.detach()) * n
    totals["ce"] += float(ce.detach()) * n
    totals["dice"] += float(dice.detach()) * n
    totals["correct"] += int((out["logits"].argmax(1) == target).sum())
    totals["seen"] += n


def _save_epoch(db: Database, registry: Registry, run: _Run, epoch: int) -> None:
    """Write the checkpoint after ``epoch`` and register (or update) the trained model."""
    from manet.store.models import save_trained_model

    cfg = run.cfg
    payload = {"model": run.net.state_dict(), "optimizer": run.optimizer.state_dict(),
               "scheduler": run.scheduler.state_dict(), "epoch": epoch, "config": asdict(cfg),
               "manet": asdict(run.manet), "classes": run.classes, "history": run.history}
    save_checkpoint(run.last, payload)
    save_trained_model(db, registry, cfg, asdict(run.manet), str(run.last), run.classes, run.history)
