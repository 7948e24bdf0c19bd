"""manet.safe_files on real paths made in tmp_path: only regular files are opened, never with a
blocking open(); reads are capped in bytes (even when stat lies) and in time."""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import make_odd_paths
from manet.catalog.images import inspect_image, jpeg_for_batch_decode, load_rgb, read_image_tensor
from manet.errors import DatasetError, ImageError, ManetError
from manet.safe_files import ReadLimits, open_limited, open_regular, read_limited


def _finishes(action: Callable[[], object], seconds: float = 20.0) -> object:
    """Run ``action`` in a daemon thread; fail (instead of hanging the suite) if it blocks."""
    outcome: dict[str, object] = {}

    def target() -> None:
        try:
            outcome["value"] = action()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "the call blocked"
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome.get("value")


def _png(path: Path, size: tuple[int, int] = (40, 30), seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path, format="PNG")
    return path


def test_every_odd_path_is_refused_in_one_line_without_blocking(tmp_path: Path) -> None:
    odd = make_odd_paths(lambda kind: tmp_path / "odd" / f"{kind}.jpg", tmp_path / "targets")
    paths = {kind: (entry.path, entry.words) for kind, entry in odd.items()}
    assert len(paths) >= 12
    readers = {
        "inspect_image": inspect_image,
        "read_image_tensor": lambda path: read_image_tensor(path, 32),
        "load_rgb": load_rgb,
        "jpeg_for_batch_decode": jpeg_for_batch_decode,
    }
    for kind, (path, words) in paths.items():
        for name, reader in readers.items():
            with pytest.raises(ImageError) as caught:
                _finishes(lambda: reader(path))  # noqa: B023 - called at once
            message = str(caught.value)
            assert "\n" not in message and str(path) in message and words in message, (kind, name, message)
    # The same paths as a manifest, with the dataset plugins' error class.
    with pytest.raises(DatasetError, match="named pipe"):
        _finishes(lambda: open_regular(paths["fifo"][0], what="manifest", error=DatasetError))


def test_a_symlink_to_a_regular_file_is_read(tmp_path: Path) -> None:
    target = _png(tmp_path / "real.png")
    os.symlink(target, tmp_path / "link.jpg")
    assert inspect_image(tmp_path / "link.jpg") == inspect_image(target)


def test_the_byte_cap_holds_while_reading_when_stat_lies(tmp_path: Path) -> None:
    # /proc files say 0 bytes and then deliver many: only a cap enforced while reading stops them.
    proc = Path("/proc/self/smaps")
    assert os.stat(proc).st_size == 0
    with open_limited(proc, ReadLimits(max_bytes=1000)) as reader, pytest.raises(ImageError) as caught:
        read_limited(reader)
    assert "more than 1000 bytes" in str(caught.value) and "--max-bytes" in str(caught.value)
    os.symlink(proc, tmp_path / "smaps.jpg")
    with pytest.raises(ImageError, match="over the cap of 1000 bytes"):
        inspect_image(tmp_path / "smaps.jpg", limits=ReadLimits(max_bytes=1000))


def test_the_byte_cap_from_stat_and_at_the_boundary(tmp_path: Path) -> None:
    image = _png(tmp_path / "a.png", (200, 200))
    size = image.stat().st_size
    assert inspect_image(image, limits=ReadLimits(max_bytes=size)).width == 200  # exactly the cap: accepted
    with pytest.raises(ImageError, match=f"is {size} bytes, over the cap of {size - 1} bytes"):
        inspect_image(image, limits=ReadLimits(max_bytes=size - 1))
    sparse = tmp_path / "sparse.jpg"  # 300 MB that takes no disk space: refused before any read
    with sparse.open("wb") as handle:
        handle.write(b"\xff\xd8\xff\xe0")
        handle.truncate(300 * 1024 * 1024)
    with pytest.raises(ImageError, match="over the cap of 209715200 bytes"):
        _finishes(lambda: inspect_image(sparse))


def test_the_time_budget_covers_reading_and_decoding(tmp_path: Path) -> None:
    image = _png(tmp_path / "a.png", (300, 300))
    with pytest.raises(ImageError) as caught:
        read_image_tensor(image, 32, limits=ReadLimits(timeout=1e-9))
    assert "took longer than 1e-09 s to read and decode" in str(caught.value) and str(image) in str(caught.value)
    assert inspect_image(image, limits=ReadLimits(timeout=60)).width == 300


def test_bad_limits_are_configuration_errors() -> None:
    with pytest.raises(ManetError, match="max_bytes must be a positive integer"):
        ReadLimits(max_bytes=0)
    with pytest.raises(ManetError, match="time budget must be a positive number"):
        ReadLimits(timeout=0)


def test_a_path_that_changes_type_never_blocks_the_open(tmp_path: Path) -> None:
    """A path flips between a regular file and a named pipe while it is opened again and again:
    every open either gets the regular file or refuses with one line, none blocks (the
    descriptor is opened non-blocking and checked with fstat, not trusted from the path)."""
    path, spare_file, spare_fifo = tmp_path / "flip.jpg", tmp_path / "f.tmp", tmp_path / "p.tmp"
    path.write_bytes(b"regular")
    stop = threading.Event()

    def flip() -> None:
        while not stop.is_set():
            spare_file.write_bytes(b"regular")
            os.replace(spare_file, path)
            os.mkfifo(spare_fifo)
            os.replace(spare_fifo, path)

    flipper = threading.Thread(target=flip, daemon=True)
    flipper.start()
    outcomes = {"regular": 0, "refused": 0}

    def open_many() -> None:
        for _ in range(3000):
            try:
                with open_regular(path) as handle:
                    assert isinstance(handle, io.FileIO)
                    outcomes["regular"] += 1
            except ImageError as exc:
                assert "\n" not in str(exc) and str(path) in str(exc)
                outcomes["refused"] += 1

    try:
        _finishes(open_many, seconds=60)
    finally:
        stop.set()
        flipper.join(10)
    assert outcomes["regular"] + outcomes["refused"] == 3000
    assert outcomes["refused"] > 0


def test_output_paths_that_are_pipes_are_refused(tmp_path: Path) -> None:
    from manet.evaluate.report import check_output_path

    os.mkfifo(tmp_path / "page.html")
    with pytest.raises(ManetError, match=r"page\.html is a named pipe \(FIFO\), not a regular file"):
        check_output_path(tmp_path / "page.html")


def test_dataset_files_that_are_not_regular_are_refused(tmp_path: Path) -> None:
    from manet.plugins.datasets import FolderDataset, ManifestDataset

    os.mkfifo(tmp_path / "m.csv")
    with pytest.raises(DatasetError, match=r"m\.csv is a named pipe \(FIFO\), not a regular file"):
        _finishes(lambda: list(ManifestDataset().records(tmp_path / "m.csv")))
    os.symlink("/dev/zero", tmp_path / "z.jsonl")
    with pytest.raises(DatasetError, match=r"z\.jsonl \(a symbolic link to /dev/zero\) is a character device"):
        _finishes(lambda: list(ManifestDataset().records(tmp_path / "z.jsonl")))
    flat = tmp_path / "flat"
    flat.mkdir()
    os.mkfifo(flat / "meta.csv")
    with pytest.raises(DatasetError, match=r"sidecar .*meta\.csv is a named pipe"):
        _finishes(lambda: list(FolderDataset(sidecar="meta.csv").records(flat)))


def test_load_torch_file_reads_tensors_and_refuses_what_is_not_one(tmp_path):
    import torch

    from manet.errors import WeightsError
    from manet.safe_files import load_torch_file

    good = tmp_path / "good.pt"
    torch.save({"w": torch.ones(2)}, good)
    assert torch.equal(load_torch_file(good, what="weights file", fix="x")["w"], torch.ones(2))
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:200])
    text = tmp_path / "text.pt"
    text.write_text("hello")
    for path in (truncated, text):
        with pytest.raises(WeightsError, match=rf"^cannot read weights file {path}: not a torch file, or a damaged "
                                               r"one \(.+\); point --weights at a state dict$") as caught:
            load_torch_file(path, what="weights file", fix="point --weights at a state dict")
        assert "\n" not in str(caught.value)
    fifo = tmp_path / "fifo.pt"
    os.mkfifo(fifo)
    with pytest.raises(WeightsError, match="is a named pipe"):  # refused without blocking
        load_torch_file(fifo, what="weights file", fix="x")
