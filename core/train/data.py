"""Training data: decoded, jointly augmented (image, saliency mask, text mask, label) samples,
the masks computed once per run, the seeds of each epoch's shuffle and augmentations, and the
loaders of a (possibly data-parallel) run."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from manet.train.config import TrainConfig

#: Masks are cached at this resolution (per image, uint8) and resized to the crop on use.
MASK_CACHE_SIZE = 64
#: The un-augmented image is squashed to image_size * this before random cropping.
BASE_SCALE = 1.15


def text_mask_of(masks: Any, text: bool) -> Any:
    """The text mask the network reads from a loader batch's uint8 masks (channel 0 the
    pseudo-saliency, channel 1 the detector's cached text mask): channel 1 in [0, 1], or None
    when the text branch is off."""
    return masks[:, 1:2].float() / 255 if text else None


# -- samples -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class MaskTable:
    """The cached uint8 (2, 64, 64) masks of every image, held in one tensor: a loader worker
    receives them as one shared-memory block, not one per image."""

    #: Row of each image id in ``table``.
    rows: dict[int, int]
    #: uint8 (images, 2, MASK_CACHE_SIZE, MASK_CACHE_SIZE).
    table: Any

    @classmethod
    def of(cls, masks: dict[int, Any]) -> MaskTable:
        """The table of ``{image id: uint8 (2, 64, 64) mask}``."""
        import torch

        ids = list(masks)
        table = (torch.stack([masks[i] for i in ids]) if ids
                 else torch.zeros((0, 2, MASK_CACHE_SIZE, MASK_CACHE_SIZE), dtype=torch.uint8))
        return cls({image_id: row for row, image_id in enumerate(ids)}, table)

    def __getitem__(self, image_id: int) -> Any:
        return self.table[self.rows[image_id]]

    def __len__(self) -> int:
        return len(self.rows)


class TrainingImages:
    """Decoded, jointly augmented (image, saliency mask, text mask, label) samples."""

    def __init__(self, items: Sequence[tuple[int, str, int]], masks: MaskTable, image_size: int,
                 train: bool, max_pixels: int | None = None) -> None:
        self.items = items
        self.max_pixels = max_pixels  # the pixel cap of every image read (None: the default)
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
        image = tv_tensors.Image(read_image_tensor(Path(uri), base, self.max_pixels))
        stacked = torch.nn.functional.interpolate(
            self.masks[image_id].float().unsqueeze(0), size=(base, base), mode="nearest"
        )[0]
        image, masks = self._transform(image, tv_tensors.Mask(stacked))
        return image.as_subclass(torch.Tensor), masks.as_subclass(torch.Tensor), label


def compute_masks(items: Sequence[tuple[int, str, int]], estimator: Any, detector: Any | None,
                  size: int, progress: bool, max_pixels: int | None = None) -> dict[int, Any]:
    """Per image: [binarised pseudo-saliency, soft text mask] as uint8 (2, 64, 64), once."""
    import torch
    from tqdm import tqdm

    from manet.catalog.images import read_image_tensor
    from manet.nn.attention_math import binarize_at_mean

    masks: dict[int, Any] = {}
    batch = 32
    for start in tqdm(range(0, len(items), batch), desc="pseudo-saliency", disable=not progress):
        chunk = items[start:start + batch]
        images = torch.stack([read_image_tensor(Path(uri), size, max_pixels) for _, uri, _ in chunk]).float() / 255
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


def shared_masks(group: Any, items: Sequence[tuple[int, str, int]], estimator: Any, detector: Any | None,
                 image_size: int, progress: bool, max_pixels: int | None = None) -> MaskTable:
    """Each rank computes the masks of its shard of ``items`` once; every rank then holds all of them."""
    from manet.train.distributed import shard

    masks: dict[int, Any] = {}
    for part in group.all_gather(compute_masks(shard(items, group.info.rank, group.info.world_size), estimator,
                                               detector, round(image_size * BASE_SCALE), progress, max_pixels)):
        masks.update(part)
    return MaskTable.of(masks)


# -- seeds -------------------------------------------------------------------------------------
def epoch_seed(seed: int, epoch: int) -> int:
    """Seed of the shuffle of ``epoch``: the same on every rank and in a resumed run."""
    return seed * 100_003 + epoch


def augmentation_seed(seed: int, epoch: int, rank: int) -> int:
    """Seed of the random augmentations (and dropout) of ``rank`` in ``epoch``: ranks differ,
    a resumed run repeats them."""
    return epoch_seed(seed, epoch) + 1_000_003 * (rank + 1)


# -- loaders -----------------------------------------------------------------------------------
def loader(dataset: TrainingImages, batch_size: int, workers: int, device: str, sampler: Any = None):
    """A training loader (``sampler`` given: drops the last partial batch) or an in-order one.

    The training loader starts its workers afresh each epoch: a worker seeds its augmentations
    once, from the loader's generator, when it starts, so persistent workers would carry one
    random stream through every epoch and a resumed run could not repeat epoch e's augmentations
    (:func:`augmentation_seed`). The in-order loaders draw nothing random and keep theirs.
    """
    import torch

    from manet.loader_processes import worker_context

    training = sampler is not None
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                                       drop_last=training and len(sampler) > batch_size,
                                       generator=torch.Generator(), pin_memory=device.startswith("cuda"),
                                       persistent_workers=workers > 0 and not training,
                                       multiprocessing_context=worker_context(workers))


@dataclass
class Loaders:
    """The loaders of one rank: its shuffled training shard, and its evaluation shards."""

    #: Shuffles the training set alike on every rank (seeded per epoch) and hands each its slice.
    sampler: Any
    train: Any
    eval_train: Any
    eval_val: Any


def make_loaders(cfg: TrainConfig, info: Any, device: str, items_train: list[tuple[int, str, int]],
                 items_val: list[tuple[int, str, int]], masks: MaskTable,
                 max_pixels: int | None = None) -> Loaders:
    """The loaders of rank ``info.rank`` of ``info.world_size``, reading images under the pixel
    cap ``max_pixels`` (None: the default)."""
    from torch.utils.data.distributed import DistributedSampler

    from manet.train.distributed import default_loader_workers, shard

    rank, world = info.rank, info.world_size
    workers = (cfg.num_workers if cfg.num_workers is not None
               else default_loader_workers(os.cpu_count() or 1, info.local_world_size))
    train_set = TrainingImages(items_train, masks, cfg.image_size, True, max_pixels)
    # The shuffle of epoch e is seeded with epoch_seed(seed, e) (DistributedSampler adds the epoch
    # to its seed); every rank shuffles alike and takes its own slice of the permutation.
    sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True,
                                 seed=epoch_seed(cfg.seed, 0))
    train_loader = loader(train_set, cfg.batch_size, workers, device, sampler)
    # Evaluation: each rank its shard, descriptors gathered in gathered_order.
    eval_train = loader(TrainingImages(shard(items_train, rank, world), masks, cfg.image_size, False, max_pixels),
                        cfg.batch_size, workers, device)
    eval_val = loader(TrainingImages(shard(items_val, rank, world), masks, cfg.image_size, False, max_pixels),
                      cfg.batch_size, workers, device)
    return Loaders(sampler, train_loader, eval_train, eval_val)
