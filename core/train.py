"""MANet training: CE over mined categories + lambda * Dice against pseudo-saliency.

The training set (``manet dataset build``) gives images and class indices. Pseudo-saliency
masks (and text masks) are computed once per run on the un-augmented images and then
transformed together with each augmented image, so no epoch recomputes them. A checkpoint
is written after every epoch; ``resume`` continues after the last finished epoch. The result
is a ``models`` row whose pipeline extracts SR-MAC with the learned saliency.
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
from manet.db import Database
from manet.errors import ManetError
from manet.plugin_manager import Registry

#: Masks are cached at this resolution (per image, uint8) and resized to the crop on use.
MASK_CACHE_SIZE = 64
#: The un-augmented image is squashed to image_size * this before random cropping.
BASE_SCALE = 1.15


@dataclass
class TrainConfig:
    """Everything a training run needs; stored with the checkpoint and the model row."""

    name: str
    backbone: str = "resnet50"
    weights: str = "imagenet"
    image_size: int = 224
    epochs: int = 10
    batch_size: int = 32
    saliency: bool = True
    text: bool = True
    lambda_dice: float = 1.0
    lr: float = 1e-3
    #: Backbone learning rate relative to ``lr``; 0 freezes the backbone.
    backbone_lr_scale: float = 0.1
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    training_set: str = "default"
    saliency_estimator: str = "spectral-residual"
    text_detector: str = ""
    attention_branch: str = "saliency-fpn"
    seed: int = 0
    num_workers: int | None = None
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

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "device": self.device, "checkpoint": self.checkpoint,
                "resumed_from": self.resumed_from, "epochs": [asdict(e) for e in self.epochs]}


def checkpoint_dir(cfg: TrainConfig) -> Path:
    root = Path(cfg.checkpoint_root) if cfg.checkpoint_root else manet_config.manet_home() / "checkpoints"
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

        from manet.images import read_image_tensor

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

    from manet.images import read_image_tensor
    from manet.manet_math import binarize_at_mean

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
def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """LR factor: linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


# -- the run -----------------------------------------------------------------------------------
def _loader(dataset: TrainingImages, batch_size: int, shuffle: bool, workers: int, seed: int, device: str):
    import torch

    generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers,
                                       drop_last=shuffle and len(dataset) > batch_size,
                                       generator=generator, pin_memory=device.startswith("cuda"),
                                       persistent_workers=workers > 0)


def _train_mode(model: Any, cfg: TrainConfig) -> None:
    """Training mode, except a frozen backbone, whose batch-norm statistics must not drift."""
    model.train()
    if cfg.backbone_lr_scale <= 0:
        model.stages.eval()


def _autocast(device: str) -> Any:
    """bf16 autocast on CUDA; plain float32 elsewhere."""
    import contextlib

    import torch

    return torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else contextlib.nullcontext()


def _normalise(images: Any) -> Any:
    import torch

    from manet.pipeline import IMAGENET_MEAN, IMAGENET_STD

    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255 - mean) / std


def _evaluate(model: Any, loader: Any, device: str, cfg: TrainConfig) -> tuple[float, Any, Any]:
    """Accuracy plus SR-MAC descriptors (learned saliency) of a validation pass."""
    import torch

    from manet.manet_math import resize_map
    from manet.pooling import srmac

    model.eval()
    correct = total = 0
    descriptors, labels = [], []
    with torch.inference_mode():
        for images, masks, target in loader:
            images, masks, target = images.to(device), masks.to(device), target.to(device)
            out = model(_normalise(images), masks[:, 1:2].float() / 255 if cfg.text else None)
            correct += int((out["logits"].argmax(1) == target).sum())
            total += len(target)
            features = out["weighted"].float()
            saliency = (resize_map(torch.sigmoid(out["saliency_logits"].float()), features.shape[-2:])
                        if out["saliency_logits"] is not None else torch.ones_like(features[:, :1]))
            pooled = srmac(features, saliency)
            descriptors.append(torch.nn.functional.normalize(pooled, dim=1).cpu())
            labels.append(target.cpu())
    _train_mode(model, cfg)
    return correct / max(1, total), torch.cat(descriptors), torch.cat(labels)


def _retrieval_map7(val_desc: Any, val_products: np.ndarray, gallery_desc: Any, gallery_products: np.ndarray) -> float:
    """MAP@7 of val images against train images, relevant = same product."""
    from manet.metrics import evaluate_rankings, ranked_relevance

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


def train(db: Database, registry: Registry, cfg: TrainConfig, *, device: str, resume: bool = False,
          progress: bool = False, say: Callable[[str], None] = lambda _m: None) -> TrainReport:
    """Train MANet (or the plain classifier with both branches off) and register the model."""
    import torch
    from tqdm import tqdm

    from manet.manet_math import dice_loss
    from manet.manet_model import MANetConfig, build_manet
    from manet.models import save_trained_model
    from manet.trainset import training_images

    if cfg.epochs < 1 or cfg.batch_size < 1:
        raise ManetError("--epochs and --batch-size must be at least 1")
    backbone = registry.create("backbone", cfg.backbone)
    if cfg.image_size < 2 * backbone.stride or cfg.image_size % backbone.stride:
        raise ManetError(
            f"image size {cfg.image_size} does not suit {cfg.backbone}: use a multiple of "
            f"{backbone.stride} of at least {2 * backbone.stride} (e.g. 128 or 224)"
        )
    train_rows = training_images(db, cfg.training_set, "train")
    val_rows = training_images(db, cfg.training_set, "val")
    classes = sorted({row[3] for row in train_rows + val_rows})
    if len(classes) < 2:
        raise ManetError(f"training set '{cfg.training_set}' has {len(classes)} category; MANet needs at "
                         f"least 2: mine more categories (manet categories mine) and rebuild it")
    if not train_rows or not val_rows:
        empty = "train" if not train_rows else "val"
        raise ManetError(f"the {empty} split of training set '{cfg.training_set}' is empty; "
                         f"rebuild it with more images or another --val-fraction")

    directory = checkpoint_dir(cfg)
    last = directory / "last.pt"
    start_epoch, state = 0, None
    if resume:
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
        start_epoch = int(state["epoch"])
        cfg.epochs = max(cfg.epochs, start_epoch)
    elif last.exists():
        raise ManetError(f"a training run named '{cfg.name}' exists ({last}); add --resume or pick another --name")

    torch.manual_seed(cfg.seed)
    manet_cfg = MANetConfig(**cfg.manet_config(len(classes)))
    model = build_manet(manet_cfg, registry).to(device)
    if device.startswith("cuda"):
        model = model.to(memory_format=torch.channels_last)

    estimator = registry.create("saliency_estimator", cfg.saliency_estimator)
    detector = None
    if cfg.text:
        from manet.plugins.text_detectors import default_text_detector

        cfg.text_detector = cfg.text_detector or default_text_detector()
        detector = registry.create("text_detector", cfg.text_detector)
    items_train = [(r[0], r[1], r[2]) for r in train_rows]
    items_val = [(r[0], r[1], r[2]) for r in val_rows]
    say(f"{len(items_train)} training / {len(items_val)} validation images, {len(classes)} categories")
    masks = compute_masks(items_train + items_val, estimator, detector,
                          round(cfg.image_size * BASE_SCALE), progress)

    workers = cfg.num_workers if cfg.num_workers is not None else min(4, max(0, (os.cpu_count() or 1) - 1))
    train_loader = _loader(TrainingImages(items_train, masks, cfg.image_size, True), cfg.batch_size, True,
                           workers, cfg.seed, device)
    eval_train = _loader(TrainingImages(items_train, masks, cfg.image_size, False), cfg.batch_size, False,
                         workers, cfg.seed, device)
    eval_val = _loader(TrainingImages(items_val, masks, cfg.image_size, False), cfg.batch_size, False,
                       workers, cfg.seed, device)
    product_of = _products_of(db, [i for i, _, _ in items_train + items_val])
    gallery_products = np.array([product_of[i] for i, _, _ in items_train])
    val_products = np.array([product_of[i] for i, _, _ in items_val])

    backbone_params = list(model.stages.parameters())
    backbone_ids = {id(p) for p in backbone_params}
    groups = [{"params": [p for p in model.parameters() if id(p) not in backbone_ids], "lr": cfg.lr}]
    if cfg.backbone_lr_scale > 0:
        groups.append({"params": backbone_params, "lr": cfg.lr * cfg.backbone_lr_scale})
    else:  # frozen backbone: only the attention branch and the head learn
        for param in backbone_params:
            param.requires_grad_(False)
    optimizer = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    steps_per_epoch = len(train_loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, cfg.epochs * steps_per_epoch,
                                              round(cfg.warmup_epochs * steps_per_epoch)))
    report = TrainReport(cfg.name, device, str(last), resumed_from=start_epoch)
    history: list[dict[str, Any]] = []
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history = state.get("history", [])
        say(f"resuming '{cfg.name}' after epoch {start_epoch}")

    directory.mkdir(parents=True, exist_ok=True)
    _train_mode(model, cfg)
    for epoch in range(start_epoch + 1, cfg.epochs + 1):
        started = time.perf_counter()
        # Shuffle order is a function of (seed, epoch), so a resumed run sees the same order.
        train_loader.generator.manual_seed(cfg.seed * 100_003 + epoch)
        totals = {"loss": 0.0, "ce": 0.0, "dice": 0.0, "correct": 0, "seen": 0}
        bar = tqdm(train_loader, desc=f"epoch {epoch}/{cfg.epochs}", disable=not progress)
        for images, masks_batch, target in bar:
            images = images.to(device, non_blocking=True)
            masks_batch = masks_batch.to(device, non_blocking=True).float() / 255
            target = target.to(device, non_blocking=True)
            with _autocast(device):
                out = model(_normalise(images), masks_batch[:, 1:2] if cfg.text else None)
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
        val_accuracy, val_desc, _ = _evaluate(model, eval_val, device, cfg)
        _, gallery_desc, _ = _evaluate(model, eval_train, device, cfg)
        seen = max(1, totals["seen"])
        metrics = EpochMetrics(epoch, totals["loss"] / seen, totals["ce"] / seen, totals["dice"] / seen,
                               totals["correct"] / seen, val_accuracy,
                               _retrieval_map7(val_desc, val_products, gallery_desc, gallery_products),
                               time.perf_counter() - started)
        report.epochs.append(metrics)
        history.append(asdict(metrics))
        payload = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                   "scheduler": scheduler.state_dict(), "epoch": epoch, "config": asdict(cfg),
                   "manet": asdict(manet_cfg), "classes": classes, "history": history}
        tmp = directory / "last.pt.tmp"
        torch.save(payload, tmp)
        os.replace(tmp, last)  # atomic: an interrupt never leaves a half-written checkpoint
        save_trained_model(db, registry, cfg, asdict(manet_cfg), str(last), classes, history)
        say(f"epoch {epoch}: loss {metrics.loss:.4f} (ce {metrics.ce:.4f}, dice {metrics.dice:.4f}) "
            f"train acc {metrics.train_accuracy:.3f} val acc {metrics.val_accuracy:.3f} "
            f"val MAP@7 {metrics.val_map7:.4f} ({metrics.seconds:.0f} s)")
    return report
