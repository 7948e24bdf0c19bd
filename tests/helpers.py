"""Plain helpers shared by the test modules (``from helpers import ...``): the tiny test model,
``manet`` in a subprocess, paths that are not regular files, a manifest with bad rows in it, the
search plan check and a minimal HTML tree. Fixtures and hooks live in conftest.py."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

#: A small real model for tests: random weights, 64 px input.
TINY_MODEL = {"backbone": "resnet18", "weights": "none", "image_size": 64}


@dataclass
class Finished:
    """A finished ``manet`` subprocess: exit code, output, and its own peak resident memory."""

    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    max_rss_bytes: int


# Runs argv[2:] and writes its peak RSS (KiB) to argv[1]. Linux keeps a process's memory high-water
# mark across fork and exec, so a command started straight from pytest (hundreds of MB after torch
# tests) would report pytest's size; started from this small process it reports its own.
_MEASURE = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as out:
    out.write(str(usage.ru_maxrss))
code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
"""


def run_manet(*args: str, env: dict[str, str], timeout: float = 60.0) -> Finished:
    """``python -m manet.cli ARGS`` in a subprocess; fails the test if it runs longer than
    ``timeout`` seconds (its process group is killed). Peak RSS is the command's own."""
    import signal
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        rss, out, err = (Path(scratch) / name for name in ("rss", "out", "err"))
        with out.open("wb") as stdout, err.open("wb") as stderr:
            process = subprocess.Popen([sys.executable, "-c", _MEASURE, str(rss), sys.executable, "-m",
                                        "manet.cli", *args], stdout=stdout, stderr=stderr,
                                       stdin=subprocess.DEVNULL, env=env, start_new_session=True)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                raise AssertionError(f"manet {' '.join(args)} ran longer than {timeout:.0f} s") from None
        return Finished(tuple(args), process.returncode, out.read_text(errors="replace"),
                        err.read_text(errors="replace"), int(rss.read_text()) * 1024)  # Linux: KiB


@dataclass(frozen=True)
class OddPath:
    """A path that is not a readable regular file, and the words its one-line error must contain.
    ``listed`` is False for kinds a folder listing cannot show (a folder is a folder to it)."""

    path: Path
    words: str
    listed: bool = True


def _bind_socket(path: Path) -> None:
    import socket

    # Bound by a relative name: a socket path is limited to ~107 bytes and tmp_path can be longer.
    cwd = os.getcwd()
    os.chdir(path.parent)
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(path.name)
    finally:
        os.chdir(cwd)


def _block_device() -> str | None:
    import stat

    for name in sorted(os.listdir("/dev")):
        try:
            if stat.S_ISBLK(os.stat(f"/dev/{name}").st_mode):
                return f"/dev/{name}"
        except OSError:
            continue
    return None


def make_odd_paths(place, hidden: Path) -> dict[str, OddPath]:
    """Make every kind of non-regular path a test can make without the network: ``place(kind)``
    gives where (its folder is created), ``hidden`` holds link targets. Returns kind -> OddPath."""

    hidden.mkdir(parents=True, exist_ok=True)
    made: dict[str, OddPath] = {}

    def at(kind: str) -> Path:
        path = place(kind)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    os.mkfifo(path := at("fifo"))
    made["fifo"] = OddPath(path, "named pipe (FIFO)")
    os.mkfifo(hidden / "fifo")
    os.symlink(hidden / "fifo", path := at("symlink-to-fifo"))
    made["symlink-to-fifo"] = OddPath(path, "named pipe (FIFO)")
    _bind_socket(path := at("unix-socket"))
    made["unix-socket"] = OddPath(path, "Unix socket")
    for device in ("zero", "urandom", "null"):
        os.symlink(f"/dev/{device}", path := at(f"symlink-to-dev-{device}"))
        made[f"symlink-to-dev-{device}"] = OddPath(path, "character device")
    block = _block_device()
    if block is not None:
        os.symlink(block, path := at("symlink-to-block-device"))
        made["symlink-to-block-device"] = OddPath(path, "block device")
    try:  # a device node of our own needs CAP_MKNOD (root in most containers)
        os.mknod(path := at("character-device-node"), 0o600 | 0o020000, os.makedev(1, 5))
        made["character-device-node"] = OddPath(path, "character device")
    except OSError:
        pass
    (hidden / "folder").mkdir()
    os.symlink(hidden / "folder", path := at("symlink-to-directory"))
    made["symlink-to-directory"] = OddPath(path, "directory")
    os.symlink(hidden / "nowhere.jpg", path := at("dangling-symlink"))
    made["dangling-symlink"] = OddPath(path, "dangling symbolic link")
    path = at("symlink-to-itself")
    os.symlink(path, path)
    made["symlink-to-itself"] = OddPath(path, "symbolic link loop")
    (path := at("directory")).mkdir()
    made["directory"] = OddPath(path, "directory", listed=False)
    (hidden / "plain-file").write_bytes(b"x")
    made["path-through-a-file"] = OddPath(hidden / "plain-file" / "a.jpg", "a folder in its path is a file",
                                          listed=False)
    made["missing"] = OddPath(at("missing").parent / "never-written.jpg", "does not exist", listed=False)
    return made


@dataclass(frozen=True)
class MixedManifest:
    """A manifest of good photos with bad paths spread through it (see :func:`mixed_manifest`)."""

    path: Path
    good: tuple[str, ...]
    bad: tuple[str, ...]

    @property
    def rows(self) -> int:
        return len(self.good) + len(self.bad)


def indexed_catalogue(retriever, folder: Path, *, products: int, seed: int,
                      models: dict[str, str] | None = None) -> Path:
    """A generated catalogue (a catalogue image and a shopper photo per product, 64 px) ingested,
    each of ``models`` (name -> pooling; default ``tiny``: MAC) created with TINY_MODEL, extracted
    and indexed. Returns the manifest."""
    from manet.tools.synthetic import generate_catalogue

    manifest = generate_catalogue(folder, products=products, photos_per_product=1, size=64, seed=seed)
    retriever.ingest("manifest", manifest)
    for name, pooling in (models or {"tiny": "mac"}).items():
        retriever.create_model(name, pooling=pooling, **TINY_MODEL)
        retriever.extract(name)
        retriever.build_index(name)
    return manifest


def mixed_manifest(folder: Path, good: int = 1000, every: int = 25, size: int = 48) -> MixedManifest:
    """``good`` distinct generated photos (20 products) in a manifest where every ``every``-th row
    is a path that is not a readable regular file (a pipe, a link to /dev/zero, a socket, ...)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    odd: list[OddPath] = []
    for group in range(-(-good // every // 10)):  # each bad row its own path
        odd += make_odd_paths(lambda kind, group=group: folder / f"odd{group}" / f"{kind}.jpg",
                              folder / f".targets{group}").values()
    rng = np.random.default_rng(5)
    lines, good_uris, bad_uris = ["sku,image"], [], []
    for i in range(good):
        if i % every == every - 1:
            path = odd[len(bad_uris) % len(odd)].path
            lines.append(f"BAD{len(bad_uris)},{os.path.relpath(path, folder)}")
            bad_uris.append(str(path))
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"{i}.png")
        lines.append(f"P{i % 20},{i}.png")
        good_uris.append(str(folder / f"{i}.png"))
    (folder / "m.csv").write_text("\n".join(lines) + "\n")
    return MixedManifest(folder / "m.csv", tuple(good_uris), tuple(bad_uris))


def search_plan(retriever, model_name: str, **filters) -> str:
    """EXPLAIN of the model's search SQL; asserts that it scans the model's HNSW index."""
    import numpy as np
    import sqlalchemy as sa

    from manet.search.query import search_query

    record = retriever.model(model_name)
    sql, params = search_query(record, np.ones(record.dim, dtype=np.float32), k=7, **filters)
    with retriever.db.begin() as conn:
        # Tiny tables favour a sort; forbid it to see that the index matches the query.
        conn.execute(sa.text("SET LOCAL enable_seqscan = off"))
        conn.execute(sa.text("SET LOCAL enable_sort = off"))
        plan = "\n".join(conn.execute(sa.text("EXPLAIN " + sql), params).scalars())
    assert record.index_name in plan, plan
    return plan


# -- HTML pages (manet.evaluate.report), as written and as Chromium renders them ----------------------
VOID = {"meta", "br", "img", "link", "input", "hr"}


@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    #: Child elements and text, in document order.
    parts: list[Node | str] = field(default_factory=list)

    @property
    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())

    def walk(self):
        yield self
        for part in self.parts:
            if isinstance(part, Node):
                yield from part.walk()

    def find(self, tag: str | None = None, cls: str | None = None, **attrs: str) -> list[Node]:
        return [n for n in self.walk() if (tag is None or n.tag == tag) and (cls is None or cls in n.classes)
                and all(n.attrs.get(key.replace("_", "-")) == value for key, value in attrs.items())]

    def one(self, *args, **kwargs) -> Node:
        found = self.find(*args, **kwargs)
        assert len(found) == 1, (args, kwargs, len(found))
        return found[0]

    def content(self) -> str:
        """All text under this node in document order, whitespace-joined."""
        pieces = [part if isinstance(part, str) else part.content() for part in self.parts]
        return " ".join(" ".join(pieces).split())


class TreeBuilder(HTMLParser):
    """A minimal DOM of a page (the pages are well-formed; this checks it as it goes)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#root", {})
        self.stack = [self.root]

    def handle_starttag(self, tag, attrs):
        node = Node(tag, {key: value or "" for key, value in attrs})
        self.stack[-1].parts.append(node)
        if tag not in VOID:
            self.stack.append(node)

    def handle_endtag(self, tag):
        assert self.stack[-1].tag == tag, f"</{tag}> closes <{self.stack[-1].tag}>"
        self.stack.pop()

    def handle_data(self, data):
        self.stack[-1].parts.append(data)


def parse_html(page: str) -> Node:
    """The element tree of a well-formed page (asserts that every element is closed)."""
    builder = TreeBuilder()
    builder.feed(page)
    builder.close()
    assert builder.stack == [builder.root], "unclosed elements"
    return builder.root
