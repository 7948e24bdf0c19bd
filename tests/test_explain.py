"""``manet explain``: SR-MAC region weights by hand, attention maps that rebuild the pipeline's
descriptors exactly, and the PNG written through the CLI for SR-MAC, MAC and MANet models."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from manet.catalog.images import read_image_tensor
from manet.cli.common import ManetGroup, State
from manet.cli.explain import explain
from manet.nn.attention_math import weight_features
from manet.nn.network import MANetConfig, build_manet
from manet.nn.pipeline import LEARNED, UNIFORM, PipelineConfig, build_pipeline
from manet.nn.pooling import l2_normalize, salient_cells, srmac, srmac_weights
from manet.settings import Settings
from manet.tools.explain import DPI, FIGURE_INCHES, cells_to_pixels, group_regions, mask_edges, top_regions

TINY = {"backbone": "resnet18", "weights": "none", "image_size": 64}
PNG_SIZE = (int(FIGURE_INCHES[0] * DPI), int(FIGURE_INCHES[1] * DPI))


# -- pure functions ---------------------------------------------------------------------------

# A 2x3 saliency map; mean 2.7 / 6 = 0.45, so S = [[1, 1, 0], [0, 1, 0]].
SALIENCY_2X3 = torch.tensor([[[[0.9, 0.7, 0.1], [0.2, 0.8, 0.0]]]])


def test_srmac_weights_by_hand() -> None:
    regions, weights = srmac_weights(SALIENCY_2X3, 2, 3)
    # Global; level 1: two 2x2 (d = 1 extra along the long side); level 2: six 1x1 cells;
    # level 3: side floor(4/4) = 1, 3 x 4 positions (rows 0, 0, 1; columns 0, 0, 1, 2).
    cells = [(r, c, 1, 1) for r in (0, 1) for c in (0, 1, 2)]
    level3 = [(r, c, 1, 1) for r in (0, 0, 1) for c in (0, 0, 1, 2)]
    assert regions == [(0, 0, 2, 3), (0, 0, 2, 2), (0, 1, 2, 2), *cells, *level3]
    s = {(0, 0): 1.0, (0, 1): 1.0, (0, 2): 0.0, (1, 0): 0.0, (1, 1): 1.0, (1, 2): 0.0}
    expected = [3 / 6, 3 / 4, 2 / 4] + [s[r, c] for r, c, _, _ in cells] + [s[r, c] for r, c, _, _ in level3]
    torch.testing.assert_close(weights, torch.tensor([expected]))
    assert weights.dtype == torch.float32


def test_srmac_weights_constant_and_resized_maps() -> None:
    # A constant map has no above-mean cell: uniform weights (plain R-MAC), not zeros.
    _, weights = srmac_weights(torch.full((2, 1, 2, 2), 0.3), 2, 2)
    torch.testing.assert_close(weights, torch.ones(2, 15))
    # A 4x4 map of 2x2 blocks shrinks (bilinear, align_corners=False) to its block values.
    blocks = torch.tensor([[0.9, 0.1], [0.2, 0.8]]).repeat_interleave(2, 0).repeat_interleave(2, 1)
    assert salient_cells(blocks.view(1, 1, 4, 4), (2, 2)).view(2, 2).tolist() == [[True, False], [False, True]]


def _region_sum(x: torch.Tensor, regions: list, weights: torch.Tensor) -> torch.Tensor:
    """SR-MAC written out: each region's L2-normalised max, times its weight, summed."""
    return sum(weights[:, i:i + 1] * l2_normalize(x[:, :, t:t + h, l:l + w].amax(dim=(2, 3)))
               for i, (t, l, h, w) in enumerate(regions))


def test_srmac_is_the_weighted_sum_of_its_regions() -> None:
    x = torch.rand(2, 5, 2, 3) + 0.1
    saliency = torch.cat([SALIENCY_2X3, SALIENCY_2X3.flip(-1)])
    regions, weights = srmac_weights(saliency, 2, 3)
    torch.testing.assert_close(srmac(x, saliency), _region_sum(x, regions, weights))


def test_mask_edges_and_cells_to_pixels() -> None:
    # One set cell at (row 0, col 1) of a 2x2 map: its four sides, top and right on the border.
    assert sorted(mask_edges(np.array([[0, 1], [0, 0]]))) == [
        ((1, 0), (1, 1)), ((1, 0), (2, 0)), ((1, 1), (2, 1)), ((2, 0), (2, 1))]
    # Two set cells side by side: the shared side is not drawn.
    assert len(mask_edges(np.array([[1, 1]]))) == 6
    assert cells_to_pixels(np.array([[1, 2], [3, 4]]), 4).tolist() == [
        [1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]]
    # 7 cells on 10 pixels: cell i covers pixels [i * 10 / 7, (i + 1) * 10 / 7).
    assert cells_to_pixels(np.arange(7)[None], 10)[0].tolist() == [0, 0, 1, 2, 2, 3, 4, 4, 5, 6]


def test_group_and_top_regions() -> None:
    regions = [(0, 0, 2, 2), (0, 0, 2, 2), (0, 0, 1, 1), (0, 1, 1, 1), (0, 0, 1, 1)]
    weights = [0.5, 0.5, 0.0, 1.0, 0.0]
    groups = group_regions(regions, weights)
    assert [(g.height, g.width, g.regions) for g in groups] == [
        (2, 2, [(0, 0, 0.5, 2)]), (1, 1, [(0, 0, 0.0, 2), (0, 1, 1.0, 1)])]
    # Distinct regions, heaviest first; zero weights are never "top".
    assert top_regions(regions, weights) == [{"region": [0, 1, 1, 1], "weight": 1.0},
                                             {"region": [0, 0, 2, 2], "weight": 0.5}]


# -- attention maps rebuild the pipeline's descriptors ------------------------------------------

@pytest.fixture(scope="module")
def images(small_catalogue) -> torch.Tensor:
    paths = sorted((small_catalogue.parent / "query").glob("*.jpg"))[:2]
    return torch.stack([read_image_tensor(path, 64) for path in paths])


@pytest.fixture(scope="module")
def manet_checkpoint(tmp_path_factory) -> tuple[dict, str]:
    """A MANet checkpoint as ``manet train`` writes it (random weights: the maps' plumbing is
    what is tested, not what training learns)."""
    from manet.plugin_manager import default_registry

    config = MANetConfig(backbone="resnet18", weights="none", num_classes=3)
    path = tmp_path_factory.mktemp("manet") / "last.pt"
    torch.manual_seed(0)
    torch.save({"model": build_manet(config, default_registry()).state_dict()}, path)
    return asdict(config), str(path)


def _rebuilt(pipeline, maps: dict) -> torch.Tensor:
    """The descriptor from the maps alone: Eq. 3, then SR-MAC from the regions and weights."""
    learned = maps["saliency"] if maps["saliency_source"] == LEARNED else None
    x = weight_features(maps["features"], learned, maps["text_mask"])
    if maps["regions"] is None:
        pooled = pipeline.pool(x)
    else:
        pooled = _region_sum(x, maps["regions"], maps["region_weights"])
    return torch.nn.functional.normalize(pooled, dim=1)


@pytest.mark.parametrize(("settings", "source", "text", "regions"), [
    ({"pooling": "srmac"}, "spectral-residual estimate", False, True),
    ({"pooling": "srmac", "saliency": "frequency-tuned", "text_mask": True, "text_detector": "mser"},
     "frequency-tuned estimate", True, True),
    ({"pooling": "mac"}, None, False, False),
    ({"pooling": "srmac", "learned_saliency": True, "text_mask": True, "text_detector": "mser"}, LEARNED, True, True),
    ({"pooling": "gem", "learned_saliency": True}, LEARNED, False, False),
    ({"pooling": "srmac", "learned_saliency": False}, UNIFORM, False, True),
], ids=["srmac", "srmac-text", "mac", "manet", "manet-gem", "manet-saliency-off"])
def test_attention_maps_rebuild_the_descriptor(images, manet_checkpoint, settings, source, text, regions) -> None:
    from manet.plugin_manager import default_registry

    if "learned_saliency" in settings:
        settings = {**settings, "manet": manet_checkpoint[0], "checkpoint": manet_checkpoint[1]}
    pipeline = build_pipeline(PipelineConfig(**TINY, **settings), default_registry())
    with torch.inference_mode():
        maps = pipeline.attention_maps(images)
        descriptors = pipeline(images)
    assert maps["saliency_source"] == source
    assert (maps["saliency"] is not None) == (source is not None)
    assert (maps["text_mask"] is not None) == text
    assert (maps["regions"] is not None) == regions == (maps["region_weights"] is not None)
    size = tuple(maps["features"].shape[-2:])
    for key in ("saliency", "text_mask", "salient"):
        if maps[key] is not None:
            assert tuple(maps[key].shape) == (2, 1, *size)
    if source == UNIFORM:
        assert torch.equal(maps["region_weights"], torch.ones_like(maps["region_weights"]))
    torch.testing.assert_close(_rebuilt(pipeline, maps), descriptors, atol=1e-5, rtol=1e-5)


# -- the CLI -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def state(populated, database_url):
    """One State for the module's invocations, so the pipelines are built once."""
    shared = State(Settings(database_url=database_url, device="cpu"), quiet=True)
    yield shared
    shared.retriever.close()


@pytest.fixture
def run_explain(state):
    group = ManetGroup(commands={"explain": explain})

    def invoke(*args: str):
        return CliRunner().invoke(group, ["explain", *args], obj=state, catch_exceptions=False)

    return invoke


@pytest.fixture(scope="module")
def photo(small_catalogue) -> Path:
    return sorted((small_catalogue.parent / "query").glob("*.jpg"))[0]


def _check_png(path: Path) -> None:
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == PNG_SIZE
        pixels = np.asarray(image.convert("L"), dtype=np.float32)
    assert pixels.std() > 20  # a figure, not a blank page


def test_explain_srmac_model(populated, run_explain, photo, tmp_path) -> None:
    out = tmp_path / "tiny.png"
    result = run_explain(str(photo), "--model", "tiny", "--out", str(out), "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    _check_png(out)
    assert summary["saliency_source"] == "spectral-residual estimate" and summary["text_source"] is None
    assert summary["feature_size"] == [2, 2] and summary["regions"] == 15
    assert summary["png_size"] == list(PNG_SIZE)
    weights = [r["weight"] for r in summary["top_regions"]]
    assert weights and weights == sorted(weights, reverse=True) and all(0 < w <= 1 for w in weights)

    # A text mask for display from a detector the model does not use; plain text output.
    result = run_explain(str(photo), "--model", "tiny", "--out", str(out), "--text-detector", "mser")
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"wrote {out}") and "display only" in result.output
    _check_png(out)


def test_explain_mac_model(populated, run_explain, photo, tmp_path) -> None:
    populated.create_model("tiny-mac", pooling="mac", **TINY)
    out = tmp_path / "mac.png"
    result = run_explain(str(photo), "--model", "tiny-mac", "--out", str(out), "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["regions"] == 0 and summary["top_regions"] == []
    assert summary["saliency_source"] == "not used by this pipeline"
    _check_png(out)


def test_explain_manet_model(populated, run_explain, photo, tmp_path, manet_checkpoint) -> None:
    config, checkpoint = manet_checkpoint
    populated.create_model("tiny-manet", pooling="srmac", manet=config, checkpoint=checkpoint,
                           learned_saliency=True, text_mask=True, text_detector="mser", **TINY)
    out = tmp_path / "manet.png"
    result = run_explain(str(photo), "--model", "tiny-manet", "--out", str(out), "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["saliency_source"] == LEARNED and summary["text_source"] == "text branch (mser)"
    assert summary["regions"] == 15
    _check_png(out)


def test_explain_errors(populated, run_explain, photo, tmp_path) -> None:
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    out = str(tmp_path / "x.png")
    cases = [
        ([str(tmp_path / "missing.jpg"), "--model", "tiny", "--out", out], "missing.jpg"),
        ([str(corrupt), "--model", "tiny", "--out", out], "corrupt.jpg"),
        ([str(photo), "--model", "nope", "--out", out], "model 'nope' does not exist"),
        ([str(photo), "--model", "tiny", "--out", str(tmp_path / "no" / "x.png")], "does not exist"),
        ([str(photo), "--model", "tiny", "--out", out, "--text-detector", "nope"], "nope"),
    ]
    for args, message in cases:
        result = run_explain(*args)
        assert result.exit_code == 1, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], result.output
    assert not Path(out).exists()

    result = run_explain(str(photo), "--model", "tiny", "--out", str(tmp_path / "x.jpg"))
    assert result.exit_code == 2 and "must end in .png" in result.output
