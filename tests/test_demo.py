"""`manet demo` end to end on a small setting (the real one is 50 products, ResNet-50)."""

from __future__ import annotations

import json

from click.testing import CliRunner

from manet.cli import cli


def test_demo_prints_map_for_mac_and_srmac(database_url, tmp_path, monkeypatch):
    monkeypatch.setenv("MANET_DATABASE_URL", database_url)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no-weights"))
    args = ["--quiet", "--home", str(tmp_path), "--device", "cpu", "demo", "--products", "6", "--photos", "2",
            "--backbone", "resnet18", "--image-size", "64"]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "random weights" in result.output
    table = [line.split() for line in result.output.splitlines() if line.startswith(("mac ", "srmac "))]
    assert [row[0] for row in table] == ["mac", "srmac"]
    assert all(0.0 <= float(row[1]) <= 1.0 for row in table)
    assert result.output.count("top-7 by SR-MAC") == 3

    again = CliRunner().invoke(cli, [*args, "--json"], catch_exceptions=False)
    data = json.loads(again.output)
    assert data["weights"] == "none" and set(data["metrics"]) == {"mac", "srmac"}
    assert data["metrics"]["srmac"]["queries"] == 12
    assert len({example["query_sku"] for example in data["examples"]}) == 3
