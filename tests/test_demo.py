"""`manet demo` end to end on a small setting (the real one is 50 products, ResNet-50)."""

from __future__ import annotations

import json

from click.testing import CliRunner

from manet.cli import cli


def test_demo_prints_baselines_and_trained_manet(database_url, tmp_path, monkeypatch):
    monkeypatch.setenv("MANET_DATABASE_URL", database_url)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no-weights"))
    args = ["--quiet", "--home", str(tmp_path), "--device", "cpu", "demo", "--products", "8", "--photos", "2",
            "--train-photos", "2", "--epochs", "1", "--backbone", "resnet18", "--image-size", "64"]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "random weights" in result.output
    table = [line.split() for line in result.output.splitlines()
             if line.startswith(("mac ", "rmac ", "srmac ", "manet+srmac "))]
    assert [row[0] for row in table] == ["mac", "rmac", "srmac", "manet+srmac"]
    assert all(0.0 <= float(row[1]) <= 1.0 for row in table)
    assert "mined categories:" in result.output
    assert result.output.count("top-7 by demo-resnet18-manet") == 3

    again = CliRunner().invoke(cli, [*args, "--json"], catch_exceptions=False)
    data = json.loads(again.output)
    assert data["weights"] == "none" and set(data["metrics"]) == {"mac", "rmac", "srmac", "manet+srmac"}
    assert data["metrics"]["srmac"]["queries"] == 16
    assert len({example["query_sku"] for example in data["examples"]}) == 3
