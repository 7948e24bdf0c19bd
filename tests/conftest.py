"""Shared fixtures: one real embedded PostgreSQL + pgvector per session, a fresh database
per test module, and small generated catalogues."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pytest

from manet import embedded


@pytest.fixture(scope="session")
def pg_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MANET_HOME of a private embedded server for this test session."""
    home = tmp_path_factory.mktemp("manet-home")
    embedded.start(home)
    yield home
    embedded.stop(home)


@pytest.fixture(scope="module")
def database_url(pg_home: Path, request: pytest.FixtureRequest) -> str:
    """A fresh, empty database for the test module (libpq URL)."""
    name = "t_" + re.sub(r"\W", "_", request.module.__name__.rsplit(".", 1)[-1])[:55]
    return embedded.start(pg_home, name, recreate=True)


@pytest.fixture(scope="module")
def retriever(database_url: str):
    from manet.api import Retriever

    with Retriever(database_url, device="cpu", auto_upgrade=True) as r:
        yield r


@pytest.fixture(scope="module")
def small_catalogue(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated catalogue: 10 products, one catalogue image and 2 photos each, 96 px."""
    from manet.synthetic import generate_catalogue

    return generate_catalogue(tmp_path_factory.mktemp("catalogue"), products=10, photos_per_product=2,
                              size=96, seed=1)


#: A small real model for tests: random weights, 64 px input.
TINY_MODEL = {"backbone": "resnet18", "weights": "none", "image_size": 64}


@pytest.fixture(scope="module")
def populated(retriever, small_catalogue):
    """The small catalogue ingested, model ``tiny`` (SR-MAC) extracted and indexed."""
    retriever.ingest("manifest", small_catalogue)
    retriever.create_model("tiny", pooling="srmac", **TINY_MODEL)
    retriever.extract("tiny")
    retriever.build_index("tiny")
    return retriever


@pytest.fixture(scope="module")
def training_catalogue(retriever, tmp_path_factory):
    """8 products (96 px), each with a catalogue image, a shopper photo and 2 training photos,
    ingested, with training set ``default`` built from the manifest's categories."""
    from manet.synthetic import generate_catalogue
    from manet.trainset import build_training_set

    manifest = generate_catalogue(tmp_path_factory.mktemp("train-catalogue"), products=8, photos_per_product=1,
                                  train_photos_per_product=2, size=96, seed=3)
    retriever.ingest("manifest", manifest)
    build_training_set(retriever.db, per_category=20, val_fraction=0.25, seed=0, source="manual")
    return retriever


@pytest.fixture
def run(database_url, monkeypatch):
    """``run(*args)``: the ``manet`` CLI in-process against the module's database, on the CPU."""
    from click.testing import CliRunner

    from manet.cli import cli

    monkeypatch.setenv("MANET_DATABASE_URL", database_url)
    monkeypatch.setenv("MANET_DEVICE", "cpu")

    def invoke(*args: str):
        return CliRunner().invoke(cli, ["--quiet", *args], catch_exceptions=False)

    return invoke


def search_plan(retriever, model_name: str, **filters) -> str:
    """EXPLAIN of the model's search SQL; asserts that it scans the model's HNSW index."""
    import numpy as np
    import sqlalchemy as sa

    from manet.search import search_query

    record = retriever.model(model_name)
    sql, params = search_query(record, np.ones(record.dim, dtype=np.float32), k=7, **filters)
    with retriever.db.begin() as conn:
        # Tiny tables favour a sort; forbid it to see that the index matches the query.
        conn.execute(sa.text("SET LOCAL enable_seqscan = off"))
        conn.execute(sa.text("SET LOCAL enable_sort = off"))
        plan = "\n".join(conn.execute(sa.text("EXPLAIN " + sql), params).scalars())
    assert record.index_name in plan, plan
    return plan


# -- HTML pages (manet.report), as written and as Chromium renders them ----------------------
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
