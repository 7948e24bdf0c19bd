"""Device and precision policy, in one place: which torch device runs the models, and when a
pass runs under bf16 autocast.

* :func:`select_device`: the requested device (``--device`` / ``MANET_DEVICE``, through
  :class:`manet.settings.Settings`), else the best available: cuda > mps > cpu.
* :func:`use_bf16`: the forward passes (extraction, search, evaluation during training) follow
  ``--precision``: auto = bf16 autocast on CUDA and on CPUs that multiply bf16 natively (AMX or
  AVX512-BF16: ResNet-50 ran 2.3x faster than fp32 on such a CPU), fp32 elsewhere.
* :func:`training_autocast`: training steps run bf16 autocast on CUDA and fp32 elsewhere,
  whatever ``--precision`` says.
* :func:`describe_precision`: the choice and its reason, as ``manet doctor`` prints it.

torch is imported inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

import functools
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from manet.errors import ManetError

#: Forward-pass precisions (``--precision`` / ``MANET_PRECISION``).
PRECISIONS = ("auto", "fp32", "bf16")
#: CPU feature flags that mean native bf16 arithmetic.
NATIVE_BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})


def select_device(requested: str | None = None) -> str:
    """``requested`` (unless empty or ``auto``), else cuda > mps > cpu; a CUDA device without
    CUDA is an error that says what to use instead."""
    import torch

    if requested and requested != "auto":
        if requested.startswith("cuda") and not torch.cuda.is_available():
            raise ManetError(f"device '{requested}' requested but CUDA is not available; use --device cpu")
        return requested
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def cpu_flags(cpuinfo: str) -> set[str]:
    """The feature flags of the first CPU in a ``/proc/cpuinfo`` text."""
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


@functools.lru_cache(maxsize=1)
def native_bf16_cpu() -> bool:
    """Whether this CPU multiplies bf16 natively (AMX or AVX512-BF16; Linux only, else False)."""
    try:
        flags = cpu_flags(Path("/proc/cpuinfo").read_text())
    except OSError:
        return False
    return bool(flags & NATIVE_BF16_FLAGS)


def use_bf16(device: str, precision: str = "auto", native_cpu: bool | None = None) -> bool:
    """Whether a forward pass on ``device`` runs under bf16 autocast at ``precision`` (auto | fp32
    | bf16; None counts as auto); auto = on CUDA, and on CPUs with native bf16 (``native_cpu``,
    default: this CPU's)."""
    precision = precision or "auto"
    if precision not in PRECISIONS:
        raise ManetError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    kind = device.split(":")[0]
    if precision == "fp32":
        return False
    if precision == "bf16":
        if kind not in ("cuda", "cpu"):
            raise ManetError(f"bf16 autocast runs on cuda or cpu, not {device}; use --precision fp32")
        return True
    if kind == "cuda":
        return True
    return kind == "cpu" and (native_bf16_cpu() if native_cpu is None else native_cpu)


def autocast(device: str, precision: str = "auto") -> AbstractContextManager[Any]:
    """The autocast context of a forward pass on ``device``: bf16 where :func:`use_bf16` says,
    else disabled (an enclosing autocast is switched off too)."""
    import torch

    bf16 = use_bf16(device, precision)
    return torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=bf16)


def training_autocast(device: str) -> AbstractContextManager[Any]:
    """The autocast context of a training step: bf16 on CUDA, plain float32 elsewhere."""
    import contextlib

    import torch

    return torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else contextlib.nullcontext()


def describe_precision(device: str, precision: str = "auto") -> str:
    """The forward-pass precision on ``device`` and why, e.g. ``fp32 (auto: this CPU lacks native
    bf16, AMX/AVX512-BF16)``; an unusable choice raises as :func:`use_bf16` does."""
    choice = precision or "auto"
    name = "bf16 autocast" if use_bf16(device, choice) else "fp32"
    if choice != "auto":
        return f"{name} (requested)"
    kind = device.split(":")[0]
    if kind == "cuda":
        return f"{name} (auto: on CUDA)"
    if kind == "cpu":
        return f"{name} (auto: this CPU {'has' if native_bf16_cpu() else 'lacks'} native bf16, AMX/AVX512-BF16)"
    return f"{name} (auto: bf16 only on CUDA and on CPUs with native bf16)"
