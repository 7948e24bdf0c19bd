"""manet.catalog.images: validation messages and deterministic RGB decoding, on generated files."""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from manet.catalog.images import (
    ImageInfo,
    inspect_image,
    load_rgb,
    read_image_tensor,
    resize_square,
)
from manet.config import DEFAULT_MAX_PIXELS
from manet.errors import ImageError, ManetError
from manet.settings import Settings


def _noise(width: int = 40, height: int = 30, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


def _save(image: Image.Image, path: Path, fmt: str | None = None, **kwargs: object) -> Path:
    image.save(path, fmt, **kwargs)
    return path


@pytest.fixture
def good_jpeg(tmp_path: Path) -> Path:
    return _save(_noise(), tmp_path / "good.jpg", quality=90)


@pytest.fixture
def good_png(tmp_path: Path) -> Path:
    return _save(_noise(), tmp_path / "good.png")


def test_inspect_good_files(good_jpeg: Path, good_png: Path) -> None:
    info = inspect_image(good_jpeg)
    assert info == ImageInfo(40, 30, "RGB", "JPEG", hashlib.sha256(good_jpeg.read_bytes()).hexdigest())
    png = inspect_image(good_png)
    assert (png.width, png.height, png.mode, png.format) == (40, 30, "RGB", "PNG")


def test_load_and_tensor_shapes(good_jpeg: Path, good_png: Path) -> None:
    for path in (good_jpeg, good_png):
        image = load_rgb(path)
        assert image.mode == "RGB" and image.size == (40, 30)
        tensor = read_image_tensor(path, 16)
        assert tensor.shape == (3, 16, 16) and tensor.dtype == torch.uint8
        assert tensor.is_contiguous()


def test_tensor_of_large_jpeg_uses_draft_and_keeps_colour(tmp_path: Path) -> None:
    path = _save(Image.new("RGB", (800, 600), (200, 40, 90)), tmp_path / "big.jpg", quality=95)
    tensor = read_image_tensor(path, 24)
    assert tensor.shape == (3, 24, 24)
    mean = tensor.float().mean(dim=(1, 2))
    assert torch.allclose(mean, torch.tensor([200.0, 40.0, 90.0]), atol=4)
    with pytest.raises(ValueError, match="size"):
        read_image_tensor(path, 0)


def test_png_named_jpg_is_detected_by_content(tmp_path: Path) -> None:
    path = _save(_noise(), tmp_path / "actually_png.jpg", "PNG")
    assert inspect_image(path).format == "PNG"
    assert load_rgb(path).size == (40, 30)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match=r"missing\.jpg does not exist"):
        inspect_image(tmp_path / "missing.jpg")


def test_directory(tmp_path: Path) -> None:
    folder = tmp_path / "folder.jpg"
    folder.mkdir()
    with pytest.raises(ImageError, match=r"folder\.jpg is a directory"):
        load_rgb(folder)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(ImageError, match=r"empty\.jpg is empty \(0 bytes\); re-export or remove"):
        inspect_image(path)


def test_text_named_jpg(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("this is not a picture\n")
    with pytest.raises(ImageError, match=r"notes\.jpg is not an image file") as info:
        inspect_image(path)
    assert "\n" not in str(info.value)
    assert "re-export or remove the file" in str(info.value)
    assert "(looks like text)" in str(info.value)


@pytest.mark.parametrize("content,kind", [
    (b"s3cr3t-token:x:0:0:hunter2:/home/app:/bin/sh\n", "text"),
    (b"%PDF-1.7 s3cr3t-token", "a PDF document"),
    (bytes([0x00, 0xfe, 0x13, 0x37]) + b"s3cr3t-token" + bytes(range(128, 160)), "an unknown binary format"),
])
def test_not_an_image_message_names_the_kind_without_any_bytes_of_the_file(tmp_path: Path, content: bytes,
                                                                           kind: str) -> None:
    # The message is stored in images.error (readable by a grant-reader role): a symlink to a
    # secret file must not copy any of it there.
    secret = tmp_path / "secret"
    secret.write_bytes(content)
    link = tmp_path / "picture.jpg"
    link.symlink_to(secret)
    with pytest.raises(ImageError) as info:
        inspect_image(link)
    message = str(info.value)
    assert f"(looks like {kind}" in message and "\n" not in message
    assert "s3cr3t" not in message and "\\x" not in message and "b'" not in message
    shown = message.replace(str(link), "")
    assert not any(content[i:i + 4].decode("latin-1") in shown for i in range(len(content) - 3)
                   if content[i:i + 4].isalnum())


@pytest.mark.parametrize("fmt,suffix", [("JPEG", ".jpg"), ("PNG", ".png")])
def test_truncated(tmp_path: Path, fmt: str, suffix: str) -> None:
    whole = _save(_noise(), tmp_path / f"whole{suffix}", fmt)
    data = whole.read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(data[: len(data) // 2])
    for call in (inspect_image, load_rgb, lambda p: read_image_tensor(p, 8)):
        with pytest.raises(ImageError, match=rf"cut\{suffix} is truncated.*re-export or remove"):
            call(cut)


def test_corrupt_data(tmp_path: Path) -> None:
    # A smooth image compresses, so garbage in the deflate stream cannot decode.
    ramp = np.tile(np.arange(64, dtype=np.uint8), (48, 1))
    data = bytearray(_save(Image.fromarray(ramp, "L").convert("RGB"), tmp_path / "ok.png").read_bytes())
    start = len(data) // 3
    data[start : start + 200] = b"\xab" * 200
    path = tmp_path / "corrupt.png"
    path.write_bytes(bytes(data))
    with pytest.raises(ImageError, match=r"corrupt\.png has corrupt image data") as info:
        inspect_image(path)
    assert "\n" not in str(info.value)


def test_truncation_is_rejected_even_if_pil_is_told_to_accept_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _save(_noise(), tmp_path / "whole.jpg").read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: len(data) // 2])
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(ImageError, match="truncated"):
        inspect_image(cut)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored


def test_bomb_guard(tmp_path: Path) -> None:
    path = _save(_noise(20, 20), tmp_path / "bomb.png")
    expected = r"bomb\.png is 20x20 = 400 pixels, over the cap of 100.*MANET_MAX_PIXELS"
    with pytest.raises(ImageError, match=expected):
        inspect_image(path, max_pixels=100)
    with pytest.raises(ImageError, match="over the cap"):
        read_image_tensor(path, 8, max_pixels=100)
    assert inspect_image(path, max_pixels=400).width == 20


def test_bomb_guard_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _save(_noise(20, 20), tmp_path / "bomb.jpg")
    monkeypatch.setenv("MANET_MAX_PIXELS", "399")
    with pytest.raises(ImageError, match="over the cap of 399"):
        load_rgb(path, limits=Settings.from_environment().limits)
    monkeypatch.setenv("MANET_MAX_PIXELS", "400")
    assert load_rgb(path, limits=Settings.from_environment().limits).size == (20, 20)


def test_pil_globals_do_not_change_the_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # PIL's own guard would warn above 10 pixels and raise above 20; manet's cap rules instead.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)
    path = _save(_noise(20, 20), tmp_path / "ok.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert inspect_image(path, max_pixels=1000).width == 20
        assert load_rgb(path, max_pixels=1000).size == (20, 20)
    assert Image.MAX_IMAGE_PIXELS == 10  # restored


def test_max_pixels_from_env() -> None:
    def max_pixels_from_env(env: dict[str, str]) -> int:
        return Settings.from_environment(env).max_pixels

    assert max_pixels_from_env({}) == DEFAULT_MAX_PIXELS == 89_478_485
    assert max_pixels_from_env({"MANET_MAX_PIXELS": ""}) == DEFAULT_MAX_PIXELS
    assert max_pixels_from_env({"MANET_MAX_PIXELS": " 2000 "}) == 2000
    for bad in ("abc", "0", "-5", "1.5"):
        with pytest.raises(ManetError, match=r"MANET_MAX_PIXELS=.* is not a positive integer"):
            max_pixels_from_env({"MANET_MAX_PIXELS": bad})


def test_grayscale_is_replicated(tmp_path: Path) -> None:
    path = _save(Image.new("L", (10, 6), 77), tmp_path / "gray.png")
    assert inspect_image(path).mode == "L"
    pixels = np.asarray(load_rgb(path))
    assert pixels.shape == (6, 10, 3) and (pixels == 77).all()


def test_palette_with_transparency_goes_onto_white(tmp_path: Path) -> None:
    image = Image.new("P", (8, 8), 0)
    image.putpalette([10, 20, 30] + [200, 100, 50] * 255)
    image.paste(1, (0, 0, 4, 8))
    path = _save(image, tmp_path / "pal.png", transparency=0)
    assert inspect_image(path).mode == "P"
    pixels = np.asarray(load_rgb(path))
    assert tuple(pixels[0, 0]) == (200, 100, 50)
    assert tuple(pixels[0, 7]) == (255, 255, 255)  # transparent index -> white


def test_rgba_is_composited_onto_white(tmp_path: Path) -> None:
    image = Image.new("RGBA", (4, 2), (0, 0, 0, 0))
    image.putpixel((0, 0), (255, 0, 0, 255))
    image.putpixel((1, 0), (0, 0, 0, 128))
    path = _save(image, tmp_path / "rgba.png")
    pixels = np.asarray(load_rgb(path))
    assert tuple(pixels[0, 0]) == (255, 0, 0)
    assert tuple(pixels[1, 1]) == (255, 255, 255)
    assert all(120 <= v <= 135 for v in pixels[0, 1])  # half black on white


def test_cmyk_jpeg(tmp_path: Path) -> None:
    path = _save(Image.new("RGB", (16, 16), (0, 0, 255)).convert("CMYK"), tmp_path / "cmyk.jpg")
    assert inspect_image(path).mode == "CMYK"
    pixels = np.asarray(load_rgb(path)).astype(int)
    assert pixels.shape == (16, 16, 3)
    assert pixels[..., 2].mean() > 200 and pixels[..., 0].mean() < 50


def test_16_bit_png_is_scaled_to_8_bit(tmp_path: Path) -> None:
    values = np.array([[0, 256 * 100, 65535]], dtype=np.uint16)
    path = _save(Image.fromarray(values), tmp_path / "deep.png")
    assert inspect_image(path).mode.startswith("I")
    pixels = np.asarray(load_rgb(path))
    assert pixels.shape == (1, 3, 3)
    assert pixels[0, :, 0].tolist() == [0, 100, 255]


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    image = Image.new("RGB", (40, 20), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 10, 20))  # white band on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = _save(image, tmp_path / "rotated.jpg", exif=exif.tobytes(), quality=95)
    info = inspect_image(path)
    assert (info.width, info.height) == (20, 40)
    upright = load_rgb(path)
    assert upright.size == (20, 40)
    pixels = np.asarray(upright).astype(int)
    assert pixels[:5].mean() > 200 and pixels[-5:].mean() < 50  # the band is now on top
    assert read_image_tensor(path, 8).shape == (3, 8, 8)


def test_resize_square_stays_within_a_grey_level_of_pil():
    """The one resize of every read (files, uploads, batched JPEGs): torchvision's uint8 bilinear
    with antialiasing, which reproduces PIL's bilinear resize to one grey level."""
    pixels = np.random.default_rng(0).integers(0, 256, (97, 130, 3), dtype=np.uint8)
    ours = resize_square(torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1))), 40)
    pil = np.asarray(Image.fromarray(pixels).resize((40, 40), Image.Resampling.BILINEAR)).transpose(2, 0, 1)
    assert ours.dtype == torch.uint8 and ours.shape == (3, 40, 40)
    assert np.abs(ours.numpy().astype(int) - pil.astype(int)).max() <= 1
    same = torch.zeros(3, 40, 40, dtype=torch.uint8)
    assert resize_square(same, 40) is same  # already square at the size: untouched
