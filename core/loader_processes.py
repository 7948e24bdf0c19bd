"""How DataLoader worker processes start.

A bare ``fork`` copies a process that already runs threads (torch's intra-op pool, Gloo, tqdm's
monitor, a server's threads), locks held by those threads included, and a worker can then wait
forever on a lock nobody will release: a training run on a CI machine hung that way. Workers
therefore start from a ``forkserver`` (a clean single-threaded process; Python 3.14's default on
Linux), or where a platform lacks it, from its default (``spawn`` on Windows).

A script that trains or extracts with loader workers therefore needs the usual
``if __name__ == "__main__":`` guard.
"""

from __future__ import annotations

import multiprocessing
from multiprocessing.context import BaseContext

#: The start method of every loader worker, where the platform has it.
START_METHOD = "forkserver"
#: What the forkserver imports once when it starts, so that a worker starts in milliseconds
#: rather than importing torch (about 3 s on 2 cores; the training loader starts its workers
#: every epoch): the main script (the standard library's own default, so that no worker runs
#: it again), the datasets' modules and what they import.
PRELOAD = ("__main__", "torch", "torchvision.transforms.v2", "manet.catalog.batch_decode", "manet.train.data")


def worker_context(workers: int) -> BaseContext | None:
    """The ``multiprocessing_context`` of a DataLoader with ``workers`` processes: None (the
    loader's own choice) without workers or without a forkserver on this platform.

    The forkserver is one per Python process; :data:`PRELOAD` reaches it if it has not started yet.
    """
    if workers <= 0 or START_METHOD not in multiprocessing.get_all_start_methods():
        return None
    context = multiprocessing.get_context(START_METHOD)
    context.set_forkserver_preload(list(PRELOAD))
    return context
