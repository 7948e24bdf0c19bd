"""Opening user-named paths safely: the one place manet opens a file it was pointed at.

A catalogue folder comes from many hands (mounted shares, synced folders, symlink farms), so every
path is untrusted. A named pipe blocks ``open()`` until a writer appears, a character device such
as ``/dev/zero`` reads without end, and ``stat`` sizes can lie (``/proc`` files say 0 bytes).
Hence: the path's type is checked before opening; it is opened non-blocking (and, once resolved,
without following a last symlink), then the open descriptor itself is checked, so a path that
changes type in between cannot block either; reads are capped in bytes and time while reading.

Every refusal is one line naming the path, what it is and how to fix it, raised as the caller's
error class (:class:`~manet.errors.ImageError` for images, ``DatasetError`` for manifests).
"""

from __future__ import annotations

import errno
import io
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from manet.config import DEFAULT_MAX_PIXELS, FILE_TIMEOUT_ENV, MAX_BYTES_ENV, MAX_PIXELS_ENV
from manet.errors import ImageError, ManetError, WeightsError, one_line

#: Bytes one image file may have (200 MiB: far above any photo, far below the machine's memory).
DEFAULT_MAX_BYTES = 200 * 1024 * 1024
#: Seconds reading and decoding one image file may take before it is recorded as failed.
DEFAULT_FILE_TIMEOUT = 30.0
#: Read size for hashing and for the decoder's reads (deadline and cap are checked per chunk).
CHUNK_BYTES = 1024 * 1024

_OPEN_FLAGS = (os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
               | getattr(os, "O_NOCTTY", 0))


@dataclass(frozen=True)
class ReadLimits:
    """Caps on reading one image file: ``max_bytes`` (enforced while reading), ``timeout``, the
    seconds that reading plus decoding it may take, and ``max_pixels``, checked from the image's
    header before any pixel is decoded (:mod:`manet.catalog.images`)."""

    max_bytes: int = DEFAULT_MAX_BYTES
    timeout: float = DEFAULT_FILE_TIMEOUT
    max_pixels: int = DEFAULT_MAX_PIXELS
    #: How to get a file over ``max_bytes`` read, for a caller whose cap is no --max-bytes.
    too_big_fix: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.max_bytes, int) or isinstance(self.max_bytes, bool) or self.max_bytes < 1:
            raise ManetError(f"max_bytes must be a positive integer, got {self.max_bytes!r}; "
                             f"set --max-bytes / {MAX_BYTES_ENV} to a byte count")
        if not isinstance(self.max_pixels, int) or isinstance(self.max_pixels, bool) or self.max_pixels < 1:
            raise ManetError(f"max_pixels must be a positive integer, got {self.max_pixels!r}; "
                             f"set --max-pixels / {MAX_PIXELS_ENV} to a pixel count")
        if not self.timeout > 0:
            raise ManetError(f"the per-file time budget must be a positive number of seconds, got "
                             f"{self.timeout!r}; set --file-timeout / {FILE_TIMEOUT_ENV}")

    def deadline(self) -> float:
        """The ``time.monotonic()`` by which a file opened now must be read and decoded."""
        return time.monotonic() + self.timeout


def describe_mode(mode: int) -> str:
    """What kind of file ``mode`` (an ``st_mode``) is, as a phrase: "a named pipe (FIFO)", ..."""
    for test, name in ((stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a Unix socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return name
    return f"a special file (mode {stat.S_IFMT(mode):o})"


def _link_note(path: Path) -> str:
    """" (a symbolic link to TARGET)" when ``path`` itself is a symlink, else ""."""
    try:
        return f" (a symbolic link to {os.readlink(path)})" if path.is_symlink() else ""
    except OSError:
        return ""


def _os_error(path: Path, what: str, exc: OSError, error: type[ManetError]) -> ManetError:
    """One-line error for an ``OSError`` raised while looking at or opening ``path``."""
    code = exc.errno
    if code == errno.ENOENT:
        if path.is_symlink():
            return error(f"{what} {path} is a dangling symbolic link (its target {os.readlink(path)} does not "
                         f"exist); fix or remove the link, or remove it from the dataset")
        return error(f"{what} {path} does not exist; check the path or remove it from the dataset")
    if code == errno.ELOOP:
        return error(f"{what} {path} is a symbolic link loop (it never reaches a file); fix or remove the "
                     f"link, or remove it from the dataset")
    if code == errno.ENOTDIR:
        return error(f"{what} {path} does not exist: a folder in its path is a file; check the path")
    if code in (errno.EACCES, errno.EPERM):
        return error(f"{what} {path} cannot be read (permission denied); make it readable "
                     f"(chmod a+r) or remove it from the dataset")
    return error(f"{what} {path} cannot be read: {exc.strerror or exc}; check the file or remove it "
                 f"from the dataset")


def _not_regular(path: Path, what: str, mode: int, error: type[ManetError]) -> ManetError:
    fix = ("give the file inside it" if stat.S_ISDIR(mode)
           else "replace it with a copy of the file itself")
    return error(f"{what} {path}{_link_note(path)} is {describe_mode(mode)}, not a regular file; manet reads "
                 f"only regular files: {fix}, or remove it from the dataset")


def check_regular(path: str | os.PathLike[str], *, what: str = "image",
                  error: type[ManetError] = ImageError) -> Path:
    """``path`` if it is a regular file (symlinks followed), else ``error`` with one line naming
    the path, what it is and how to fix it. Looks only (``stat``): nothing is opened."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise _os_error(path, what, exc, error) from None
    except ValueError as exc:  # an embedded NUL byte
        raise error(f"{what} {path!r} is not a valid path ({exc}); fix the path") from None
    if not stat.S_ISREG(mode):
        raise _not_regular(path, what, mode, error)
    return path


def open_regular(path: str | os.PathLike[str], *, what: str = "image",
                 error: type[ManetError] = ImageError) -> io.FileIO:
    """Open ``path`` for reading if, and only if, it is a regular file (symlinks followed).

    Never blocks on a named pipe or device: the type is checked with ``stat`` first, the
    resolved path is opened with ``O_NONBLOCK | O_NOFOLLOW``, and ``fstat`` of the open
    descriptor is checked again (the path may have changed type in between). Anything else
    raises ``error`` with one line naming the path, what it is and how to fix it.
    """
    path = check_regular(path, what=what, error=error)
    try:
        # Resolved first so that O_NOFOLLOW only refuses a link swapped in after the check.
        fd = os.open(os.path.realpath(path), _OPEN_FLAGS)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise error(f"{what} {path} changed into a symbolic link while being opened; run again "
                        f"when the folder has stopped changing") from None
        raise _os_error(path, what, exc, error) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise error(f"{what} {path} changed into {describe_mode(mode)} while being opened; manet reads "
                        f"only regular files: replace it with the file itself or remove it from the dataset")
        return io.FileIO(fd, "rb", closefd=True)
    except BaseException:
        os.close(fd)
        raise


def load_torch_file(path: str | os.PathLike[str], *, what: str, fix: str,
                    error: type[ManetError] = WeightsError) -> Any:
    """The tensors (``torch.load``, ``weights_only``) of the regular file ``path``, read through
    :func:`open_regular`; a file torch cannot read (text, truncated, another pickle) raises
    ``error`` with one line naming the path, what it should be and ``fix``."""
    import torch

    with open_regular(path, what=what, error=error) as file:
        try:
            return torch.load(io.BufferedReader(file), map_location="cpu", weights_only=True)
        except Exception as exc:  # untrusted bytes: torch.load raises many kinds
            reason = one_line(exc).split(". ")[0][:120]
            raise error(f"cannot read {what} {path}: not a torch file, or a damaged one ({reason}); {fix}") from None


def refuse_special_output(path: Path, what: str, fix: str) -> None:
    """Raise :class:`ManetError` when the output ``path`` exists and is not a regular file:
    writing to a named pipe would wait for a reader forever, to a device would not make a file."""
    if path.exists() and not path.is_file():
        raise ManetError(f"{what} {path} is {describe_mode(path.stat().st_mode)}, not a regular file; {fix}")


def _too_big(path: Path, what: str, size: str, limits: ReadLimits, error: type[ManetError]) -> ManetError:
    fix = limits.too_big_fix or f"raise --max-bytes / {MAX_BYTES_ENV} to accept it, or shrink or remove the file"
    return error(f"{what} {path} is {size}, over the cap of {limits.max_bytes} bytes; {fix}")


def _too_slow(path: Path, what: str, limits: ReadLimits, error: type[ManetError]) -> ManetError:
    return error(f"{what} {path} took longer than {limits.timeout:g} s to read and decode (slow or stuck "
                 f"storage?); check the mount, or raise --file-timeout / {FILE_TIMEOUT_ENV}")


class LimitedReader(io.RawIOBase):
    """A seekable, read-only view of an open regular file that refuses to read past
    ``limits.max_bytes`` (whatever ``stat`` said) and fails once ``deadline`` has passed.

    Decoders read through it in chunks, so the byte cap and the time budget hold while reading
    and decoding, not only before. It has no ``name``, so PIL never memory-maps the file behind it.
    """

    def __init__(self, raw: io.FileIO, path: Path, limits: ReadLimits, deadline: float, *,
                 what: str = "image", error: type[ManetError] = ImageError) -> None:
        super().__init__()
        self._raw, self._path, self._limits, self._deadline = raw, path, limits, deadline
        self._what, self._error = what, error

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._raw.seek(offset, whence)

    def tell(self) -> int:
        return self._raw.tell()

    def check_deadline(self) -> None:
        """Raise the time-budget error if the deadline has passed."""
        if time.monotonic() > self._deadline:
            raise _too_slow(self._path, self._what, self._limits, self._error)

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        self.check_deadline()
        view = memoryview(buffer).cast("B")
        # One byte past the cap is allowed into the read, to tell "exactly the cap" from "over it".
        room = self._limits.max_bytes + 1 - self._raw.tell()
        if room > 0:
            count = self._raw.readinto(view[: min(len(view), room)]) or 0
        if room <= 0 or self._raw.tell() > self._limits.max_bytes:
            raise _too_big(self._path, self._what, f"more than {self._limits.max_bytes} bytes", self._limits,
                           self._error)
        return count

    def close(self) -> None:
        self._raw.close()
        super().close()


def open_limited(path: str | os.PathLike[str], limits: ReadLimits | None = None, *, what: str = "image",
                 error: type[ManetError] = ImageError) -> LimitedReader:
    """:func:`open_regular`, refused early when ``stat`` already says it is over the byte cap
    or empty, wrapped in a :class:`LimitedReader` whose time budget starts now."""
    limits = limits or ReadLimits()
    deadline = limits.deadline()
    path = Path(path)
    raw = open_regular(path, what=what, error=error)
    try:
        size = os.fstat(raw.fileno()).st_size
        if size > limits.max_bytes:
            raise _too_big(path, what, f"{size} bytes", limits, error)
        return LimitedReader(raw, path, limits, deadline, what=what, error=error)
    except BaseException:
        raw.close()
        raise


def read_limited(reader: LimitedReader) -> bytes:
    """Everything ``reader`` has from its current position, read in chunks under its caps."""
    parts = []
    while chunk := reader.read(CHUNK_BYTES):
        parts.append(chunk)
    return b"".join(parts)
