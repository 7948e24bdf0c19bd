"""`manet bench extract` end to end on a tiny model: real generated JPEG files, the real
embedded database (the module's empty one serves as the scratch database)."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from manet.bench.extract import format_report
from manet.cli.main import cli
from manet.plugins.text_detectors import default_text_detector
from manet.store import embedded

KEYS = ("model_only_ips", "end_to_end_ips", "naive_ips", "peak_rss_mb", "device", "e2e_over_model",
        "e2e_over_naive", "gpu_peak_memory_mb", "batch_size", "image_size", "images", "backbone", "pooling",
        "torch", "threads", "decode_workers", "decode_worker_peak_rss_mb", "device_decode", "text_detector",
        "text_detection_ips", "text_detection_share")


def test_bench_extract_json(database_url, monkeypatch):
    monkeypatch.delenv("MANET_DEVICE", raising=False)
    result = CliRunner().invoke(cli, [
        "--quiet", "--database-url", database_url, "bench", "extract", "--backbone", "resnet18",
        "--image-size", "64", "--images", "12", "--source-size", "96", "--batch-size", "4",
        "--naive-images", "3", "--device", "cpu", "--rounds", "2", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert all(key in report for key in KEYS), sorted(set(KEYS) - set(report))
    # Two alternating rounds; the headline ratio is the median (here the mean) of theirs.
    assert len(report["rounds"]) == 2
    assert report["e2e_over_model"] == pytest.approx(
        sum(r["e2e_over_model"] for r in report["rounds"]) / 2, abs=1e-3)
    assert "median of 2 rounds" in format_report(report)
    assert report["device"] == "cpu" and report["gpu_peak_memory_mb"] is None
    assert (report["backbone"], report["pooling"], report["image_size"], report["batch_size"]) == \
        ("resnet18", "srmac", 64, 4)
    for key in ("model_only_ips", "end_to_end_ips", "naive_ips", "peak_rss_mb", "e2e_over_model", "e2e_over_naive"):
        assert report[key] > 0, key
    assert report["images"] == 12 and report["failed"] == 0 and report["naive_images"] == 3
    # No text branch, so nothing to time.
    assert report["text_detector"] is report["text_detection_ips"] is report["text_detection_share"] is None
    assert "text detection" not in format_report(report)

    engine = sa.create_engine(database_url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.connect() as conn:
        written = dict(conn.execute(sa.text(
            "SELECT m.name, count(*) FROM descriptors d JOIN models m ON m.id = d.model_id GROUP BY m.name")).all())
    engine.dispose()
    # Each round extracts into a model of its own; the naive loop's warm-up image is stored too.
    assert written == {"bench": 12, "bench-2": 12, "bench-naive": 4}


@pytest.fixture
def manet_database(pg_home) -> str:
    """An empty database of its own: the benchmark refuses one that holds images already."""
    return embedded.start(pg_home, "t_bench_extract_manet", recreate=True)


def test_bench_extract_manet_times_its_text_detection(manet_database, monkeypatch):
    """--manet: the default text detector inside the pipeline, also timed alone on the same batches."""
    monkeypatch.delenv("MANET_DEVICE", raising=False)
    result = CliRunner().invoke(cli, [
        "--quiet", "--database-url", manet_database, "bench", "extract", "--manet", "--image-size", "64",
        "--images", "6", "--source-size", "96", "--batch-size", "2", "--naive-images", "1", "--device", "cpu",
        "--rounds", "1", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["manet"] and report["images"] == 6 and report["failed"] == 0
    assert report["text_detector"] == default_text_detector()
    assert report["text_detection_ips"] > 0
    # The detector runs inside every model-only forward pass: alone it takes less time, up to timing noise.
    assert 0 < report["text_detection_share"] < 1.5
    assert f"% of the model-only time ({report['text_detector']})" in format_report(report)
    assert len(report["rounds"]) == 1 and "median" not in format_report(report)
    assert report["rounds"][0]["text_detection_share"] == report["text_detection_share"]


def test_bench_extract_rejects_a_bad_image_dir(database_url, tmp_path):
    result = CliRunner().invoke(cli, ["--quiet", "--database-url", database_url, "bench", "extract",
                                      "--image-dir", str(tmp_path / "missing"), "--device", "cpu"])
    assert result.exit_code == 2 and "does not exist" in result.output  # before any database work
