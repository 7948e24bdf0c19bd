"""Tests of the example plugin, run from the sources: ``python -m pytest`` in this folder.

The plugin is not installed: each test builds its own registry with the module passed as an
extra plugin (``load_entrypoints=False`` so an installed copy is not registered twice), so no
global state is touched and no database is needed.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from manet.errors import DatasetError, PluginError
from manet.nn.pipeline import PipelineConfig, build_pipeline
from manet.plugin_manager import Registry, make_plugin_manager

import manet_plugin_example
from manet_plugin_example.crow import crow


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry(make_plugin_manager(load_entrypoints=False, extra_plugins=[manet_plugin_example]))


def test_registered_next_to_the_builtins(registry):
    assert "crow" in registry.names("pooling") and "mac" in registry.names("pooling")
    assert "sku-filenames" in registry.names("dataset")
    assert registry.get("pooling", "crow").as_dict()["parameters"] == {"a": 2.0, "b": 2.0}


def test_crow_parameters_are_validated(registry):
    assert registry.create("pooling", "crow", a="3").params == {"a": 3.0, "b": 2.0}  # CLI strings coerced
    with pytest.raises(PluginError, match="a=0.0 must be > 0"):
        registry.create("pooling", "crow", a=0)
    with pytest.raises(PluginError, match="has no parameter p"):
        registry.create("pooling", "crow", p=3)


def test_crow_math():
    x = torch.zeros(1, 3, 2, 2)
    x[0, 0] = 1.0  # channel 0 active everywhere
    x[0, 1, 0, 0] = 4.0  # channel 1 active in one cell; channel 2 never
    # Channel sums S = [[5, 1], [1, 1]], ||S||_2 = sqrt(28); weights sqrt(S / sqrt(28)).
    w = (torch.tensor([[5.0, 1.0], [1.0, 1.0]]) / 28**0.5).sqrt()
    # Non-zero shares Q = (1, 1/4, 0): IDF weights log(1.25 / Q) and 0 for the silent channel.
    expected = torch.tensor([w.sum() * torch.log(torch.tensor(1.25)),
                             4 * w[0, 0] * torch.log(torch.tensor(5.0)), 0.0])
    assert torch.allclose(crow(x)[0], expected, atol=1e-5)


def test_crow_module_keeps_the_channel_count(registry):
    module = registry.create("pooling", "crow").module()
    out = module(torch.rand(2, 16, 5, 7))
    assert out.shape == (2, 16) and torch.isfinite(out).all()


def test_crow_in_a_real_pipeline(registry):
    config = PipelineConfig(backbone="resnet18", weights="none", image_size=64, pooling="crow")
    assert config.validate(registry) == 512
    pipeline = build_pipeline(config, registry).eval()
    with torch.no_grad():
        descriptors = pipeline(torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8))
    assert descriptors.shape == (2, 512)
    assert torch.allclose(descriptors.norm(dim=1), torch.ones(2), atol=1e-4)


def _folder(tmp_path: Path, *names: str) -> Path:
    for name in names:
        (tmp_path / name).write_bytes(b"")  # records() reads names only; ingest opens the images
    return tmp_path


def test_skus_come_from_file_names(registry, tmp_path):
    folder = _folder(tmp_path, "A1__front.jpg", "A1__back.PNG", "B-2__x__y.jpg", "notes.txt",
                     ".A1__hidden.jpg")
    records = list(registry.create("dataset", "sku-filenames", split="train").records(folder))
    assert [(r.image.name, r.sku, r.domain, r.split) for r in records] == [
        ("A1__back.PNG", "A1", "catalog", "train"),
        ("A1__front.jpg", "A1", "catalog", "train"),
        ("B-2__x__y.jpg", "B-2", "catalog", "train"),
    ]
    assert all(r.image.is_absolute() for r in records)


def test_separator_parameter_and_queries_without_sku(registry, tmp_path):
    folder = _folder(tmp_path, "A1-front.jpg", "shelf.jpg")
    dataset = registry.create("dataset", "sku-filenames", domain="query", separator="-")
    assert [(r.sku, r.domain) for r in dataset.records(folder)] == [("A1", "query"), (None, "query")]


def test_dataset_errors_say_what_to_do(registry, tmp_path):
    dataset = registry.create("dataset", "sku-filenames")
    with pytest.raises(DatasetError, match="shelf.jpg: no sku before '__'.*-o domain=query"):
        list(dataset.records(_folder(tmp_path, "shelf.jpg")))
    with pytest.raises(DatasetError, match="does not exist"):
        dataset.records(tmp_path / "missing")
    with pytest.raises(PluginError, match="not one of catalog, query"):
        registry.create("dataset", "sku-filenames", domain="shop")
