"""Resident memory of a benchmark phase: this process's high-water mark and its children's.

On Linux the process's VmHWM high-water mark is reset before a phase by writing 5 to
/proc/self/clear_refs, so it measures that phase alone; elsewhere it is the process's peak
since it started. Child processes (DataLoader workers) are sampled from /proc while they run,
since a child's figures vanish when it exits; without /proc, the largest finished child's peak.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from manet.bench.common import peak_rss_mb


def _status_kib(path: str, field: str) -> int | None:
    try:
        with open(path, encoding="ascii") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset this process's resident-memory high-water mark (Linux only); False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def phase_peak_rss_mb() -> float:
    """This process's resident-memory high-water mark in MiB (VmHWM; else the lifetime peak)."""
    kib = _status_kib("/proc/self/status", "VmHWM")
    return kib / 1024 if kib is not None else peak_rss_mb()


def _children() -> list[int]:
    pids: list[int] = []
    try:
        for task in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{task}/children", encoding="ascii") as fh:
                pids += [int(pid) for pid in fh.read().split()]
    except OSError:
        pass
    return pids


@contextmanager
def child_peak_rss(interval: float = 0.2) -> Iterator[dict[str, float | None]]:
    """Yield a dict whose ``mb`` is, afterwards, the largest own peak (VmHWM) of the child
    processes (DataLoader workers) seen while the body ran: sampled, since a child's figures
    vanish when it exits. Without /proc: the largest peak of any finished child (getrusage)."""
    result: dict[str, float | None] = {"mb": None}
    seen: dict[int, int] = {}
    stop = threading.Event()

    def sample() -> None:
        while True:
            for pid in _children():
                kib = _status_kib(f"/proc/{pid}/status", "VmHWM")
                if kib is not None:
                    seen[pid] = max(kib, seen.get(pid, 0))
            if stop.wait(interval):
                return

    thread = threading.Thread(target=sample, name="manet-bench-rss", daemon=True)
    thread.start()
    try:
        yield result
    finally:
        stop.set()
        thread.join()
        if seen:
            result["mb"] = max(seen.values()) / 1024
        elif not os.path.isdir("/proc/self/task"):
            result["mb"] = peak_rss_mb(children=True) or None
