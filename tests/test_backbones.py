"""Backbone plugins: feature-map shapes, local checkpoints, and clear weight errors."""

from __future__ import annotations

import pytest
import torch

from manet.errors import WeightsError
from manet.plugin_manager import Registry, make_plugin_manager


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry(make_plugin_manager(load_entrypoints=False))


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50", "resnet101", "vgg16"])
def test_feature_map_shape(registry, name):
    backbone = registry.create("backbone", name)
    model = backbone.build("none")
    with torch.inference_mode():
        features = model(torch.rand(2, 3, 64, 64))
    assert features.shape == (2, backbone.out_channels, 64 // backbone.stride, 64 // backbone.stride)


def test_random_weights_are_the_same_in_every_build(registry):
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    first = registry.create("backbone", "resnet18").build("none")
    second = registry.create("backbone", "resnet18").build("none")
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        assert torch.equal(a, b)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's RNG is untouched


def test_local_checkpoint_round_trip(registry, tmp_path):
    import torchvision

    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path / "r18.pt"
    torch.save({"state_dict": reference.state_dict()}, path)
    model = registry.create("backbone", "resnet18").build(str(path))
    assert torch.equal(model[0].weight, reference.conv1.weight)


def test_checkpoint_of_another_architecture(registry, tmp_path):
    import torchvision

    path = tmp_path / "r18.pt"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    with pytest.raises(WeightsError, match=r"r18.pt does not fit resnet50"):
        registry.create("backbone", "resnet50").build(str(path))


@pytest.mark.parametrize("content, message", [(None, "does not exist"), (b"not a checkpoint", "cannot read")])
def test_missing_or_corrupt_checkpoint(registry, tmp_path, content, message):
    path = tmp_path / "weights.pt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(WeightsError, match=message):
        registry.create("backbone", "resnet18").build(str(path))
