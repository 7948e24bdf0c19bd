"""Shared fixtures: one real embedded PostgreSQL + pgvector per session, a fresh database
per test module, and small generated catalogues. Every test that needs the server is marked
``db`` here, so ``pytest -m "not db"`` runs the tests without a database and
``pytest -m "not db and not slow"`` runs them in seconds. Plain helpers are in helpers.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from helpers import TINY_MODEL
from manet.store import embedded

#: The session fixture that starts the server; every database fixture is built on it.
SERVER_FIXTURE = "pg_home"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``db`` every test whose fixture closure reaches the server (fixturenames is the
    closure: ``run`` -> ``database_url`` -> ``pg_home`` counts)."""
    for item in items:
        if SERVER_FIXTURE in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.db)


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
    from manet.tools.synthetic import generate_catalogue

    return generate_catalogue(tmp_path_factory.mktemp("catalogue"), products=10, photos_per_product=2,
                              size=96, seed=1)


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
    from manet.catalog.trainset import build_training_set
    from manet.tools.synthetic import generate_catalogue

    manifest = generate_catalogue(tmp_path_factory.mktemp("train-catalogue"), products=8, photos_per_product=1,
                                  train_photos_per_product=2, size=96, seed=3)
    retriever.ingest("manifest", manifest)
    build_training_set(retriever.db, per_category=20, val_fraction=0.25, seed=0, source="manual")
    return retriever


@pytest.fixture
def run(database_url, monkeypatch):
    """``run(*args)``: the ``manet`` CLI in-process against the module's database, on the CPU."""
    from click.testing import CliRunner

    from manet.cli.main import cli

    monkeypatch.setenv("MANET_DATABASE_URL", database_url)
    monkeypatch.setenv("MANET_DEVICE", "cpu")

    def invoke(*args: str):
        return CliRunner().invoke(cli, ["--quiet", *args], catch_exceptions=False)

    return invoke
