"""docker/: the compose file as docker-compose renders it, and the image's install step.

No Docker engine is needed: ``docker-compose config`` only validates and renders the file. Those
tests are skipped where the client is missing; the plain-text checks always run.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from manet import config

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker" / "compose.yaml"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
MIN_PGVECTOR = (0, 8, 4)  # CVE-2026-3172 is fixed from 0.8.2; the design asks for >= 0.8.4
PG_MAJOR = 18
PROFILES = ("gpu", "cpu", "tools", "api")


def pgvector_tag(image: str) -> tuple[tuple[int, ...], int]:
    """(pgvector version, PostgreSQL major) of a ``pgvector/pgvector:0.8.4-pg18[-trixie]`` image."""
    match = re.fullmatch(r"(?:docker\.io/)?pgvector/pgvector:(\d+(?:\.\d+)+)-pg(\d+)(?:-[a-z]+)?", image)
    assert match, f"{image!r} is not a versioned pgvector/pgvector:X.Y.Z-pgNN tag"
    return tuple(int(part) for part in match.group(1).split(".")), int(match.group(2))


def test_pgvector_tag_parsing() -> None:
    assert pgvector_tag("pgvector/pgvector:0.8.4-pg18") == ((0, 8, 4), 18)
    assert pgvector_tag("pgvector/pgvector:0.10.0-pg18-trixie") == ((0, 10, 0), 18)
    assert pgvector_tag("pgvector/pgvector:0.10.0-pg18")[0] > MIN_PGVECTOR  # numeric, not text, order
    with pytest.raises(AssertionError):
        pgvector_tag("pgvector/pgvector:pg18")  # a floating tag says nothing about the version


def test_compose_pins_pgvector_on_postgres_18() -> None:
    images = re.findall(r"^\s*image:\s*[\"']?(\S*pgvector\S*?)[\"']?\s*$", COMPOSE.read_text(), re.M)
    assert len(images) == 1, images
    version, major = pgvector_tag(images[0])
    assert version >= MIN_PGVECTOR and major == PG_MAJOR


def _shell_commands(text: str) -> list[list[str]]:
    """Each ``&&``-chained command line, as its stripped parts."""
    return [[part.strip() for part in line.split("&&")] for line in text.splitlines() if line.strip()]


def _readme_install_step() -> list[str]:
    """README set-up step 1 up to and including its ``pip install`` of the project."""
    readme = (ROOT / "README.md").read_text()
    step1 = readme.split("\n1. ", 1)[1].split("\n2. ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", step1, re.S)
    assert block, "README step 1 has no bash block"
    parts = next(cmd for cmd in _shell_commands(block.group(1)) if cmd[0].startswith("python3 -m venv"))
    last = next(i for i, part in enumerate(parts) if part.startswith("pip install"))
    return parts[: last + 1]


def _dockerfile_runs() -> list[list[str]]:
    """The Dockerfile's RUN instructions (continuation lines joined), as ``&&`` parts."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    runs = [line.strip()[4:] for line in text.splitlines() if line.strip().startswith("RUN ")]
    return [[" ".join(part.split()) for part in run.split("&&")] for run in runs]


def test_dockerfile_installs_with_the_readme_step() -> None:
    step = _readme_install_step()
    assert step[-1] in ("pip install -e .", "pip install ."), step
    assert any(run == step for run in _dockerfile_runs()), (
        f"no RUN line of docker/Dockerfile is README step 1 ({' && '.join(step)})")


def test_dockerfile_shape() -> None:
    text = DOCKERFILE.read_text()
    base = re.search(r"^ARG BASE_IMAGE=(\S+)", text, re.M)
    assert base and re.fullmatch(r"nvidia/cuda:12\.\d+(\.\d+)?-cudnn-runtime-ubuntu24\.04", base.group(1))
    assert re.search(r"^FROM \$\{?BASE_IMAGE\}?\s*$", text, re.M)
    assert re.search(r"^ARG TORCH_INDEX_URL=(\"\")?\s*$", text, re.M)  # empty = PyPI
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0")
    assert '\nENTRYPOINT ["manet"]' in text
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".git", "data", "*.egg-info", "**/__pycache__"} <= set(ignored)


# --- docker-compose config ------------------------------------------------------------------------

COMPOSE_BIN = shutil.which("docker-compose")
needs_compose = pytest.mark.skipif(COMPOSE_BIN is None, reason="docker-compose is not on PATH")


def _compose(*args: str) -> subprocess.CompletedProcess[str]:
    # The file's defaults, not this machine's settings, are under test.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MANET_", "COMPOSE_", "DOCKER_"))}
    return subprocess.run([COMPOSE_BIN or "docker-compose", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=120, check=False)


@cache
def _supports_profiles() -> bool:
    return "--profile" in _compose("--help").stdout


def _load_yaml(text: str) -> Any:
    """Parse YAML with PyYAML, or, where this venv lacks it, with docker-compose's own Python."""
    try:
        import yaml
    except ImportError:
        pass
    else:
        return yaml.safe_load(text)
    first = Path(COMPOSE_BIN or "").read_bytes()[:200].split(b"\n", 1)[0].decode(errors="replace")
    if not first.startswith("#!"):
        pytest.skip("PyYAML is not installed and docker-compose is not a Python script")
    code = "import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)"
    done = subprocess.run([*shlex.split(first[2:]), "-c", code], input=text, capture_output=True, text=True,
                          timeout=60, check=False)
    if done.returncode != 0:
        pytest.skip(f"no YAML parser: PyYAML missing here and in docker-compose's Python ({done.stderr[-200:]})")
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def rendered() -> dict[str, Any]:
    if COMPOSE_BIN is None:
        pytest.skip("docker-compose is not on PATH")
    profiles = [arg for name in PROFILES for arg in ("--profile", name)] if _supports_profiles() else []
    done = _compose("-f", str(COMPOSE), *profiles, "config")
    assert done.returncode == 0, done.stderr
    return _load_yaml(done.stdout)


@pytest.mark.slow  # runs docker-compose
@needs_compose
@pytest.mark.parametrize("profile", [None, *PROFILES])
def test_compose_config_is_valid(profile: str | None) -> None:
    if profile is not None and not _supports_profiles():
        pytest.skip(f"{_compose('version', '--short').stdout.strip()} has no --profile (needs 1.28+)")
    done = _compose("-f", str(COMPOSE), *(["--profile", profile] if profile else []), "config", "--quiet")
    assert done.returncode == 0, done.stderr


def _mounts(service: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """target -> (source, read_only), from short (v1) or long (v2) volume syntax."""
    mounts = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):  # SOURCE:TARGET[:MODE]
            source, target, mode = [*volume.split(":"), "rw"][:3]
            mounts[target] = (source, "ro" in mode.split(","))
        else:
            mounts[volume["target"]] = (volume.get("source", ""), bool(volume.get("read_only")))
    return mounts


@pytest.mark.slow  # rendered runs docker-compose
def test_compose_database(rendered: dict[str, Any]) -> None:
    db = rendered["services"]["db"]
    version, major = pgvector_tag(db["image"])
    assert version >= MIN_PGVECTOR and major == PG_MAJOR
    assert "profiles" not in db
    assert "pg_isready" in " ".join(db["healthcheck"]["test"])
    # PostgreSQL 18 images: PGDATA is /var/lib/postgresql/18/docker, the volume goes one level up.
    assert _mounts(db)["/var/lib/postgresql"][0] == "pgdata"
    assert "pgdata" in rendered["volumes"]
    for port in db["ports"]:
        host_ip = port.split(":")[0] if isinstance(port, str) else port.get("host_ip")
        assert host_ip == "127.0.0.1", port
    env = db["environment"]
    assert env["POSTGRES_USER"] and env["POSTGRES_DB"] and env["POSTGRES_PASSWORD"]


@pytest.mark.slow  # rendered runs docker-compose
def test_compose_workers(rendered: dict[str, Any]) -> None:
    services = rendered["services"]
    gpu, cpu, tool = services["worker"], services["worker-cpu"], services["manet"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    assert "deploy" not in cpu and "deploy" not in tool
    assert (gpu.get("profiles"), cpu.get("profiles"), tool.get("profiles")) == (["gpu"], ["cpu"], ["tools"])
    assert gpu["build"]["args"]["BASE_IMAGE"].startswith("nvidia/cuda:")
    assert not cpu["build"]["args"]["BASE_IMAGE"].startswith("nvidia/")
    assert cpu["build"]["args"]["TORCH_INDEX_URL"].endswith("/cpu")
    for service in (gpu, cpu):
        assert service["command"][:3] == ["worker", "--model", "r50-srmac"]
        assert "--until-empty" not in service["command"]
        assert service["restart"] == "unless-stopped"
    for service in (gpu, cpu, tool):
        assert Path(service["build"]["context"]).resolve() == ROOT
        assert service["depends_on"]["db"]["condition"] == "service_healthy"
        assert service["environment"]["MANET_DATABASE_URL"] == "postgresql://manet:manet@db:5432/manet"
        mounts = _mounts(service)
        assert mounts[service["environment"]["TORCH_HOME"]][0] == "torch-cache"
        assert mounts[service["environment"]["MANET_HOME"]][0] == "manet-home"
        assert mounts["/data"][1], "the data folder is mounted read-only"


def _published(port: str | dict[str, Any]) -> tuple[str, str, str]:
    """(host IP, host port, container port) of a ``ports`` entry, short or long syntax."""
    if isinstance(port, dict):
        return port.get("host_ip", ""), str(port.get("published", "")), str(port["target"])
    host_ip, published, target = port.split(":")
    return host_ip, published, target.split("/")[0]


@pytest.mark.slow  # rendered runs docker-compose
def test_compose_api(rendered: dict[str, Any]) -> None:
    api = rendered["services"]["api"]
    assert api.get("profiles") == ["api"]  # a bare `up` starts the database only, as before
    assert api["command"] == ["serve", "--host", "0.0.0.0", "--port", "8000"]
    assert api["image"] == rendered["services"]["manet"]["image"]  # the CPU image, built once
    assert Path(api["build"]["context"]).resolve() == ROOT and "deploy" not in api
    assert [_published(port) for port in api["ports"]] == [("127.0.0.1", "8000", "8000")]
    assert api["depends_on"]["db"]["condition"] == "service_healthy"
    assert api["restart"] == "unless-stopped"
    env = api["environment"]
    assert env["MANET_DATABASE_URL"] == "postgresql://manet:manet@db:5432/manet"
    assert env["MANET_DEVICE"] == "cpu"
    assert env[config.SERVE_MODEL_ENV] == "r50-srmac"  # the workers' model
    assert env[config.API_KEY_ENV] == ""  # open unless set (an empty variable is no key: click ignores it)
    mounts = _mounts(api)
    assert mounts["/data"][1], "thumbnails read the data folder, read-only"
    assert mounts[env["MANET_HOME"]][0] == "manet-home" and mounts[env["TORCH_HOME"]][0] == "torch-cache"
    probe = " ".join(api["healthcheck"]["test"])
    assert "http://127.0.0.1:8000/healthz" in probe and "curl" not in probe  # the image has no curl
