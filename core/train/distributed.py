"""Data-parallel training under torchrun: which process this is, its device and backend, how
work is sharded, and the few collectives training needs, each with a timeout.

torchrun (``python -m torch.distributed.run``) starts N copies of ``manet train`` and sets
RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT in each; they reach
this module as a mapping (:attr:`manet.settings.Settings.torchrun`). Without them the run is one
ordinary process and every collective here returns its input, so the training loop has one
code path.

Rules (docs/SCALING.md):
- one process per GPU (LOCAL_RANK picks it) with NCCL; N CPU processes with Gloo;
- ``--batch-size`` is per process: the global batch is WORLD_SIZE x ``--batch-size``, and the
  learning rate follows :func:`scaled_learning_rate` (square root of N for AdamW by default);
- a collective that waits longer than ``MANET_DIST_TIMEOUT`` seconds (default 600) fails
  instead of waiting forever for a dead or stuck peer.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from manet.config import DIST_TIMEOUT_ENV as TIMEOUT_ENV
from manet.errors import ManetError, one_line

T = TypeVar("T")

DEFAULT_TIMEOUT_SECONDS = 600.0
#: How the learning rate grows with the number of processes (the global batch).
LR_SCALING_RULES = ("sqrt", "linear", "none")


@dataclass(frozen=True)
class ProcessInfo:
    """This process's place in the run, as torchrun describes it."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that prints, writes checkpoints and the models row."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def process_info(environ: Mapping[str, str]) -> ProcessInfo:
    """This process's place in the run from torchrun's variables in ``environ``."""
    env = environ
    if "WORLD_SIZE" not in env:
        return ProcessInfo()
    try:
        world_size = int(env["WORLD_SIZE"])
        rank = int(env.get("RANK", "0"))
        local_rank = int(env.get("LOCAL_RANK", str(rank)))
        local_world_size = int(env.get("LOCAL_WORLD_SIZE", str(world_size)))
    except ValueError:
        raise ManetError(
            "RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE must be integers; start distributed "
            "training with torchrun (python -m torch.distributed.run), which sets them"
        ) from None
    if world_size < 1 or not 0 <= rank < world_size or not 0 <= local_rank < max(1, local_world_size):
        raise ManetError(
            f"inconsistent torchrun variables RANK={rank} WORLD_SIZE={world_size} LOCAL_RANK={local_rank} "
            f"LOCAL_WORLD_SIZE={local_world_size}; start distributed training with torchrun, which sets them"
        )
    return ProcessInfo(rank, world_size, local_rank, max(1, local_world_size))


def backend_for(device: str) -> str:
    """The torch.distributed backend for ``device``: NCCL on CUDA, Gloo on CPU."""
    if device.startswith("cuda"):
        return "nccl"
    if device == "cpu":
        return "gloo"
    raise ManetError(f"distributed training runs on cuda (NCCL) or cpu (Gloo), not on '{device}'; "
                     f"use --device cuda or --device cpu")


def process_device(device: str, info: ProcessInfo) -> str:
    """This process's device: ``cuda`` becomes ``cuda:LOCAL_RANK`` (one process per GPU)."""
    if not info.distributed:
        return device
    backend_for(device)
    if device.startswith("cuda"):
        if device != "cuda":
            raise ManetError(f"--device {device} names one GPU, but torchrun started {info.world_size} "
                             f"processes; use --device cuda (each process takes the GPU of its LOCAL_RANK)")
        return f"cuda:{info.local_rank}"
    return device


def shard(items: Sequence[T], rank: int, world_size: int) -> list[T]:
    """Items rank, rank + N, rank + 2N, ...: disjoint, together complete, sizes within one."""
    return list(items[rank::world_size])


def gathered_order(items: Sequence[T], world_size: int) -> list[T]:
    """``items`` in the order the shards of all ranks line up after an all-gather."""
    return [item for rank in range(world_size) for item in shard(items, rank, world_size)]


def scaled_learning_rate(lr: float, world_size: int, rule: str) -> float:
    """The learning rate for a global batch ``world_size`` times the per-process batch.

    ``sqrt``: lr x sqrt(N), the rule for adaptive optimisers such as AdamW (Malladi et al.,
    NeurIPS 2022); ``linear``: lr x N (Goyal et al. 2017, for SGD); ``none``: lr unchanged.
    """
    if rule not in LR_SCALING_RULES:
        raise ManetError(f"unknown learning-rate scaling '{rule}'; use one of {', '.join(LR_SCALING_RULES)}")
    factor = {"sqrt": world_size ** 0.5, "linear": float(world_size), "none": 1.0}[rule]
    return lr * factor


def default_loader_workers(cpu_count: int, local_world_size: int) -> int:
    """Decoding workers per process: the machine's cores shared by its training processes,
    one core left for each process itself, at most 4."""
    return min(4, max(0, cpu_count // max(1, local_world_size) - 1))


def timeout_seconds(environ: Mapping[str, str]) -> float:
    """``MANET_DIST_TIMEOUT`` of ``environ`` in seconds (default 600)."""
    value = environ.get(TIMEOUT_ENV, "")
    if not value:
        return DEFAULT_TIMEOUT_SECONDS
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if seconds <= 0:
        raise ManetError(f"{TIMEOUT_ENV}={value!r} is not a positive number of seconds; e.g. {TIMEOUT_ENV}=600")
    return seconds


def state_checksum(state: Mapping[str, Any]) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of a state dict's tensors, in name order:
    equal exactly when two processes hold bit-identical weights."""
    import torch

    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class Session:
    """The process group of one training run, or its stand-in for a single process."""

    def __init__(self, info: ProcessInfo, device: str, timeout: float = DEFAULT_TIMEOUT_SECONDS,
                 object_group: Any = None) -> None:
        self.info = info
        self.device = device
        self.timeout = timeout
        # Python objects (masks, descriptors) travel over Gloo on the CPU even when tensors use
        # NCCL, so they never take GPU memory; None = the default group (already Gloo).
        self._objects = object_group

    def _failed(self, exc: BaseException) -> ManetError:
        reason = one_line(exc)
        return ManetError(
            f"rank {self.info.rank}: another training process failed or did not answer within "
            f"{self.timeout:.0f} s ({TIMEOUT_ENV}): {reason}; see the other ranks' output, fix the cause and "
            f"re-run with --resume (finished epochs are kept)"
        )

    def wrap(self, model: Any) -> Any:
        """``model`` in DistributedDataParallel (gradients all-reduced), or as it is."""
        if not self.info.distributed:
            return model
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [int(self.device.split(":")[1])] if self.device.startswith("cuda") else None
        return DistributedDataParallel(model, device_ids=device_ids)

    def all_gather(self, obj: T) -> list[T]:
        """Every rank's ``obj``, in rank order (on every rank)."""
        if not self.info.distributed:
            return [obj]
        import torch.distributed as dist

        gathered: list[Any] = [None] * self.info.world_size
        try:
            dist.all_gather_object(gathered, obj, group=self._objects)
        except RuntimeError as exc:
            raise self._failed(exc) from exc
        return gathered

    def broadcast_from_main(self, produce: Callable[[], T]) -> T:
        """Run ``produce`` on rank 0 and hand its result to every rank; a :class:`ManetError`
        it raises is raised on every rank, so no rank waits for a peer that gave up."""
        if not self.info.distributed:
            return produce()
        import torch.distributed as dist

        box: list[Any] = [None]
        if self.info.is_main:
            try:
                box = [(produce(), None)]
            except ManetError as exc:
                box = [(None, exc)]
        try:
            dist.broadcast_object_list(box, src=0, group=self._objects)
        except RuntimeError as exc:
            raise self._failed(exc) from exc
        value, error = box[0]
        if error is not None:
            raise error
        return value

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sum of ``values`` over all ranks."""
        if not self.info.distributed:
            return [float(v) for v in values]
        import torch
        import torch.distributed as dist

        tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.device)
        try:
            dist.all_reduce(tensor)
        except RuntimeError as exc:
            raise self._failed(exc) from exc
        return tensor.cpu().tolist()

    def sync_buffers(self, module: Any) -> None:
        """Give every rank rank 0's buffers (batch-norm statistics drift apart on each rank's
        last batch), so all ranks evaluate and end with the same state."""
        if not self.info.distributed:
            return
        import torch.distributed as dist

        try:
            for buffer in module.buffers():
                dist.broadcast(buffer, src=0)
        except RuntimeError as exc:
            raise self._failed(exc) from exc


@contextmanager
def session(device: str, environ: Mapping[str, str] | None = None) -> Iterator[Session]:
    """Join the run's process group (when torchrun's variables in ``environ`` say this process is
    one rank of several; None: a single process) for the body.

    The group is left without a clean shutdown when the body fails: a peer may be stuck, and
    the process is about to exit, which lets torchrun stop the other ranks.
    """
    environ = environ or {}
    info = process_info(environ)
    if not info.distributed:
        yield Session(info, device)
        return
    import torch
    import torch.distributed as dist

    device = process_device(device, info)
    timeout = timeout_seconds(environ)
    backend = backend_for(device)
    if device.startswith("cuda"):
        torch.cuda.set_device(device)
    created = not dist.is_initialized()
    try:
        if created:
            dist.init_process_group(backend, timeout=timedelta(seconds=timeout),
                                    device_id=torch.device(device) if backend == "nccl" else None)
        objects = dist.new_group(backend="gloo", timeout=timedelta(seconds=timeout)) if backend != "gloo" else None
    except (RuntimeError, ValueError) as exc:
        reason = one_line(exc)
        raise ManetError(
            f"rank {info.rank} could not join the {info.world_size} training processes "
            f"(MASTER_ADDR={environ.get('MASTER_ADDR')}, MASTER_PORT={environ.get('MASTER_PORT')}) within "
            f"{timeout:.0f} s: {reason}; start every process with the same torchrun command"
        ) from exc
    yield Session(info, device, timeout, objects)
    if created:
        dist.destroy_process_group()
