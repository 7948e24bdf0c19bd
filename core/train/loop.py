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
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from manet import config as manet_config
from manet.errors import ManetError
from manet.plugin_manager import Registry
from manet.store.database import Database

#: Masks are cached at this resolution (per image, uint8) and resized to the crop on use.
MASK_CACHE_SIZE = 64
#: The un-augmented image is squashed to image_size * this before random cropping.
BASE_SCALE = 1.15
#: What the classifier learns to tell apart (TrainConfig.labels).
LABELS = ("category", "sku")


@dataclass
class TrainConfig:
    """Everything a training run needs; stored with the checkpoint and the model row."""

    name: str
    backbone: str = manet_config.DEFAULT_BACKBONE
    weights: str = "imagenet"
    image_size: int = 224
    epochs: int = 10
    batch_size: int = 32
    saliency: bool = True
    text: bool = True
    lambda_dice: float = 1.0
    lr: float = 1e-3
    #: Backbone learning rate relative to ``lr``; 0 freezes the backbone.
    backbone_lr_scale: float = manet_config.DEFAULT_BACKBONE_LR_SCALE
    #: Backbone stages (from the input) kept as pretrained: the early, generic filters. On the
    #: CPU most of a backward pass is spent there (EfficientNet-Lite0 at 224 px: 8.5 img/s
    #: fine-tuning everything, 17 img/s with the first stage frozen).
    frozen_stages: int = 1
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    training_set: str = "default"
    #: Classes of the classifier: the training set's mined ``category`` (the paper's), or each
    #: image's product (``sku``: finer, for catalogues with several images per product).
    labels: str = "category"
    saliency_estimator: str = "spectral-residual"
    text_detector: str = ""
    attention_branch: str = "saliency-fpn"
    seed: int = 0
    num_workers: int | None = None
    #: How the learning rate grows with the global batch (processes x batch_size): sqrt | linear | none.
    lr_scaling: str = "sqrt"
    #: Processes of the run (set by :func:`train` from torchrun); the global batch is world_size x batch_size.
    world_size: int = 1
    #: Folder for checkpoints; empty = $MANET_HOME/checkpoints.
    checkpoint_root: str = ""

    def manet_config(self, num_classes: int) -> dict[str, Any]:
        return {"backbone": self.backbone, "weights": self.weights, "num_classes": num_classes,
                "saliency": self.saliency, "text": self.text, "attention_branch": self.attention_branch}


@dataclass
class EpochMetrics:
    epoch: int
    loss: float
    ce: float
    dice: float
    train_accuracy: float
    val_accuracy: float
    val_map7: float
    seconds: float


@dataclass
class TrainReport:
    name: str
    device: str
    checkpoint: str
    epochs: list[EpochMetrics] = field(default_factory=list)
    resumed_from: int = 0
    world_size: int = 1
    global_batch_size: int = 0
    learning_rate: float = 0.0
    #: SHA-256 of each rank's final weights (rank order): all equal in a healthy run.
    parameter_checksums: list[str] = field(default_factory=list)
    #: This process's rank (only rank 0 prints the report).
    rank: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "device": self.device, "checkpoint": self.checkpoint,
                "resumed_from": self.resumed_from, "world_size": self.world_size,
                "global_batch_size": self.global_batch_size, "learning_rate": self.learning_rate,
                "parameter_checksums": self.parameter_checksums, "epochs": [asdict(e) for e in self.epochs]}


def checkpoint_dir(cfg: TrainConfig) -> Path:
    root = Path(cfg.checkpoint_root) if cfg.checkpoint_root else manet_config.default_home() / "checkpoints"
    return root / cfg.name


# -- data --------------------------------------------------------------------------------------
class TrainingImages:
    """Decoded, jointly augmented (image, saliency mask, text mask, label) samples."""

    def __init__(self, items: Sequence[tuple[int, str, int]], masks: dict[int, Any], image_size: int,
                 train: bool) -> None:
        self.items = items
        self.masks = masks
        self.image_size = image_size
        self.train = train
        self._transform = None

    def __len__(self) -> int:
        return len(self.items)

    def _augment(self):
        from torchvision.transforms import v2

        size = self.image_size
        if not self.train:
            return v2.Resize((size, size), antialias=True)
        # Shopper photos: partial views, mirrored packs, odd angles, colour casts, blur.
        return v2.Compose([
            v2.RandomResizedCrop(size, scale=(0.4, 1.0), ratio=(0.75, 1.33), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandomPerspective(distortion_scale=0.25, p=0.3),
            v2.RandomApply([v2.ColorJitter(0.35, 0.35, 0.35, 0.05)], p=0.8),
            v2.RandomApply([v2.GaussianBlur(5, sigma=(0.1, 2.0))], p=0.2),
        ])

    def __getitem__(self, index: int):
        import torch
        from torchvision import tv_tensors

        from manet.catalog.images import read_image_tensor

        if self._transform is None:
            self._transform = self._augment()
        image_id, uri, label = self.items[index]
        base = round(self.image_size * BASE_SCALE) if self.train else self.image_size
        image = tv_tensors.Image(read_image_tensor(Path(uri), base))
        stacked = torch.nn.functional.interpolate(
            self.masks[image_id].float().unsqueeze(0), size=(base, base), mode="nearest"
        )[0]
        image, masks = self._transform(image, tv_tensors.Mask(stacked))
        return image.as_subclass(torch.Tensor), masks.as_subclass(torch.Tensor), label


def compute_masks(items: Sequence[tuple[int, str, int]], estimator: Any, detector: Any | None,
                  size: int, progress: bool) -> dict[int, Any]:
    """Per image: [binarised pseudo-saliency, soft text mask] as uint8 (2, 64, 64), once."""
    import torch
    from tqdm import tqdm

    from manet.catalog.images import read_image_tensor
    from manet.nn.attention_math import binarize_at_mean

    masks: dict[int, Any] = {}
    batch = 32
    for start in tqdm(range(0, len(items), batch), desc="pseudo-saliency", disable=not progress):
        chunk = items[start:start + batch]
        images = torch.stack([read_image_tensor(Path(uri), size) for _, uri, _ in chunk]).float() / 255
        saliency = estimator.estimate(images)
        saliency = torch.nn.functional.interpolate(saliency, size=(MASK_CACHE_SIZE,) * 2, mode="bilinear",
                                                   align_corners=False)
        binary = binarize_at_mean(saliency)
        text = (detector.detect(images, (MASK_CACHE_SIZE, MASK_CACHE_SIZE)) if detector is not None
                else torch.zeros_like(binary))
        packed = torch.cat([binary * 255, text.clamp(0, 1) * 255], dim=1).round().to(torch.uint8)
        for (image_id, _, _), mask in zip(chunk, packed, strict=True):
            masks[image_id] = mask
    return masks


# -- schedule ----------------------------------------------------------------------------------
def epoch_seed(seed: int, epoch: int) -> int:
    """Seed of the shuffle of ``epoch``: the same on every rank and in a resumed run."""
    return seed * 100_003 + epoch


def augmentation_seed(seed: int, epoch: int, rank: int) -> int:
    """Seed of the random augmentations (and dropout) of ``rank`` in ``epoch``: ranks differ,
    a resumed run repeats them."""
    return epoch_seed(seed, epoch) + 1_000_003 * (rank + 1)


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """LR factor: linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


# -- the run -----------------------------------------------------------------------------------
def _loader(dataset: TrainingImages, batch_size: int, workers: int, device: str, sampler: Any = None):
    """A training loader (``sampler`` given: drops the last partial batch) or an in-order one."""
    import torch

    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                                       drop_last=sampler is not None and len(sampler) > batch_size,
                                       generator=torch.Generator(), pin_memory=device.startswith("cuda"),
                                       persistent_workers=workers > 0)


def _frozen(model: Any, cfg: TrainConfig) -> list[Any]:
    """The backbone stages that do not learn: all with ``backbone_lr_scale`` 0, else the first
    ``frozen_stages``."""
    return list(model.stages) if cfg.backbone_lr_scale <= 0 else list(model.stages)[:cfg.frozen_stages]


def _train_mode(model: Any, cfg: TrainConfig) -> None:
    """Training mode, except frozen stages, whose batch-norm statistics must not drift."""
    model.train()
    for stage in _frozen(model, cfg):
        stage.eval()


def _autocast(device: str) -> Any:
    """bf16 autocast on CUDA; plain float32 elsewhere."""
    import contextlib

    import torch

    return torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else contextlib.nullcontext()


def _evaluate(model: Any, pipeline: Any, loader: Any, device: str, cfg: TrainConfig,
              classify: bool = True) -> tuple[int, list[Any]]:
    """Correct predictions (when ``classify``) and the descriptors ``manet extract`` would
    store (one CPU tensor per batch) of an evaluation pass over ``loader``; ``pipeline`` is
    extraction's pipeline around ``model``."""
    from manet.extract.forward import forward_pass

    model.eval()
    correct = 0
    descriptors = []
    with forward_pass(device):
        for images, masks, target in loader:
            images, masks = images.to(device), masks.to(device)
            text = masks[:, 1:2].float() / 255 if cfg.text else None  # the detector's mask, cached
            if classify:
                out = model(pipeline.backbone.normalise(images.float() / 255), text)
                correct += int((out["logits"].argmax(1) == target.to(device)).sum())
            descriptors.append(pipeline(images, text_mask=text).float().cpu())
    _train_mode(model, cfg)
    return correct, descriptors


def _retrieval_map7(val_desc: Any, val_products: np.ndarray, gallery_desc: Any, gallery_products: np.ndarray) -> float:
    """MAP@7 of val images against train images, relevant = same product."""
    from manet.evaluate.metrics import evaluate_rankings, ranked_relevance

    counts = {p: c for p, c in zip(*np.unique(gallery_products, return_counts=True), strict=True)}
    keep = np.array([counts.get(p, 0) > 0 for p in val_products])
    if not keep.any():
        return 0.0
    similarity = (val_desc[keep] @ gallery_desc.T).numpy()
    relevance = ranked_relevance(similarity, val_products[keep], gallery_products)
    n_relevant = np.array([counts[p] for p in val_products[keep]])
    return float(evaluate_rankings(relevance, n_relevant, k=7)["map@7"])


def _products_of(db: Database, image_ids: list[int]) -> dict[int, int]:
    import sqlalchemy as sa

    with db.begin() as conn:
        rows = conn.execute(sa.text("SELECT id, product_id FROM images WHERE id = ANY(:ids)"), {"ids": image_ids})
        return {row.id: row.product_id if row.product_id is not None else -row.id for row in rows}


def _starting_point(cfg: TrainConfig, last: Path, resume: bool) -> tuple[int, dict[str, Any] | None]:
    """(finished epochs, checkpoint state) of the run to continue, or (0, None) for a new run."""
    import torch

    if not resume:
        if last.exists():
            raise ManetError(f"a training run named '{cfg.name}' exists ({last}); add --resume or pick another --name")
        return 0, None
    if not last.is_file():
        raise ManetError(f"no checkpoint to resume at {last}; start without --resume")
    state = torch.load(last, map_location="cpu", weights_only=True)
    saved = state["config"]
    if saved["backbone"] != cfg.backbone or saved["saliency"] != cfg.saliency or saved["text"] != cfg.text:
        raise ManetError(
            f"checkpoint {last} is a {saved['backbone']} (saliency={saved['saliency']}, "
            f"text={saved['text']}), not a {cfg.backbone} (saliency={cfg.saliency}, text={cfg.text}); "
            f"resume with the same settings or train under another --name"
        )
    return int(state["epoch"]), state


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


def _restore_schedule(optimizer: Any, scheduler: Any, base_lrs: Sequence[float], step: int) -> None:
    """Continue the LR schedule at ``step`` with this run's base learning rates: a run resumed
    with another number of processes has another global batch, steps per epoch and LR."""
    scheduler.base_lrs = list(base_lrs)
    scheduler.last_epoch = step
    factor = scheduler.lr_lambdas[0](step)
    for group, base in zip(optimizer.param_groups, base_lrs, strict=True):
        group["initial_lr"] = base
        group["lr"] = base * factor


def train(db: Database, registry: Registry, cfg: TrainConfig, *, device: str, resume: bool = False,
          progress: bool = False, say: Callable[[str], None] = lambda _m: None) -> TrainReport:
    """Train MANet (or the plain classifier with both branches off) and register the model.

    One process, or one rank of a torchrun job (see :mod:`manet.train.distributed`): then only
    rank 0 calls ``say``, shows progress, writes the checkpoint and the models row; every rank
    returns the same report.
    """
    from manet.catalog.trainset import training_images
    from manet.train import distributed

    if cfg.epochs < 1 or cfg.batch_size < 1:
        raise ManetError("--epochs and --batch-size must be at least 1")
    if cfg.frozen_stages < 0:
        raise ManetError("--frozen-stages must be 0 (fine-tune every stage) or more")
    distributed.scaled_learning_rate(cfg.lr, 1, cfg.lr_scaling)  # an unknown rule fails before any work
    backbone = registry.create("backbone", cfg.backbone)
    if cfg.image_size < 2 * backbone.stride or cfg.image_size % backbone.stride:
        raise ManetError(
            f"image size {cfg.image_size} does not suit {cfg.backbone}: use a multiple of "
            f"{backbone.stride} of at least {2 * backbone.stride} (e.g. 128 or 224)"
        )
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
    with distributed.session(device) as group:
        main = group.info.is_main
        return _fit(db, registry, cfg, group, classes, [(r[0], r[1], r[2]) for r in train_rows],
                    [(r[0], r[1], r[2]) for r in val_rows], resume=resume, progress=progress and main,
                    say=say if main else (lambda _m: None))


def _fit(db: Database, registry: Registry, cfg: TrainConfig, group: Any, classes: list[str],
         items_train: list[tuple[int, str, int]], items_val: list[tuple[int, str, int]], *, resume: bool,
         progress: bool, say: Callable[[str], None]) -> TrainReport:
    """The training loop of :func:`train` inside its (possibly single-process) session ``group``."""
    import torch
    from torch.utils.data.distributed import DistributedSampler
    from tqdm import tqdm

    from manet.nn.attention_math import dice_loss
    from manet.nn.network import MANetConfig, build_manet
    from manet.nn.pipeline import build_pipeline
    from manet.store.models import save_trained_model, trained_pipeline_config
    from manet.train.distributed import (
        default_loader_workers,
        gathered_order,
        scaled_learning_rate,
        shard,
        state_checksum,
    )

    info, device = group.info, group.device
    rank, world = info.rank, info.world_size
    directory = checkpoint_dir(cfg)
    last = directory / "last.pt"
    # Rank 0 reads the checkpoint and hands the same state to every rank (no shared disk needed).
    start_epoch, state = group.broadcast_from_main(lambda: _starting_point(cfg, last, resume))
    cfg.epochs = max(cfg.epochs, start_epoch)
    cfg.world_size = world

    torch.manual_seed(cfg.seed)
    manet_cfg = MANetConfig(**cfg.manet_config(len(classes)))
    net = build_manet(manet_cfg, registry).to(device)
    # channels_last: faster on CUDA and on the CPU (EfficientNet-Lite0 training 1.7x on 2 cores).
    net = net.to(memory_format=torch.channels_last)

    estimator = registry.create("saliency_estimator", cfg.saliency_estimator)
    detector = None
    if cfg.text:
        from manet.plugins.text_detectors import default_text_detector

        cfg.text_detector = cfg.text_detector or default_text_detector()
        detector = registry.create("text_detector", cfg.text_detector)
    say(f"{len(items_train)} training / {len(items_val)} validation images, {len(classes)} classes ({cfg.labels})"
        + (f", {world} processes" if world > 1 else ""))
    # Each rank computes the masks of its shard once; every rank then holds all of them.
    masks: dict[int, Any] = {}
    for part in group.all_gather(compute_masks(shard(items_train + items_val, rank, world), estimator, detector,
                                               round(cfg.image_size * BASE_SCALE), progress)):
        masks.update(part)

    workers = (cfg.num_workers if cfg.num_workers is not None
               else default_loader_workers(os.cpu_count() or 1, info.local_world_size))
    train_set = TrainingImages(items_train, masks, cfg.image_size, True)
    # The shuffle of epoch e is seeded with epoch_seed(seed, e) (DistributedSampler adds the epoch
    # to its seed); every rank shuffles alike and takes its own slice of the permutation.
    sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True,
                                 seed=epoch_seed(cfg.seed, 0))
    train_loader = _loader(train_set, cfg.batch_size, workers, device, sampler)
    # Evaluation: each rank its shard, descriptors gathered in gathered_order.
    eval_train = _loader(TrainingImages(shard(items_train, rank, world), masks, cfg.image_size, False),
                         cfg.batch_size, workers, device)
    eval_val = _loader(TrainingImages(shard(items_val, rank, world), masks, cfg.image_size, False),
                       cfg.batch_size, workers, device)
    product_of = _products_of(db, [i for i, _, _ in items_train + items_val])
    gallery_products = np.array([product_of[i] for i, _, _ in gathered_order(items_train, world)])
    val_products = np.array([product_of[i] for i, _, _ in gathered_order(items_val, world)])

    lr = scaled_learning_rate(cfg.lr, world, cfg.lr_scaling)
    backbone_ids = {id(p) for p in net.stages.parameters()}
    frozen_ids = {id(p) for stage in _frozen(net, cfg) for p in stage.parameters()}
    for param in net.parameters():  # autograd then stops at the first stage that learns
        param.requires_grad_(id(param) not in frozen_ids)
    groups = [{"params": [p for p in net.parameters() if id(p) not in backbone_ids], "lr": lr}]
    tuned = [p for p in net.stages.parameters() if id(p) not in frozen_ids]
    if tuned:
        groups.append({"params": tuned, "lr": lr * cfg.backbone_lr_scale})
    optimizer = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    steps_per_epoch = len(train_loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, cfg.epochs * steps_per_epoch,
                                              round(cfg.warmup_epochs * steps_per_epoch)))
    report = TrainReport(cfg.name, device, str(last), resumed_from=start_epoch, world_size=world,
                         global_batch_size=world * cfg.batch_size, learning_rate=lr, rank=rank)
    history: list[dict[str, Any]] = []
    if state is not None:
        base_lrs = list(scheduler.base_lrs)  # this run's; loading the optimizer brings the saved run's
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        _restore_schedule(optimizer, scheduler, base_lrs, start_epoch * steps_per_epoch)
        history = state.get("history", [])
        say(f"resuming '{cfg.name}' after epoch {start_epoch}")
    model = group.wrap(net)  # DistributedDataParallel under torchrun: rank 0's weights, reduced gradients
    # Validation descriptors come from extraction's own pipeline around the network in training.
    pipeline = build_pipeline(trained_pipeline_config(cfg, asdict(manet_cfg), str(last)), registry,
                              manet=net).to(device)
    backbone = pipeline.backbone

    if info.is_main:
        directory.mkdir(parents=True, exist_ok=True)
    _train_mode(net, cfg)
    for epoch in range(start_epoch + 1, cfg.epochs + 1):
        started = time.perf_counter()
        sampler.set_epoch(epoch)
        torch.manual_seed(augmentation_seed(cfg.seed, epoch, rank))
        train_loader.generator.manual_seed(augmentation_seed(cfg.seed, epoch, rank))
        totals = {"loss": 0.0, "ce": 0.0, "dice": 0.0, "correct": 0, "seen": 0}
        bar = tqdm(train_loader, desc=f"epoch {epoch}/{cfg.epochs}", disable=not progress)
        for images, masks_batch, target in bar:
            images = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            masks_batch = masks_batch.to(device, non_blocking=True).float() / 255
            target = target.to(device, non_blocking=True)
            with _autocast(device):
                out = model(backbone.normalise(images.float() / 255), masks_batch[:, 1:2] if cfg.text else None)
                ce = torch.nn.functional.cross_entropy(out["logits"].float(), target)
                dice = (dice_loss(out["saliency_logits"].float(), (masks_batch[:, :1] > 0.5).float())
                        if out["saliency_logits"] is not None else torch.zeros((), device=device))
                loss = ce + cfg.lambda_dice * dice
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            n = len(target)
            totals["loss"] += float(loss.detach()) * n
            totals["ce"] += float(ce.detach()) * n
            totals["dice"] += float(dice.detach()) * n
            totals["correct"] += int((out["logits"].argmax(1) == target).sum())
            totals["seen"] += n
            bar.set_postfix(loss=f"{totals['loss'] / totals['seen']:.3f}",
                            acc=f"{totals['correct'] / totals['seen']:.3f}")
        loss_sum, ce_sum, dice_sum, correct, seen = group.sum(
            [totals["loss"], totals["ce"], totals["dice"], totals["correct"], totals["seen"]])
        group.sync_buffers(net)
        val_correct, val_desc = _evaluate(net, pipeline, eval_val, device, cfg)
        _, gallery_desc = _evaluate(net, pipeline, eval_train, device, cfg, classify=False)
        parts = group.all_gather((val_correct, val_desc, gallery_desc))
        seen = max(1.0, seen)
        metrics = EpochMetrics(epoch, loss_sum / seen, ce_sum / seen, dice_sum / seen, correct / seen,
                               sum(p[0] for p in parts) / len(items_val),
                               _retrieval_map7(torch.cat([t for p in parts for t in p[1]]), val_products,
                                               torch.cat([t for p in parts for t in p[2]]), gallery_products),
                               time.perf_counter() - started)
        report.epochs.append(metrics)
        history.append(asdict(metrics))
        if info.is_main:
            payload = {"model": net.state_dict(), "optimizer": optimizer.state_dict(),
                       "scheduler": scheduler.state_dict(), "epoch": epoch, "config": asdict(cfg),
                       "manet": asdict(manet_cfg), "classes": classes, "history": history}
            tmp = directory / "last.pt.tmp"
            torch.save(payload, tmp)
            os.replace(tmp, last)  # atomic: an interrupt never leaves a half-written checkpoint
            save_trained_model(db, registry, cfg, asdict(manet_cfg), str(last), classes, history)
        say(f"epoch {epoch}: loss {metrics.loss:.4f} (ce {metrics.ce:.4f}, dice {metrics.dice:.4f}) "
            f"train acc {metrics.train_accuracy:.3f} val acc {metrics.val_accuracy:.3f} "
            f"val MAP@7 {metrics.val_map7:.4f} ({metrics.seconds:.0f} s)")
    report.parameter_checksums = group.all_gather(state_checksum(net.state_dict()))
    if len(set(report.parameter_checksums)) > 1:
        say("warning: the training processes ended with different weights; the checkpoint holds rank 0's")
    return report
