"""Image validation and decoding: the one place where manet opens image files.

Every failure is an :class:`~manet.errors.ImageError` with a one-line message that names
the file, says what is wrong and, where it helps, how to fix it. The behaviour does not
depend on PIL's process-wide knobs (``Image.MAX_IMAGE_PIXELS``,
``ImageFile.LOAD_TRUNCATED_IMAGES``, ``DecompressionBombWarning`` filters): manet applies
its own pixel cap (``max_pixels``, else :attr:`~manet.safe_files.ReadLimits.max_pixels`: from
``--max-pixels`` / ``MANET_MAX_PIXELS`` through :class:`~manet.settings.Settings`) from the header
before any pixel is decoded, and truncated files are always rejected.

Files are opened by :mod:`manet.safe_files` only: regular files, never a pipe or device, read in
chunks under a byte cap and a per-file time budget (:class:`~manet.safe_files.ReadLimits`) that
also cover decoding; hashing streams too, so no file is ever held in memory whole.

torch is imported only inside the functions that return tensors, so importing this module stays cheap.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from manet.catalog.file_kinds import content_kind
from manet.config import MAX_PIXELS_ENV
from manet.errors import ImageError, ManetError, one_line
from manet.safe_files import CHUNK_BYTES, LimitedReader, ReadLimits, open_limited, read_limited

if TYPE_CHECKING:  # pragma: no cover
    import torch

_FIX = "re-export or remove the file"

# EXIF orientations 5-8 rotate by 90 degrees, so the displayed size is the stored one swapped.
_EXIF_ORIENTATION = 0x0112
_SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})

# PIL's bomb guard and truncation switch are module globals that other code may change. While
# at least one manet decode is running they hold manet's values (no PIL bomb check: manet's
# cap replaces it; truncated files always fail); the last decode to finish restores them.
# The lock is held only to count, never during decoding, so threads still decode in parallel.
_PIL_LOCK = threading.Lock()
_active_decodes = 0
_saved_globals: tuple[int | None, bool] | None = None


def _restore_after_fork() -> None:
    # A DataLoader worker forked while another thread was decoding would otherwise inherit a
    # held lock or a count that never returns to zero.
    global _PIL_LOCK, _active_decodes, _saved_globals
    _PIL_LOCK = threading.Lock()
    if _saved_globals is not None:
        Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = _saved_globals
    _active_decodes, _saved_globals = 0, None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_restore_after_fork)


@contextmanager
def _manet_pil_settings() -> Iterator[None]:
    """Run a decode with PIL's globals set to manet's values, restoring them afterwards."""
    global _active_decodes, _saved_globals
    with _PIL_LOCK:
        if _active_decodes == 0:
            _saved_globals = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)
            Image.MAX_IMAGE_PIXELS = None
            ImageFile.LOAD_TRUNCATED_IMAGES = False
        _active_decodes += 1
    try:
        yield
    finally:
        with _PIL_LOCK:
            _active_decodes -= 1
            if _active_decodes == 0 and _saved_globals is not None:
                Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = _saved_globals
                _saved_globals = None


@dataclass(frozen=True)
class ImageInfo:
    """Facts about a valid image file. ``width``/``height`` are as displayed (EXIF applied);
    ``mode`` and ``format`` are PIL's names for the stored data (e.g. ``"RGB"``, ``"JPEG"``)."""

    width: int
    height: int
    mode: str
    format: str
    sha256: str


def _cap(max_pixels: int | None, limits: ReadLimits | None) -> int:
    """The pixel cap of one read: ``max_pixels`` when given, else ``limits``' (by default
    :data:`manet.config.DEFAULT_MAX_PIXELS`)."""
    if max_pixels is None:
        return (limits or ReadLimits()).max_pixels
    if max_pixels < 1:
        raise ManetError(f"max_pixels must be a positive integer, got {max_pixels!r}")
    return max_pixels


def _open(path: Path, limits: ReadLimits | None) -> tuple[LimitedReader, bytes]:
    """The file opened under ``limits`` and its first bytes (for messages); refuses what is not
    a regular file, and an empty file."""
    reader = open_limited(path, limits)
    try:
        head = reader.read(16)
        if not head:
            raise ImageError(f"image {path} is empty (0 bytes); {_FIX}")
        reader.seek(0)
    except BaseException:
        reader.close()
        raise
    return reader, head


def _sha256(reader: LimitedReader) -> str:
    """SHA-256 of the whole file, read in chunks (under the reader's caps), then rewound."""
    digest = hashlib.sha256()
    reader.seek(0)
    while chunk := reader.read(CHUNK_BYTES):
        digest.update(chunk)
    reader.seek(0)
    return digest.hexdigest()


def _describe_decode_error(path: Path, exc: BaseException) -> ImageError:
    detail = one_line(exc)
    if "truncat" in detail.lower():
        return ImageError(f"image {path} is truncated (the file ends before the image data does); {_FIX}")
    return ImageError(f"image {path} has corrupt image data ({detail}); {_FIX}")


def _open_checked(
    path: Path, reader: LimitedReader, head: bytes, max_pixels: int, draft_size: tuple[int, int] | None
) -> tuple[Image.Image, ImageInfo]:
    """Open the file behind ``reader``, enforce the pixel cap from the header, then decode all of it.

    ``draft_size`` lets JPEG decode at 1/2, 1/4 or 1/8 scale (DCT scaling) while staying at
    least that size; all entropy-coded data is still read, so truncation is still caught.
    Returns the loaded image and the info of the stored (not drafted) image; ``sha256`` is
    filled by the caller that needs it.
    """
    with _manet_pil_settings():
        # Buffered in chunks: PIL reads small pieces, and each reader call checks the caps.
        return _open_and_decode(path, io.BufferedReader(reader, CHUNK_BYTES), head, max_pixels, draft_size)


def _check_pixel_cap(path: Path, image: Image.Image, max_pixels: int) -> None:
    """Raise (and close ``image``) when its header says it is over the pixel cap."""
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise ImageError(
            f"image {path} is {width}x{height} = {width * height} pixels, over the cap of "
            f"{max_pixels} (decompression-bomb guard); set {MAX_PIXELS_ENV} to a larger value "
            f"to accept it, or downscale the image"
        )


def _exif_orientation(image: Image.Image) -> int | None:
    try:
        return image.getexif().get(_EXIF_ORIENTATION)
    except Exception:  # damaged EXIF must not reject otherwise good pixels
        return None


def _open_and_decode(
    path: Path, fp: io.BufferedReader, head: bytes, max_pixels: int, draft_size: tuple[int, int] | None
) -> tuple[Image.Image, ImageInfo]:
    try:
        # From the open file, not the path: the format is detected by content, whatever the extension.
        image = Image.open(fp)
    except UnidentifiedImageError as exc:
        raise ImageError(
            f"image {path} is not an image file that can be read (looks like {content_kind(head)}); {_FIX}"
        ) from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise _describe_decode_error(path, exc) from exc

    _check_pixel_cap(path, image, max_pixels)
    width, height = image.size
    mode, fmt = image.mode, image.format or "unknown"
    orientation = _exif_orientation(image)
    if orientation in _SWAPPING_ORIENTATIONS:
        width, height = height, width

    if draft_size is not None:
        image.draft(mode, draft_size)  # no-op for formats other than JPEG
    try:
        image.load()
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise _describe_decode_error(path, exc) from exc
    return image, ImageInfo(width, height, mode, fmt, "")


def inspect_image(path: Path, max_pixels: int | None = None, limits: ReadLimits | None = None) -> ImageInfo:
    """Validate an image file and describe it; raises :class:`ImageError` if it is unusable.

    The whole file is decoded (JPEG at 1/8 scale, which still reads every byte), so a
    truncated or corrupt file is rejected here rather than later in a DataLoader worker.
    ``limits`` caps the bytes read and the seconds reading, hashing and decoding may take.
    """
    path = Path(path)
    reader, head = _open(path, limits)
    with reader:
        digest = _sha256(reader)
        image, info = _open_checked(path, reader, head, _cap(max_pixels, limits), draft_size=(1, 1))
        image.close()
    return ImageInfo(info.width, info.height, info.mode, info.format, digest)


def _white(size: tuple[int, int]) -> Image.Image:
    return Image.new("RGBA", size, (255, 255, 255, 255))


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB, the same way every time.

    Transparency is composited onto white; 16/32-bit integer images are read as 16-bit
    (``value >> 8``, clipped), since that is how PIL opens 16-bit PNG and TIFF; CMYK uses
    PIL's conversion; grayscale is replicated into the three channels.
    """
    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "P" and "transparency" not in image.info:
        return image.convert("RGB")
    if mode in {"RGBA", "LA", "PA", "P", "La", "RGBa"}:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(_white(rgba.size), rgba).convert("RGB")
    if mode == "I" or mode.startswith("I;16"):
        import numpy as np

        values = np.asarray(image).astype(np.int64)
        gray = (np.clip(values, 0, 65535) >> 8).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    try:
        return image.convert("RGB")  # L, 1, CMYK, YCbCr, F (clipped to 0..255), ...
    except ValueError as exc:
        raise ImageError(f"image mode {mode} cannot be converted to RGB ({one_line(exc)})") from exc


def _load(path: Path, max_pixels: int | None, draft_size: tuple[int, int] | None,
          limits: ReadLimits | None) -> Image.Image:
    path = Path(path)
    reader, head = _open(path, limits)
    with reader:
        image, _ = _open_checked(path, reader, head, _cap(max_pixels, limits), draft_size)
    return _oriented_rgb(path, image)


def _oriented_rgb(path: Path, image: Image.Image) -> Image.Image:
    """A decoded image with its EXIF orientation applied, as 8-bit RGB."""
    try:
        oriented = ImageOps.exif_transpose(image)
    except Exception:  # damaged EXIF: keep the stored orientation rather than reject the image
        oriented = image
    try:
        return to_rgb(oriented)
    except ImageError as exc:
        raise ImageError(f"image {path}: {exc}; {_FIX}") from exc


def load_rgb(path: Path, max_pixels: int | None = None, *, at_least: int | None = None,
             limits: ReadLimits | None = None) -> Image.Image:
    """Validate and decode an image: EXIF orientation applied, 8-bit RGB.

    Full size by default; with ``at_least``, a JPEG may decode at a reduced scale whose sides are
    still at least that many pixels (thumbnails of large photos at a fraction of the cost).
    """
    return _load(path, max_pixels, None if at_least is None else (at_least, at_least), limits)


def read_image_tensor(path: Path, size: int, max_pixels: int | None = None,
                      limits: ReadLimits | None = None) -> "torch.Tensor":
    """Decode an image to a uint8 tensor (3, size, size); safe to call in DataLoader workers.

    The image is squashed (aspect ratio not kept) by :func:`resize_square` (bilinear,
    antialiased when downscaling, on uint8). JPEGs are first decoded at the smallest DCT scale
    that still covers ``size`` x ``size``, which is much faster for large photos.
    """
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    image = _load(path, max_pixels, (size, size), limits)  # first: a bad file fails before torch loads
    return _square_tensor(image, size)


def decode_image_tensor(data: bytes, size: int, *, name: str = "upload",
                        limits: ReadLimits | None = None) -> "torch.Tensor":
    """:func:`read_image_tensor` for an image held in memory (an HTTP upload): the same checks
    (format from the content, pixel cap from the header, truncation, ``limits``' byte cap and
    time budget) and the same tensor; messages call it ``name``."""
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    path = Path(name)
    if not data:
        raise ImageError(f"image {name} is empty (0 bytes); send an image file")
    limits = limits or ReadLimits()
    # The in-memory bytes behind the same capped reader a file gets (it only reads, seeks and tells).
    reader = LimitedReader(io.BytesIO(data), path, limits, limits.deadline())  # type: ignore[arg-type]
    with reader:
        image, _ = _open_checked(path, reader, data[:16], limits.max_pixels, (size, size))
    return _square_tensor(_oriented_rgb(path, image), size)


def _square_tensor(image: Image.Image, size: int) -> "torch.Tensor":
    """An RGB image squashed to ``size`` x ``size`` as a uint8 (3, size, size) tensor, by
    :func:`resize_square` (the batched JPEG path's resize too)."""
    import numpy as np
    import torch

    # A plain (writable, so torch does not warn) HWC copy, read as CHW through a view: the resize
    # reads that layout directly, so the full-size image is never transposed (0.34 against
    # 0.58 ms for a 384 px photo, the same pixels). Only the small result is made contiguous.
    pixels = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)
    return resize_square(pixels, size).contiguous()


def resize_square(image: "torch.Tensor", size: int) -> "torch.Tensor":
    """A uint8 (3, H, W) image squashed to (3, size, size): torchvision's bilinear resize with
    antialiasing, on uint8 (within one grey level of PIL's bilinear resize, and 2.5x faster than
    it on the CPU: 0.36 against 0.93 ms for a 384 px photo, which is most of a CPU extraction's
    per-image decoding time)."""
    from torchvision.transforms.v2 import functional as F

    if tuple(image.shape[-2:]) == (size, size):
        return image
    return F.resize(image, [size, size], antialias=True)


# -- batched JPEG decoding (torchvision.io.decode_jpeg; nvjpeg on CUDA) -----------------------

_JPEG_START = b"\xff\xd8"
_JPEG_END = b"\xff\xd9"
_BATCH_DECODABLE_MODES = frozenset({"RGB", "L"})
_TORCHVISION_DEPRECATION = "The image decoding and encoding capabilities of TorchVision"


def jpeg_for_batch_decode(path: Path, max_pixels: int | None = None,
                          limits: ReadLimits | None = None) -> bytes | None:
    """The bytes of ``path`` when :func:`decode_jpeg_batch` gives the same image as
    :func:`read_image_tensor` would, else None (decode that file with read_image_tensor).

    Only the header is read: the file must be a JPEG that ends with its end-of-image marker
    (a truncated file is left to PIL, which rejects it), stored as RGB or grayscale (CMYK is
    not), with no EXIF orientation to apply (the batch decoder ignores it). A missing, empty or
    over-the-cap file raises :class:`ImageError` with the same message as read_image_tensor.
    """
    path = Path(path)
    reader, _head = _open(path, limits)
    with reader:
        data = read_limited(reader)  # the device decoder takes whole files (capped by ``limits``)
    if not (data.startswith(_JPEG_START) and data.endswith(_JPEG_END)):
        return None
    with _manet_pil_settings():
        try:
            image = Image.open(io.BytesIO(data))
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError):
            return None  # the PIL path reports it with its usual message
        with image:
            _check_pixel_cap(path, image, _cap(max_pixels, limits))
            plain = (image.format == "JPEG" and image.mode in _BATCH_DECODABLE_MODES
                     and _exif_orientation(image) in (None, 1))
    return data if plain else None


def decode_jpeg_batch(jpegs: list["torch.Tensor"], size: int, device: str) -> "torch.Tensor":
    """Decode JPEG files' bytes (1-D uint8 CPU tensors) together on ``device`` and resize each
    to ``size`` x ``size``: uint8 (B, 3, size, size) on ``device``.

    torchvision's ``decode_jpeg`` decodes the whole list in one call (nvjpeg on CUDA, libjpeg on
    the CPU) and returns nothing partial: a single undecodable file raises RuntimeError for the
    batch. The resize is :func:`read_image_tensor`'s, :func:`resize_square`; that path also
    decodes large JPEGs at a reduced DCT scale first, so the two agree to a few grey levels, not
    exactly.
    """
    import warnings

    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():
        # torchvision 0.29 deprecates its decoders in favour of TorchCodec; they still work.
        warnings.filterwarnings("ignore", message=_TORCHVISION_DEPRECATION, category=DeprecationWarning)
        decoded = decode_jpeg(jpegs, mode=ImageReadMode.RGB, device=device)
    return torch.stack([resize_square(image, size) for image in decoded])
