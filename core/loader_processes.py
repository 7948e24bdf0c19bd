"""How DataLoader worker processes start.

A bare ``fork`` copies a process that already runs threads (torch's intra-op pool, Gloo, tqdm's
monitor, a server's threads), locks held by those threads included, and a worker can then wait
forever on a lock nobody will release: a training run on a CI machine hung that way. Workers
therefore start from a ``forkserver`` (a clean single-threaded process; Python 3.14's default on
Linux).

A process started that way first imports the program's ``__main__`` again. That is harmless
for ``manet``, pytest, a notebook or a script whose work sits under
``if __name__ == "__main__":``, but a script that does its work at the top level (the README's
Python example, say) would run it again in every worker. For such a script the loader keeps its
platform's default (``fork`` on Linux before Python 3.14), as before.
"""

from __future__ import annotations

import ast
import multiprocessing
import sys
from multiprocessing.context import BaseContext
from pathlib import Path
from types import ModuleType

#: The start method of every loader worker, where the platform has it.
START_METHOD = "forkserver"
#: What the forkserver imports once when it starts, so that a worker starts in milliseconds
#: rather than importing torch (about 3 s on 2 cores; the training loader starts its workers
#: every epoch): the main module (the standard library's own default, so that no worker imports
#: it again), the datasets' modules and what they import.
PRELOAD = ("__main__", "torch", "torchvision.transforms.v2", "manet.catalog.batch_decode", "manet.train.data")


def worker_context(workers: int) -> BaseContext | None:
    """The ``multiprocessing_context`` of a DataLoader with ``workers`` processes: a forkserver;
    None (the loader's own choice) without workers, without a forkserver on this platform, or
    when importing ``__main__`` again would run more than definitions (:func:`main_reimport_is_safe`).

    The forkserver is one per Python process; :data:`PRELOAD` reaches it if it has not started yet.
    """
    if workers <= 0 or START_METHOD not in multiprocessing.get_all_start_methods():
        return None
    if not main_reimport_is_safe(sys.modules.get("__main__")):
        return None
    context = multiprocessing.get_context(START_METHOD)
    context.set_forkserver_preload(list(PRELOAD))
    return context


def main_reimport_is_safe(main: ModuleType | None) -> bool:
    """Whether a new process that imports ``main`` (the program's ``__main__``, as spawn and
    forkserver children do) runs no more than definitions: no file (a notebook, ``python -c``),
    a package's ``__main__`` (which the standard library does not import again), or a file
    whose top level :func:`defines_only`."""
    spec_name = getattr(getattr(main, "__spec__", None), "name", None)
    if spec_name is not None and (spec_name == "__main__" or spec_name.endswith(".__main__")):
        return True
    path = getattr(main, "__file__", None)
    if path is None:
        return True
    try:
        return defines_only(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        return False


def defines_only(source: str) -> bool:
    """Whether running the Python ``source`` as a module other than ``__main__`` only imports and
    defines: imports, functions, classes, docstrings, assignments without calls, and an
    ``if __name__ == "__main__":`` block (which does not run then)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return False
    return all(_defines(node) for node in tree.body)


def _defines(node: ast.stmt) -> bool:
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return True
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):  # its body runs later, if ever
        return _calls_nothing(*node.decorator_list, *node.args.defaults, *node.args.kw_defaults)
    if isinstance(node, ast.ClassDef):  # its body runs now
        return (_calls_nothing(*node.decorator_list, *node.bases, *node.keywords)
                and all(_defines(statement) for statement in node.body))
    if isinstance(node, ast.Expr):
        return isinstance(node.value, ast.Constant)
    if isinstance(node, (ast.Assign, ast.AnnAssign)):
        return _calls_nothing(node)
    if isinstance(node, ast.If):
        return _is_main_guard(node.test) and all(_defines(statement) for statement in node.orelse)
    return False


def _calls_nothing(*nodes: ast.AST | None) -> bool:
    return not any(isinstance(child, ast.Call) for node in nodes if node is not None for child in ast.walk(node))


def _is_main_guard(test: ast.expr) -> bool:
    """``__name__ == "__main__"`` (either way round)."""
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq)):
        return False
    sides = [test.left, test.comparators[0]]
    return (any(isinstance(side, ast.Name) and side.id == "__name__" for side in sides)
            and any(isinstance(side, ast.Constant) and side.value == "__main__" for side in sides))
