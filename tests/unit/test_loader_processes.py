"""Loader workers never start as a bare fork of a process that runs threads."""

from __future__ import annotations

import threading

import pytest
import torch

from manet.loader_processes import START_METHOD, worker_context
from manet.train.data import MaskTable, loader

#: Taken by every sample; a thread of the test holds it while the loader starts its workers.
SAMPLE_LOCK = threading.Lock()


class LockedSamples(torch.utils.data.Dataset):
    """Four samples, each read under :data:`SAMPLE_LOCK` (as a library's internal lock would be)."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> torch.Tensor:
        with SAMPLE_LOCK:
            return torch.tensor(index)


def test_worker_context():
    assert worker_context(0) is None
    assert worker_context(2).get_start_method() == START_METHOD == "forkserver"


# A forked worker inherits the held lock and waits forever; the timeout turns that into a failure.
@pytest.mark.timeout(120)
def test_a_lock_held_by_another_thread_does_not_reach_the_workers():
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with SAMPLE_LOCK:
            held.set()
            release.wait(120)

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    held.wait()
    try:
        batches = list(loader(LockedSamples(), batch_size=2, workers=2, device="cpu"))
    finally:
        release.set()
        holder.join()
    assert sorted(torch.cat(batches).tolist()) == [0, 1, 2, 3]


def test_mask_table_rows():
    masks = {7: torch.full((2, 64, 64), 1, dtype=torch.uint8), 3: torch.full((2, 64, 64), 2, dtype=torch.uint8)}
    table = MaskTable.of(masks)
    assert len(table) == 2 and table.table.shape == (2, 2, 64, 64)
    assert table[3].unique().tolist() == [2] and table[7].unique().tolist() == [1]
    assert len(MaskTable.of({})) == 0 and MaskTable.of({}).table.shape == (0, 2, 64, 64)
