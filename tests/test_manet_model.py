"""MANet model: shapes for every branch combination, gradients, Eq. 2-3 wiring, stages,
state-dict round trip and the attention plugin's registration."""

from __future__ import annotations

import pytest
import torch

from manet.nn.attention_math import binarize_at_mean
from manet.nn.network import MANet, MANetConfig, build_manet, manet_loss
from manet.plugin_manager import Registry, make_plugin_manager

SIZE = 64
BATCH = 2


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry(make_plugin_manager(load_entrypoints=False))


def tiny(registry: Registry, **overrides) -> MANet:
    config = MANetConfig(**{"backbone": "resnet18", "weights": "none", "num_classes": 5, **overrides})
    return build_manet(config, registry)


def images() -> torch.Tensor:
    return torch.randn(BATCH, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))


def text_mask(size: int = SIZE // 32) -> torch.Tensor:
    return torch.rand(BATCH, 1, size, size, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("saliency", [True, False])
@pytest.mark.parametrize("text", [True, False])
def test_output_shapes(registry, saliency, text):
    model = tiny(registry, saliency=saliency, text=text)
    with torch.inference_mode():
        out = model(images(), text_mask() if text else None)
    assert out["features"].shape == (BATCH, 512, SIZE // 32, SIZE // 32)
    assert out["weighted"].shape == out["features"].shape
    assert out["logits"].shape == (BATCH, 5)
    if saliency:
        assert out["saliency_logits"].shape == (BATCH, 1, SIZE // 8, SIZE // 8)
        assert model.saliency_map(images()).shape == (BATCH, 1, SIZE // 32, SIZE // 32)
    else:
        assert out["saliency_logits"] is None
        with pytest.raises(ValueError, match="saliency branch off"):
            model.saliency_map(images())


def test_text_on_needs_a_mask(registry):
    with pytest.raises(ValueError, match="text_mask"):
        tiny(registry)(images())


def test_gradient_reaches_the_saliency_branch(registry):
    model = tiny(registry).train()
    out = model(images(), text_mask())
    target = binarize_at_mean(torch.rand(BATCH, 1, SIZE, SIZE))
    # CE alone already trains the branch (through Eq. 3); the Dice term adds to it.
    ce_only = torch.autograd.grad(manet_loss(out, torch.tensor([0, 3])), list(model.attention.parameters()),
                                  retain_graph=True)
    assert all(g.abs().sum() > 0 for g in ce_only)
    manet_loss(out, torch.tensor([0, 3]), target, dice_weight=0.5).backward()
    for name, param in model.attention.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert model.stages[0][0].weight.grad.abs().sum() > 0  # and on into the backbone
    assert model.pool.p.grad is not None  # GeM's p is learnt with the head


def test_neutral_text_scale_divides_the_weighting_by_one_and_a_half(registry):
    paper, neutral = tiny(registry, saliency=False), tiny(registry, saliency=False, text_scale="neutral")
    neutral.load_state_dict(paper.state_dict())
    with torch.inference_mode():
        a, b = paper(images(), text_mask()), neutral(images(), text_mask())
    torch.testing.assert_close(b["weighted"] * 1.5, a["weighted"])


def test_logit_text_scale_weights_features_by_one_plus_the_mask(registry):
    model = tiny(registry, saliency=False, text_scale="logit")
    mask = text_mask()  # already at the feature map's size
    with torch.inference_mode():
        out = model(images(), mask)
    torch.testing.assert_close(out["weighted"], out["features"] * (1.0 + mask))


def test_text_mask_weights_the_features(registry):
    model = tiny(registry, saliency=False)
    plain = tiny(registry, saliency=False, text=False)
    plain.load_state_dict(model.state_dict())
    with torch.inference_mode():
        zero = model(images(), torch.zeros(BATCH, 1, 2, 2))
        no_text = plain(images(), torch.zeros(BATCH, 1, 2, 2))  # ignored: text is off
        masked = model(images(), text_mask())
    torch.testing.assert_close(no_text["weighted"], no_text["features"])
    torch.testing.assert_close(zero["weighted"], 1.5 * no_text["weighted"])  # Eq. 2: sigmoid(0) + 1
    ratio = masked["weighted"] / masked["features"].clamp(min=1e-6)
    assert not torch.allclose(masked["weighted"], zero["weighted"])
    assert ratio[masked["features"] > 1e-3].min() >= 1.5 - 1e-4  # T_m in [0, 1] -> T in [1.5, 1.73]


@pytest.mark.parametrize("gate", ["multiply", "residual", "detached"])
def test_saliency_weights_the_features(registry, gate):
    model = tiny(registry, text=False, saliency_gate=gate)
    with torch.inference_mode():
        out = model(images())
        saliency = model.saliency_map(images())
        expected = out["features"] * (1 + saliency if gate == "residual" else saliency)
    torch.testing.assert_close(out["weighted"], expected)


def test_detached_gate_trains_saliency_by_dice_only(registry):
    # The classification loss alone leaves the saliency branch's weights without gradient.
    model = tiny(registry, text=False, saliency_gate="detached")
    out = model(images())
    torch.nn.functional.cross_entropy(out["logits"], torch.zeros(len(out["logits"]), dtype=torch.long)).backward()
    assert all(p.grad is None or not p.grad.any() for p in model.attention.parameters())
    assert any(p.grad is not None and p.grad.any() for p in model.stages.parameters())


@pytest.mark.parametrize("branch_input", ["shared", "detached"])
def test_detached_saliency_input_keeps_dice_out_of_the_backbone(registry, branch_input):
    # Eq. 1 alone: it trains the branch either way, and the backbone only when the input is shared.
    model = tiny(registry, text=False, saliency_input=branch_input)
    out = model(images())
    target = binarize_at_mean(torch.rand(BATCH, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(2)))
    manet_loss({**out, "logits": out["logits"].detach()}, torch.zeros(BATCH, dtype=torch.long), target).backward()
    assert any(p.grad is not None and p.grad.any() for p in model.attention.parameters())
    backbone_trained = any(p.grad is not None and p.grad.any() for p in model.stages.parameters())
    assert backbone_trained == (branch_input == "shared")
    with torch.inference_mode():  # the forward pass is the same
        shared = tiny(registry, text=False)
        shared.load_state_dict(model.state_dict())
        torch.testing.assert_close(shared(images())["weighted"], model(images())["weighted"])


@pytest.mark.parametrize("name", ["resnet18", pytest.param("vgg16", marks=pytest.mark.slow)])
def test_stages_equal_build(registry, name):
    backbone = registry.create("backbone", name)
    stages = backbone.build_stages("none")
    assert len(stages) == len(backbone.stage_channels)
    x = torch.rand(BATCH, 3, SIZE, SIZE)
    with torch.inference_mode():
        y = x
        for stage, channels in zip(stages, backbone.stage_channels):
            y = stage(y)
            assert y.shape[1] == channels
        assert torch.equal(y, backbone.build("none")(x))
    assert not stages.training


def test_state_dict_round_trip(registry, tmp_path):
    torch.manual_seed(1)
    model = tiny(registry)
    with torch.no_grad():
        model.pool.p.fill_(2.5)
        model.stages[3][0][0].conv1.weight.add_(0.1)  # differ from the seeded random backbone
    path = tmp_path / "manet.pt"
    torch.save(model.state_dict(), path)
    torch.manual_seed(2)  # a different random head and branch
    fresh = tiny(registry)
    fresh.load_state_dict(torch.load(path, weights_only=True))
    with torch.inference_mode():
        a, b = model(images(), text_mask()), fresh(images(), text_mask())
    for key in ("features", "weighted", "saliency_logits", "logits"):
        assert torch.equal(a[key], b[key]), key


def test_attention_plugin_is_registered(registry):
    assert "saliency-fpn" in registry.names("attention_branch")
    branch = registry.create("attention_branch", "saliency-fpn", channels="32")
    assert branch.params["channels"] == 32
    module = branch.build([64, 128, 256, 512])
    # Sizes that do not halve exactly (odd inputs, VGG's flooring max-pools) still merge.
    maps = [torch.rand(1, c, n, n + 1) for c, n in zip([64, 128, 256, 512], [17, 9, 4, 3])]
    assert module(maps).shape == (1, 1, 9, 10)


@pytest.mark.slow  # VGG16: 138M random weights
def test_vgg16_manet(registry):
    model = tiny(registry, backbone="vgg16", text=False, head_pooling="avg")
    with torch.inference_mode():
        out = model(images())
    assert out["features"].shape == (BATCH, 512, SIZE // 16, SIZE // 16)
    assert out["saliency_logits"].shape == (BATCH, 1, SIZE // 4, SIZE // 4)  # VGG's 2nd stage
    assert model.saliency_map(images()).shape == (BATCH, 1, SIZE // 16, SIZE // 16)


def test_config_round_trip_and_errors():
    config = MANetConfig(backbone="vgg16", text=False, attention_params={"channels": 32})
    assert MANetConfig.from_dict(config.to_dict()) == config
    with pytest.raises(Exception, match="head pooling"):
        MANetConfig(head_pooling="max")
    with pytest.raises(Exception, match="unknown saliency gate 'sum'"):
        MANetConfig(saliency_gate="sum")
    with pytest.raises(Exception, match="unknown saliency input 'glued'"):
        MANetConfig(saliency_input="glued")
    with pytest.raises(Exception, match="unknown text scale 'loud'"):
        MANetConfig(text_scale="loud")
    with pytest.raises(Exception, match="unknown head 'arc'"):
        MANetConfig(head="arc")
    # A checkpoint written before these settings existed reads as the paper's X * S, T and head.
    old = MANetConfig.from_dict({"backbone": "vgg16"})
    assert (old.saliency_gate, old.saliency_input, old.text_scale, old.head) == ("multiply", "shared", "paper",
                                                                                 "linear")
    with pytest.raises(Exception, match="unknown MANet settings"):
        MANetConfig.from_dict({"colour": "red"})


def test_cosine_head_ignores_the_feature_scale(registry):
    """Eq. 3's weights scale X; GeM is homogeneous, so a cosine head's logits do not move."""
    model = tiny(registry, text=False, saliency=False, head="cosine", dropout=0.0)
    features = torch.rand(BATCH, 512, 2, 2, generator=torch.Generator().manual_seed(2)) + 0.1
    with torch.inference_mode():
        logits = model.classifier(model.pool(features))
        scaled = model.classifier(model.pool(3.0 * features))
    assert logits.shape == (BATCH, 5) and torch.allclose(logits, scaled, atol=1e-4)
    assert logits.abs().max() <= 20.0 + 1e-4  # scale x cosine
    # the state dict round-trips into a network built from the same config
    again = build_manet(model.config, registry)
    again.load_state_dict(model.state_dict())


def test_imprint_sets_each_class_weight_to_its_mean_descriptor(registry):
    """One pass over a loader: a class's weight is the unit mean of its images' unit pooled
    descriptors, in the network's own forward; a class without images keeps its weight."""
    import torch.nn.functional as F

    from manet.train.config import TrainConfig
    from manet.train.distributed import ProcessInfo, Session
    from manet.train.imprint import imprint_head

    model = tiny(registry, text=False, head="cosine", num_classes=3)
    before = model.classifier.weight.detach().clone()
    pixels = torch.randint(0, 255, (4, 3, SIZE, SIZE), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    target = torch.tensor([0, 1, 0, 0])
    loader = [(pixels[:2], torch.zeros(2, 2, SIZE, SIZE), target[:2]),
              (pixels[2:], torch.zeros(2, 2, SIZE, SIZE), target[2:])]
    normalise = lambda x: (x - 0.5) / 0.25  # noqa: E731 - any fixed normalisation

    seen = imprint_head(Session(ProcessInfo(), "cpu"), model, normalise, loader, "cpu",
                        TrainConfig(name="t", text=False))
    assert seen == 4 and model.training  # back in training mode
    model.eval()
    with torch.inference_mode():
        pooled = F.normalize(model(normalise(pixels.float() / 255))["pooled"], dim=-1)
    expected = torch.stack([F.normalize(pooled[[0, 2, 3]].sum(0), dim=0), pooled[1], before[2]])
    assert torch.allclose(model.classifier.weight, expected, atol=1e-5)
