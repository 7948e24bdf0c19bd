"""Loader workers start from a forkserver, not as a bare fork of a process that runs threads,
unless the program's main module would run its work again in each worker."""

from __future__ import annotations

import subprocess
import sys
import threading
import types

import pytest
import torch

from manet.loader_processes import START_METHOD, defines_only, main_reimport_is_safe, worker_context
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
    # pytest's main module (a console-script wrapper, or pytest.__main__) runs nothing when imported
    assert worker_context(2).get_start_method() == START_METHOD == "forkserver"


GUARDED = '''"""A script."""
import sys
from manet import Retriever
N: int = 3

class Settings:
    """Its settings."""
    size = 2
    def twice(self, x=1):
        return print(x)

def main():
    with Retriever() as r:
        r.extract("x")

if __name__ == "__main__":
    main()
'''


def test_defines_only():
    assert defines_only(GUARDED)
    assert defines_only("import re\nfrom manet.cli.main import main\nif __name__ == '__main__':\n    main()\n")
    assert defines_only("if '__main__' == __name__:\n    run()\n")
    for runs in ("from manet import Retriever\nwith Retriever() as r:\n    r.extract('x')\n",  # the README's example
                 "x = compute()\n", "print(1)\n", "if __name__ != '__main__':\n    run()\n",
                 "class A:\n    x = compute()\n", "@decorate(1)\ndef f():\n    pass\n",
                 "def f(x=compute()):\n    pass\n", "try:\n    import x\nexcept ImportError:\n    pass\n",
                 "this is not python"):
        assert not defines_only(runs), runs


def test_main_reimport_is_safe(tmp_path):
    def module(**attributes) -> types.ModuleType:
        main = types.ModuleType("__main__")
        main.__dict__.update(attributes)
        return main

    guarded, unguarded = tmp_path / "guarded.py", tmp_path / "unguarded.py"
    guarded.write_text(GUARDED)
    unguarded.write_text("print('work')\n")
    assert main_reimport_is_safe(None) and main_reimport_is_safe(module())  # a notebook, python -c
    assert main_reimport_is_safe(module(__spec__=types.SimpleNamespace(name="pytest.__main__"), __file__="x"))
    assert main_reimport_is_safe(module(__file__=str(guarded)))
    assert not main_reimport_is_safe(module(__file__=str(unguarded)))
    assert not main_reimport_is_safe(module(__spec__=types.SimpleNamespace(name="tool"), __file__=str(unguarded)))
    assert not main_reimport_is_safe(module(__file__=str(tmp_path / "gone.py")))


SCRIPT = '''import torch
from manet.loader_processes import worker_context
from manet.train.data import loader

def main():
    samples = torch.utils.data.TensorDataset(torch.arange(4))
    context = worker_context(2)
    got = sorted(torch.cat([batch[0] for batch in loader(samples, batch_size=2, workers=2, device="cpu")]).tolist())
    print(context.get_start_method() if context else "default", got)
'''


@pytest.mark.slow
@pytest.mark.parametrize(("ending", "start"), [("if __name__ == '__main__':\n    main()\n", "forkserver"),
                                               ("main()\n", "default")])
def test_a_script_gets_workers_guarded_or_not(tmp_path, ending, start):
    script = tmp_path / "script.py"
    script.write_text(SCRIPT + "\n" + ending)
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"{start} [0, 1, 2, 3]"]  # once: no worker ran the script again


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
