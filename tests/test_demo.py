"""`manet demo` end to end on a small setting (the real one: 50 products, EfficientNet-Lite0)."""

from __future__ import annotations

import json

from click.testing import CliRunner

from manet.cli.main import cli


def test_demo_prints_baselines_and_trained_manet(database_url, tmp_path, monkeypatch):
    monkeypatch.setenv("MANET_DATABASE_URL", database_url)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no-weights"))
    # The default backbone: its ImageNet weights are installed, so no torch cache is needed.
    args = ["--quiet", "--home", str(tmp_path), "--device", "cpu", "demo", "--products", "8", "--photos", "2",
            "--train-photos", "2", "--epochs", "1", "--image-size", "64"]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "random" not in result.output
    table = [line.split() for line in result.output.splitlines()
             if line.startswith(("mac ", "rmac ", "srmac ", "manet+srmac "))]
    assert [row[0] for row in table] == ["mac", "rmac", "srmac", "manet+srmac"]
    assert all(0.0 <= float(row[1]) <= 1.0 for row in table)
    assert "mined categories:" in result.output
    assert result.output.count("top-7 by demo-efficientnet-lite0-manet") == 3

    again = CliRunner().invoke(cli, [*args, "--json"], catch_exceptions=False)
    data = json.loads(again.output)
    assert data["weights"] == "imagenet" and data["backbone"] == "efficientnet-lite0" and set(data["metrics"]) == {"mac", "rmac", "srmac", "manet+srmac"}
    assert data["metrics"]["srmac"]["queries"] == 16
    assert len({example["query_sku"] for example in data["examples"]}) == 3


def test_demo_never_falls_back_to_random_weights(database_url, tmp_path, monkeypatch):
    monkeypatch.setenv("MANET_DATABASE_URL", database_url)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no-weights"))  # resnet18's are not cached here
    result = CliRunner().invoke(cli, ["--quiet", "--home", str(tmp_path), "demo", "--backbone", "resnet18"])
    assert result.exit_code != 0
    assert "ImageNet weights for resnet18 are not installed or cached" in result.output
    assert "--weights none" in result.output
