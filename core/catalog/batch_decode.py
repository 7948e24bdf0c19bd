"""Image batches for extraction: what DataLoader workers (or a worker's own loop) hand the model.

Each file is decoded on the CPU (:func:`manet.catalog.images.read_image_tensor`), or, with batch
decoding, plain JPEGs are only read and header-checked (:func:`manet.catalog.images.jpeg_for_batch_decode`)
and the main process decodes them together on the device (:func:`manet.catalog.images.decode_jpeg_batch`,
nvjpeg on CUDA). A batch the device cannot decode is decoded again file by file on the CPU, so a
single bad file fails alone, with the same message as on the CPU path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from manet.catalog.images import decode_jpeg_batch, jpeg_for_batch_decode, read_image_tensor
from manet.errors import ImageError
from manet.safe_files import ReadLimits

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: One image to extract: (image id, is it a catalogue image, file path).
Item = tuple[int, bool, str]


class Sample(NamedTuple):
    """One file as read by a DataLoader worker: decoded pixels, JPEG bytes, or an error."""

    item: Item
    pixels: "torch.Tensor | None"
    jpeg: bytes | None
    error: str | None


@dataclass
class ImageBatch:
    """A batch on its way to the model.

    ``ids``/``gallery``/``uris`` list the decoded images in ``pixels`` (uint8 (n, 3, S, S))
    first, then the files whose JPEG bytes are in ``jpeg_bytes`` (decoded later, on the device),
    one after the other, ``jpeg_lengths`` long each: one tensor, so a batch crosses from a
    DataLoader worker in one shared-memory block, not one per file. ``failures`` are
    (image id, one-line error) of files that could not be decoded.
    """

    ids: list[int]
    gallery: list[bool]
    uris: list[str]
    pixels: "torch.Tensor | None"
    jpeg_bytes: "torch.Tensor | None" = None
    jpeg_lengths: list[int] = field(default_factory=list)
    failures: list[tuple[int, str]] = field(default_factory=list)

    def jpegs(self) -> "list[torch.Tensor]":
        """The JPEG files' bytes, one 1-D uint8 tensor (a view) each."""
        import torch

        return list(torch.split(self.jpeg_bytes, self.jpeg_lengths)) if self.jpeg_lengths else []

    def pin_memory(self) -> "ImageBatch":
        """Page-locked copies, for asynchronous copies to CUDA (called by DataLoader)."""
        return replace(self, pixels=self.pixels.pin_memory() if self.pixels is not None else None,
                       jpeg_bytes=self.jpeg_bytes.pin_memory() if self.jpeg_bytes is not None else None)


class ImageReader:
    """A map-style dataset keyed by :data:`Item` itself, so DataLoader's ``batch_sampler`` can
    stream items from the database instead of indexing a list held in memory.

    Decoding errors are returned, not raised, so one bad file never kills a DataLoader worker.
    """

    def __init__(self, size: int, max_pixels: int | None, batch_decode: bool,
                 limits: ReadLimits | None = None) -> None:
        self.size = size
        self.max_pixels = max_pixels
        self.batch_decode = batch_decode
        self.limits = limits

    def __getitem__(self, item: Item) -> Sample:
        path = Path(item[2])
        try:
            if self.batch_decode:
                data = jpeg_for_batch_decode(path, self.max_pixels, self.limits)
                if data is not None:
                    return Sample(item, None, data, None)
            return Sample(item, read_image_tensor(path, self.size, self.max_pixels, self.limits), None, None)
        except ImageError as exc:
            return Sample(item, None, None, str(exc))


def collate(samples: Sequence[Sample]) -> ImageBatch:
    """DataLoader ``collate_fn``: stack the decoded images, keep the JPEG bytes as a list."""
    import torch

    decoded = [s for s in samples if s.pixels is not None]
    encoded = [s for s in samples if s.jpeg is not None]
    ordered = decoded + encoded
    return ImageBatch(
        ids=[s.item[0] for s in ordered],
        gallery=[s.item[1] for s in ordered],
        uris=[s.item[2] for s in ordered],
        pixels=torch.stack([s.pixels for s in decoded]) if decoded else None,
        jpeg_bytes=(torch.frombuffer(bytearray(b"".join(s.jpeg for s in encoded)), dtype=torch.uint8)
                    if encoded else None),
        jpeg_lengths=[len(s.jpeg) for s in encoded],
        failures=[(s.item[0], s.error) for s in samples if s.error is not None],
    )


def read_batch(items: Sequence[Item], size: int, max_pixels: int | None, batch_decode: bool,
               limits: ReadLimits | None = None) -> ImageBatch:
    """The same as one DataLoader batch, read in this process (for `manet worker`)."""
    reader = ImageReader(size, max_pixels, batch_decode, limits)
    return collate([reader[item] for item in items])


def on_device(batch: ImageBatch, size: int, device: str, max_pixels: int | None = None,
              limits: ReadLimits | None = None) -> ImageBatch:
    """``batch`` with every image decoded into one uint8 (B, 3, S, S) tensor on ``device``
    (``pixels``, in the order of ``ids``) and no JPEG bytes left.

    The JPEGs are decoded together on the device; if that fails, each is decoded on the CPU
    instead, and the files that fail there too move to ``failures`` with the CPU path's message.
    """
    import torch

    parts = [batch.pixels.to(device, non_blocking=True)] if batch.pixels is not None else []
    n_decoded = len(batch.ids) - len(batch.jpeg_lengths)
    keep = list(range(n_decoded))
    failures = list(batch.failures)
    if batch.jpeg_lengths:
        try:
            parts.append(decode_jpeg_batch(batch.jpegs(), size, device))
            keep += range(n_decoded, len(batch.ids))
        except RuntimeError:  # one bad file fails the whole call: find it on the CPU path
            fallback = []
            for index in range(n_decoded, len(batch.ids)):
                try:
                    fallback.append(read_image_tensor(Path(batch.uris[index]), size, max_pixels, limits))
                    keep.append(index)
                except ImageError as exc:
                    failures.append((batch.ids[index], str(exc)))
            if fallback:
                parts.append(torch.stack(fallback).to(device))
    return ImageBatch(
        ids=[batch.ids[i] for i in keep],
        gallery=[batch.gallery[i] for i in keep],
        uris=[batch.uris[i] for i in keep],
        pixels=torch.cat(parts) if parts else None,
        failures=failures,
    )
