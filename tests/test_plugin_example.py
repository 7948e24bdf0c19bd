"""The example plugin package, installed for real, and the plugin docs kept in line with the hookspecs.

examples/manet-plugin-example is built and installed offline into a temporary folder (never into
the test environment) and found through its ``manet`` entry point by ``manet`` subprocesses that
get the folder on PYTHONPATH.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pluggy
import pytest
import sqlalchemy as sa
from PIL import Image

from manet import hookspecs
from manet.plugin_base import BASE_CLASSES, KINDS
from manet.plugin_manager import REGISTRY_HOOKS

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "manet-plugin-example"
DOCS = ROOT / "docs" / "plugins.md"
#: Images of the generated catalogue: three products, named the way ``sku-filenames`` reads them.
IMAGES = ("A1__front.png", "A1__back.png", "B2__front.png", "B2__side.png", "C3__front.png")


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the installed example (package + dist-info with its entry point)."""
    work = tmp_path_factory.mktemp("plugin-example")
    # Build from a copy: pip builds in the source tree and would leave build/ and *.egg-info there.
    source = shutil.copytree(EXAMPLE, work / "source",
                             ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", ".pytest_cache"))
    target = work / "site"
    result = subprocess.run(
        # --isolated: no pip configuration of the machine (indexes, constraints) comes into it.
        [sys.executable, "-m", "pip", "install", "--isolated", "--quiet", "--disable-pip-version-check",
         "--no-deps", "--no-build-isolation", "--no-index", "--target", str(target), str(source)],
        capture_output=True, text=True, timeout=300,
    )
    if result.returncode != 0:
        pytest.fail("building the example plugin offline failed (it needs setuptools >= 70.1, or an older "
                    f"setuptools plus wheel, in this environment):\n{result.stderr[-3000:]}")
    return target


@pytest.fixture(scope="module")
def manet(installed: Path, retriever, database_url: str, tmp_path_factory: pytest.TempPathFactory):
    """``manet(*args)``: the CLI in a subprocess that sees the installed example; returns its JSON."""
    retriever.db.upgrade_if_needed()  # the CLI requires an up-to-date schema; it does not migrate
    env = {key: value for key, value in os.environ.items() if key != "MANET_LOAD_PLUGINS"}
    env.update(PYTHONPATH=os.pathsep.join(filter(None, [str(installed), env.get("PYTHONPATH")])),
               MANET_DATABASE_URL=database_url, MANET_DEVICE="cpu",
               MANET_HOME=str(tmp_path_factory.mktemp("manet-home")))

    def invoke(*args: str):
        result = subprocess.run([sys.executable, "-m", "manet.cli", "-q", *args, "--json"], env=env,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, f"manet {' '.join(args)} failed:\n{result.stderr}"
        return json.loads(result.stdout)

    return invoke


def test_installed_plugins_are_listed_with_their_distribution(manet):
    version = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]["version"]
    listed = {(p["kind"], p["name"]): p for p in manet("plugins", "list")}
    for key in (("pooling", "crow"), ("dataset", "sku-filenames")):
        assert listed[key]["distribution"] == "manet-plugin-example", listed[key]
        assert listed[key]["version"] == version and listed[key]["source"] == "example"
    assert listed["pooling", "crow"]["parameters"] == {"a": 2.0, "b": 2.0}
    assert listed["pooling", "mac"]["distribution"] == "manet-retrieval"  # the built-ins are still there


def test_ingest_and_extract_with_the_installed_plugins(manet, retriever, tmp_path):
    rng = np.random.default_rng(0)
    for name in IMAGES:
        Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(tmp_path / name)
    report = manet("ingest", "sku-filenames", str(tmp_path))
    assert (report["images_added"], report["products_added"], report["failed"]) == (len(IMAGES), 3, 0)

    model = manet("models", "create", "crow18", "--backbone", "resnet18", "--weights", "none",
                  "--image-size", "64", "--pooling", "crow", "-p", "a=3")
    assert model["dim"] == 512 and model["config"]["pooling"] == "crow"
    extracted = manet("extract", "--model", "crow18")
    assert (extracted["extracted"], extracted["failed"]) == (len(IMAGES), 0)

    with retriever.db.begin() as conn:
        rows = conn.execute(sa.text(
            "SELECT p.sku, vector_dims(d.embedding), vector_norm(d.embedding) FROM descriptors d "
            "JOIN models m ON m.id = d.model_id JOIN images i ON i.id = d.image_id "
            "JOIN products p ON p.id = i.product_id WHERE m.name = 'crow18' ORDER BY p.sku")).all()
    assert [row[0] for row in rows] == ["A1", "A1", "B2", "B2", "C3"]
    assert all(row[1] == 512 and abs(row[2] - 1.0) < 1e-3 for row in rows), rows


# -- docs/plugins.md follows the hookspecs ------------------------------------------------------


def hookspec_names() -> set[str]:
    """Every hook declared in manet.hookspecs, as pluggy sees it."""
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    return {name for name in vars(pm.hook) if not name.startswith("_")}


def doc_sections(text: str) -> dict[str, str]:
    """Heading line (``"### name"``) -> the text under it, for level 1-3 headings outside code blocks."""
    sections: dict[str, list[str]] = {}
    current: list[str] = []
    fenced = False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        if not fenced and re.match(r"#{1,3} ", line):
            current = sections.setdefault(line.rstrip(), [])
        else:
            current.append(line)
    return {heading: "\n".join(lines) for heading, lines in sections.items()}


def test_every_hookspec_is_documented():
    sections = doc_sections(DOCS.read_text(encoding="utf-8"))
    names = hookspec_names()
    assert len(names) >= 8
    for name in sorted(names):
        heading = f"### {name}"
        assert heading in sections, f"docs/plugins.md has no '{heading}' section; document the new hook there"
        section = sections[heading]
        assert "```python" in section, f"### {name}: add a code example"
        assert f"{name}(" in section, f"### {name}: give the hook's signature"
        kind = REGISTRY_HOOKS.get(name)
        if kind is not None:
            assert BASE_CLASSES[kind].__name__ in section, f"### {name}: name its base class"
    documented = {heading.removeprefix("### ") for heading in sections if heading.startswith("### register_")}
    assert documented <= names, f"docs/plugins.md documents hooks that do not exist: {documented - names}"


def test_registry_hooks_kinds_and_hookspecs_agree():
    assert set(REGISTRY_HOOKS) | {"register_commands"} == hookspec_names()
    assert sorted(REGISTRY_HOOKS.values()) == sorted(KINDS) == sorted(BASE_CLASSES)
