"""Run an ONNX detector with ONNX Runtime when it is installed, else with OpenCV dnn.

The ``ppocr`` text detector's ONNX model reads in both. ONNX Runtime (Microsoft, MIT) runs it
about three times faster on CPU than OpenCV 5.0's dnn, measured on 2 cores at its 128 px input
in batches of 8: 1.0-1.3 against 2.9-3.8 ms per image, with the same maps. That matters on CPUs
with native bf16, where the MANet forward pass gets twice as fast and OpenCV's fp32 detector
alone took 30-41 % of it. OpenCV dnn stays the fallback, so a detector also runs without it.

onnxruntime is imported inside the functions so that listing plugins stays cheap.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from manet.errors import PluginError, WeightsError

ONNXRUNTIME, OPENCV, AUTO = "onnxruntime", "opencv", "auto"
#: ``auto``: ONNX Runtime when installed, else OpenCV dnn.
RUNTIMES = (AUTO, ONNXRUNTIME, OPENCV)


def onnxruntime_installed() -> bool:
    """Whether ``import onnxruntime`` would find the package (without importing it)."""
    return importlib.util.find_spec("onnxruntime") is not None


def resolve_runtime(choice: str) -> str:
    """``choice`` with ``auto`` resolved; a one-line :class:`PluginError` when the chosen
    runtime is not installed."""
    if choice == AUTO:
        return ONNXRUNTIME if onnxruntime_installed() else OPENCV
    if choice == ONNXRUNTIME and not onnxruntime_installed():
        raise PluginError("runtime=onnxruntime needs ONNX Runtime: pip install onnxruntime, "
                          f"or pass -o runtime={OPENCV}")
    return choice


def read_session(path: Path, not_a_model: str) -> Any:
    """An ``onnxruntime.InferenceSession`` for the ONNX file ``path`` on the CPU, with one
    float32 image input (N, 3, H, W); ``not_a_model`` as a one-line :class:`WeightsError` for
    a file it cannot read or a model with other inputs."""
    import onnxruntime
    import torch

    options = onnxruntime.SessionOptions()
    # The detector runs between torch's forward passes, on the same cores: as many threads as
    # torch, and no spinning, so its idle threads do not take cycles from torch's.
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only: PP-OCRv5's graph draws a harmless shape warning
    try:
        # On some damaged files it prints an "EP Error ... Falling back" banner to stdout before
        # it retries and fails; stdout carries --json output, so the banner is dropped.
        with contextlib.redirect_stdout(io.StringIO()):
            session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception:  # its errors (InvalidProtobuf, Fail, ...) share no base but Exception
        raise WeightsError(not_a_model) from None
    inputs = session.get_inputs()
    if len(inputs) != 1 or inputs[0].type != "tensor(float)" or len(inputs[0].shape) != 4:
        raise WeightsError(f"{not_a_model}: it takes {[(i.name, i.type, i.shape) for i in inputs]}, "
                           "expected one float image batch (N, 3, H, W)")
    return session


def run_session(session: Any, chunk: npt.NDArray[np.float32], what: str) -> npt.NDArray[np.float32]:
    """The session's first output for the input batch ``chunk``; a one-line
    :class:`WeightsError` naming ``what`` when the forward pass fails."""
    try:
        out = session.run(None, {session.get_inputs()[0].name: chunk})[0]
    except MemoryError:
        raise
    except Exception as exc:  # e.g. a graph that takes other input sizes than an image's
        raise WeightsError(f"{what} forward pass failed: {' '.join(str(exc).split())}") from None
    return np.asarray(out, dtype=np.float32)
