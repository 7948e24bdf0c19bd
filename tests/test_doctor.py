"""`manet doctor`: every check reported, isolated from the others, read only, exit 1 on a failure."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from manet import embedded
from manet.cli_common import State
from manet.cli_doctor import doctor
from manet.doctor import CHECKS, DoctorContext, check_device, check_east, check_weights, run_checks

DOWN_URL = "postgresql://x:y@127.0.0.1:1/nope"


@pytest.fixture(autouse=True)
def _plain_environment(monkeypatch):
    """Checks read the environment: start each test from one without manet's variables."""
    for name in ("MANET_DATABASE_URL", "MANET_DEVICE", "MANET_PRECISION", "MANET_EAST_MODEL", "MANET_LOAD_PLUGINS"):
        monkeypatch.delenv(name, raising=False)


def invoke(database_url: str | None, *args: str, home: Path | None = None, device: str | None = "cpu"):
    return CliRunner().invoke(doctor, list(args), obj=State(database_url, home, device, True), catch_exceptions=False)


def by_name(checks) -> dict:
    return {check["name"] if isinstance(check, dict) else check.name: check for check in checks}


def test_migrated_database_json(retriever, database_url):
    retriever.db.upgrade_if_needed()  # the fixture migrates on first use
    # The embedded server trusts local connections, so a password shows the masking.
    with_password = database_url.replace("postgres:@", "postgres:s3cret@")
    assert with_password != database_url
    result = invoke(with_password, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert [check["name"] for check in report["checks"]] == [name for name, _ in CHECKS]
    assert report["status"] in ("ok", "warn")
    checks = by_name(report["checks"])
    assert checks["database"]["status"] == "ok"
    assert "postgres:***@" in checks["database"]["detail"] and "s3cret" not in result.output
    assert re.search(r"PostgreSQL \d+", checks["postgresql"]["detail"])
    pgvector = checks["pgvector"]
    version = tuple(int(v) for v in re.search(r"pgvector (\d+)\.(\d+)\.(\d+) installed", pgvector["detail"]).groups())
    if version < (0, 8, 2):  # the embedded server's 0.8.1
        assert pgvector["status"] == "warn" and "CVE-2026-3172" in pgvector["detail"]
        assert "max_parallel_maintenance_workers = 0" in pgvector["detail"] and "0.8.4" in pgvector["fix"]
    assert checks["migrations"]["status"] == "ok" and "head" in checks["migrations"]["detail"]
    assert checks["device"]["status"] == "ok" and checks["device"]["detail"].startswith("cpu (requested: cpu)")
    assert "shared_buffers=" in checks["server"]["detail"]


def test_fresh_database_is_not_migrated_by_doctor(pg_home):
    from manet.db import Database

    url = embedded.start(pg_home, "t_doctor_empty", recreate=True)
    checks = by_name(run_checks(DoctorContext(database_url=url, device="cpu")))
    migrations = checks["migrations"]
    assert migrations.status == "fail" and "nothing" in migrations.detail
    assert "manet db upgrade" in migrations.fix
    assert "not yet created" in checks["pgvector"].detail
    database = Database(url)
    try:
        assert database.current_revision() is None  # doctor only read
    finally:
        database.dispose()


def test_embedded_server(pg_home):
    checks = by_name(run_checks(DoctorContext(home=pg_home, device="cpu")))
    assert checks["database"].status == "ok"
    assert f"(embedded, MANET_HOME={pg_home})" in checks["database"].detail
    if checks["migrations"].status != "ok":  # commands migrate the embedded database themselves
        assert checks["migrations"].status == "warn" and "migrates" in checks["migrations"].detail
    assert checks["home"].status in ("ok", "warn") and "embedded server running" in checks["home"].detail


def test_down_database_fails_and_the_rest_still_run():
    result = invoke(DOWN_URL)
    assert result.exit_code == 1
    lines = result.output.splitlines()
    database = next(line for line in lines if line.split()[:2] == ["fail", "database"])
    assert "x:***@127.0.0.1:1/nope" in database and "unreachable" in database and ":y@" not in result.output
    assert "fix: start the server" in lines[lines.index(database) + 1]
    statuses = {line.split()[1]: line.split()[0] for line in lines if line[:4] in ("ok  ", "warn", "fail", "skip")}
    assert list(statuses) == [name for name, _ in CHECKS]
    assert statuses["migrations"] == "skip" and statuses["torch"] == "ok" and statuses["plugins"] == "ok"


def test_east_model_missing_or_present(monkeypatch, tmp_path):
    assert check_east(DoctorContext()).status == "ok"  # unset: the mser detector
    monkeypatch.setenv("MANET_EAST_MODEL", str(tmp_path / "frozen_east_text_detection.pb"))
    missing = check_east(DoctorContext())
    assert missing.status == "fail" and "not found" in missing.detail and "MANET_EAST_MODEL" in missing.fix
    (tmp_path / "frozen_east_text_detection.pb").write_bytes(b"not a graph")
    small = check_east(DoctorContext())
    assert small.status == "warn" and "11 bytes" in small.detail


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_without_cuda(monkeypatch):
    monkeypatch.setenv("MANET_DEVICE", "cuda")
    check = check_device(DoctorContext())
    assert check.status == "fail" and "CUDA is not available" in check.detail
    assert "--device cpu" in check.fix and "MANET_DEVICE" in check.fix


def test_no_cached_weights(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    check = check_weights(DoctorContext())
    assert check.status == "warn" and str(tmp_path) in check.detail
    assert "`--weights imagenet` will download" in check.fix


def _install_plugin(monkeypatch, folder: Path, module: str, source: str) -> None:
    """A real third-party plugin: a module and its dist-info with an entry point, on sys.path."""
    (folder / f"{module}.py").write_text(source)
    info = folder / f"{module}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[manet]\n{module} = {module}\n")
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delitem(__import__("sys").modules, module, raising=False)


def test_failed_plugin_import_is_reported(monkeypatch, tmp_path):
    _install_plugin(monkeypatch, tmp_path, "doctor_broken_plugin", "import doctor_no_such_module\n")
    checks = by_name(run_checks(DoctorContext(database_url=DOWN_URL, device="cpu")))
    plugins = checks["plugins"]
    assert plugins.status == "fail"
    assert "doctor_broken_plugin: ModuleNotFoundError" in plugins.detail
    assert "MANET_LOAD_PLUGINS" in plugins.fix
    assert checks["torch"].status == "ok"
    monkeypatch.setenv("MANET_LOAD_PLUGINS", "")
    assert by_name(run_checks(DoctorContext(database_url=DOWN_URL, device="cpu")))["plugins"].status == "ok"


def test_an_exception_in_a_check_fails_only_that_check(monkeypatch, tmp_path):
    # A plugin registering a second 'mac' pooling makes the registry raise inside the check.
    source = ("from manet import hookimpl\nfrom manet.plugin_base import Pooling\n\n"
              "class Mac(Pooling):\n    name = 'mac'\n    description = 'clash'\n\n"
              "@hookimpl\ndef register_poolings(register):\n    register(Mac)\n")
    _install_plugin(monkeypatch, tmp_path, "doctor_clashing_plugin", source)
    checks = by_name(run_checks(DoctorContext(database_url=DOWN_URL, device="cpu")))
    assert checks["plugins"].status == "fail" and "duplicate pooling 'mac'" in checks["plugins"].detail
    assert checks["home"].status in ("ok", "warn") and checks["east"].status == "ok"
