"""``manet explain``: a figure of what a model's descriptor of one image is made from.

The image is read exactly as a query is (:func:`manet.catalog.images.read_image_tensor`, the model's
input size) and goes through the model's own pipeline (:meth:`DescriptorPipeline.attention_maps`),
so the saliency, text mask and SR-MAC region weights drawn are the ones the descriptor used.
matplotlib is driven through its object API (``Figure`` + the Agg canvas), never pyplot's
global state, so it works headless and in threads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from manet.errors import ManetError
from manet.nn.regions import Region
from manet.safe_files import refuse_special_output

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

#: Figure size in inches and resolution: the PNG is FIGURE_INCHES * DPI pixels.
FIGURE_INCHES = (12.0, 12.0)
DPI = 100
#: Regions highlighted (and listed in the summary) as the heaviest.
TOP_REGIONS = 3
SALIENCY_CMAP = "inferno"
TEXT_CMAP = "viridis"
WEIGHT_CMAP = "plasma"
NO_SALIENCY = "not used by this pipeline"


@dataclass(frozen=True)
class RegionGroup:
    """Regions of one size (a pyramid level; the global region merges with an equal level)."""

    height: int
    width: int
    #: (top, left, weight, copies): ``copies`` > 1 when the same region appears several times.
    regions: list[tuple[int, int, float, int]]


def group_regions(regions: list[Region], weights: npt.ArrayLike) -> list[RegionGroup]:
    """Group ``regions`` by size, largest first, merging identical regions (the global one and
    level 1 of a square map): their weights are equal, and the pooling counts each copy."""
    weights = np.asarray(weights, dtype=np.float64)
    merged: dict[Region, list[float]] = {}
    for region, weight in zip(regions, weights.tolist()):
        merged.setdefault(tuple(region), []).append(weight)
    sizes = sorted({(h, w) for _t, _l, h, w in merged}, key=lambda s: (-s[0] * s[1], -s[0]))
    return [
        RegionGroup(h, w, [(t, l, ws[0], len(ws)) for (t, l, rh, rw), ws in merged.items() if (rh, rw) == (h, w)])
        for h, w in sizes
    ]


def top_regions(regions: list[Region], weights: npt.ArrayLike, k: int = TOP_REGIONS) -> list[dict[str, Any]]:
    """The ``k`` heaviest distinct regions with a weight above 0, heaviest first (ties: pooling order)."""
    seen: dict[Region, float] = {}
    for region, weight in zip(regions, np.asarray(weights, dtype=np.float64).tolist()):
        seen.setdefault(tuple(region), weight)
    ranked = sorted(((r, w) for r, w in seen.items() if w > 0), key=lambda item: -item[1])[:k]
    return [{"region": list(region), "weight": round(weight, 4)} for region, weight in ranked]


def cells_to_pixels(cells: npt.NDArray[Any], size: int) -> npt.NDArray[Any]:
    """A (h, w) cell map at ``size`` x ``size`` pixels, each cell a block (nearest): how
    bilinear resizing with ``align_corners=False`` places cells on the input image."""
    rows = np.arange(size) * cells.shape[0] // size
    cols = np.arange(size) * cells.shape[1] // size
    return cells[rows][:, cols]


def mask_edges(mask: npt.NDArray[Any]) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """The border of the set cells of a (h, w) mask as unit segments ((x0, y0), (x1, y1)) on
    the cell grid (x = column, y = row, corners at integers), the map's own border included."""
    padded = np.pad(np.asarray(mask, dtype=bool), 1)
    edges = []
    for row, col in zip(*np.nonzero(padded[1:-1, 1:-1])):
        r, c = row + 1, col + 1  # in padded coordinates; the cell spans x in [col, col+1]
        if not padded[r - 1, c]:
            edges.append(((col, row), (col + 1, row)))
        if not padded[r + 1, c]:
            edges.append(((col, row + 1), (col + 1, row + 1)))
        if not padded[r, c - 1]:
            edges.append(((col, row), (col, row + 1)))
        if not padded[r, c + 1]:
            edges.append(((col + 1, row), (col + 1, row + 1)))
    return [((int(a), int(b)), (int(c), int(d))) for (a, b), (c, d) in edges]


def _map(value: Any) -> npt.NDArray[np.float32] | None:
    """Image 0 of a (B, 1, h, w) tensor as a float32 (h, w) array; None stays None."""
    return None if value is None else value[0, 0].detach().float().cpu().numpy()


def _check_out(out_path: Path) -> None:
    if out_path.suffix.lower() != ".png":
        raise ManetError(f"output {out_path} must be a .png file; pass --out NAME.png")
    if not out_path.parent.is_dir():
        raise ManetError(f"output folder {out_path.parent} does not exist; create it or pass another --out")
    refuse_special_output(out_path, "output", "pass another --out")


def explain_image(retriever: Any, model: str, image_path: str | Path, out_path: str | Path, *,
                  text_detector: str | None = None) -> dict[str, Any]:
    """Write a PNG of what ``model`` saw in ``image_path`` and return a summary of it.

    Panels: the input, its saliency, its text mask and the SR-MAC regions with their weights.
    ``text_detector`` names a text detector run for display when the model has no text branch
    (a model with one always shows its own mask).
    """
    from manet.catalog.images import inspect_image, read_image_tensor
    from manet.extract.forward import forward_pass

    image_path, out_path = Path(image_path), Path(out_path)
    _check_out(out_path)
    record = retriever.model(model)
    size = int(record.config.image_size)
    info = inspect_image(image_path, limits=retriever.limits)
    image = read_image_tensor(image_path, size, limits=retriever.limits)
    pipeline = retriever.pipeline(model)
    device = retriever.device
    batch = image.unsqueeze(0).to(device)
    with forward_pass(device, retriever.precision):  # the same forward pass as `manet search IMAGE`
        maps = pipeline.attention_maps(batch)
        feature_size = tuple(int(v) for v in maps["features"].shape[-2:])
        text, text_source = _text_mask(retriever, pipeline, maps, batch, feature_size, text_detector)
    view = {
        "image": image.permute(1, 2, 0).numpy(),
        "saliency": _map(maps["saliency"]),
        "saliency_source": maps["saliency_source"] or NO_SALIENCY,
        "salient": _map(maps["salient"]),
        "text": text,
        "text_source": text_source,
        "regions": maps["regions"],
        "weights": None if maps["region_weights"] is None else maps["region_weights"][0].cpu().numpy(),
    }
    config = record.config
    weights = "trained MANet" if config.manet else f"weights {config.weights}"
    title = (f"{record.name}: backbone {config.backbone} ({weights}), "
             f"pooling {config.pooling}\ninput {size}x{size} px (image {info.width}x{info.height}), "
             f"features {feature_size[0]}x{feature_size[1]} cells")
    figure = render_figure(view, title, pooling=config.pooling)
    _save(figure, out_path)
    regions = maps["regions"] or []
    return {
        "model": record.name, "image": str(image_path), "out": str(out_path),
        "backbone": config.backbone, "pooling": config.pooling, "image_size": size,
        "feature_size": list(feature_size), "saliency_source": view["saliency_source"],
        "text_source": text_source, "regions": len(regions),
        "top_regions": top_regions(regions, view["weights"]) if regions else [],
        "png_size": [int(FIGURE_INCHES[0] * DPI), int(FIGURE_INCHES[1] * DPI)],
    }


def _text_mask(retriever: Any, pipeline: Any, maps: dict[str, Any], batch: Any, size: tuple[int, int],
               name: str | None) -> tuple[npt.NDArray[np.float32] | None, str | None]:
    """The model's text mask and where it comes from; else ``name``'s mask, for display only."""
    if maps["text_mask"] is not None:
        return _map(maps["text_mask"]), f"text branch ({pipeline.text.name})"
    if not name:
        return None, None
    from manet.plugins.text_detectors import create_text_detector

    detector = create_text_detector(retriever.registry, name, retriever.settings.east_model)
    mask = detector.detect(batch.float() / 255.0, size)
    return _map(mask), f"{name}, display only: the model has no text branch"


def _save(figure: Figure, out_path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    try:
        with out_path.open("wb") as handle:
            canvas.print_png(handle)
    except OSError as exc:
        raise ManetError(f"cannot write {out_path}: {exc.strerror or exc}; pass another --out") from None


# -- drawing ---------------------------------------------------------------------------------

def render_figure(view: dict[str, Any], title: str, *, pooling: str) -> Figure:
    """The 2 x 2 figure: input, saliency, text mask, SR-MAC regions (see :func:`explain_image`)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=FIGURE_INCHES, dpi=DPI, layout="constrained")
    figure.suptitle(title, fontsize=13)
    (input_panel, saliency_panel), (text_panel, region_panel) = figure.subfigures(2, 2)
    image = view["image"]
    size = image.shape[0]

    ax = input_panel.add_subplot()
    _show(ax, image)
    ax.set_title("(a) input, as the model sees it")

    ax = saliency_panel.add_subplot()
    if view["saliency"] is None:
        _note(ax, image, f"no saliency map: pooling '{pooling}' takes none\nand the model has no learned one")
        ax.set_title("(b) saliency")
    else:
        _overlay(saliency_panel, ax, image, view["saliency"], SALIENCY_CMAP, "saliency")
        caption = ""
        if view["salient"] is not None:
            _outline(ax, view["salient"], size, "white")
            caption = "\nwhite line: the above-mean cells S that weight the regions"
        ax.set_title(f"(b) saliency: {view['saliency_source']}{caption}")

    ax = text_panel.add_subplot()
    if view["text"] is None:
        _note(ax, image, "no text branch in this model\n(--text-detector NAME shows a mask anyway)")
        ax.set_title("(c) text mask")
    else:
        _overlay(text_panel, ax, image, view["text"], TEXT_CMAP, "text mask $T_m$")
        ax.set_title("(c) text mask: " + view["text_source"].replace(", ", "\n", 1))

    if view["regions"] is None:
        ax = region_panel.add_subplot()
        _note(ax, image, f"pooling '{pooling}' has no SR-MAC regions:\nno saliency-weighted regions to draw")
        ax.set_title("(d) regions")
    else:
        _draw_regions(region_panel, view, size)
    return figure


def _overlay(panel: Any, ax: Axes, image: npt.NDArray[np.uint8], cells: npt.NDArray[Any], cmap: str,
             label: str) -> None:
    """``image`` with the (h, w) map ``cells`` in [0, 1] over it, cell by cell, and a colour bar."""
    size = image.shape[0]
    _show(ax, image)
    shown = ax.imshow(cells_to_pixels(cells, size), cmap=cmap, vmin=0.0, vmax=1.0, alpha=0.6,
                      extent=(0, size, size, 0), interpolation="nearest")
    panel.colorbar(shown, ax=ax, shrink=0.8, label=label)


def _show(ax: Axes, image: npt.NDArray[np.uint8], dim: float = 1.0) -> None:
    shown = image if dim == 1.0 else (image.astype(np.float32) * dim).astype(np.uint8)
    ax.imshow(shown, extent=(0, image.shape[1], image.shape[0], 0), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def _note(ax: Axes, image: npt.NDArray[np.uint8], text: str) -> None:
    """The dimmed image with ``text`` across it: a panel with nothing to draw."""
    _show(ax, image, dim=0.35)
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="white", fontsize=12,
            bbox={"boxstyle": "round,pad=0.5", "facecolor": "black", "alpha": 0.6, "edgecolor": "none"})


def _outline(ax: Axes, cells: npt.NDArray[Any], size: int, colour: str) -> None:
    """Draw the border of the set cells of ``cells`` (h, w) along the cell edges."""
    from matplotlib.collections import LineCollection

    scale = np.array([size / cells.shape[1], size / cells.shape[0]])
    segments = [np.array(edge, dtype=np.float64) * scale for edge in mask_edges(cells > 0.5)]
    ax.add_collection(LineCollection(segments, colors=colour, linewidths=2.0))


def _draw_regions(panel: Any, view: dict[str, Any], size: int) -> None:
    """One small image per region size with the regions on it, and a bar chart of the weights."""
    from matplotlib import colormaps
    from matplotlib.patches import Rectangle

    regions, weights, salient = view["regions"], view["weights"], view["salient"]
    groups = group_regions(regions, weights)
    top = [tuple(r["region"]) for r in top_regions(regions, weights)]
    cmap = colormaps[WEIGHT_CMAP]
    scale_y, scale_x = size / salient.shape[0], size / salient.shape[1]
    # Darken the cells outside S: a region's weight is the share of its cells inside S.
    shaded = (view["image"] * np.where(cells_to_pixels(salient > 0.5, size)[..., None], 1.0, 0.4)).astype(np.uint8)
    columns = 2
    axes = panel.subplots((len(groups) + columns) // columns, columns, squeeze=False).ravel()
    for ax, group in zip(axes, groups):
        _show(ax, shaded)
        for top_cell, left_cell, weight, copies in group.regions:
            best = (top_cell, left_cell, group.height, group.width) in top
            x, y = left_cell * scale_x, top_cell * scale_y
            w, h = group.width * scale_x, group.height * scale_y
            inset = 0.015 * size  # regions of one size touch or overlap: keep their borders apart
            ax.add_patch(Rectangle((x + inset, y + inset), w - 2 * inset, h - 2 * inset, fill=False,
                                   edgecolor=cmap(weight), alpha=0.35 + 0.65 * weight,
                                   linewidth=1.0 + 2.5 * weight + (1.5 if best else 0.0)))
            label = f"{weight:.2f}" + (f" x{copies}" if copies > 1 else "")
            ax.text(x + w / 2, y + h / 2, label, ha="center", va="center", fontsize=9,
                    fontweight="bold" if best else "normal", color=_ink(cmap(weight)) if best else "black",
                    bbox={"boxstyle": "round,pad=0.2", "facecolor": cmap(weight) if best else "white",
                          "alpha": 0.9, "edgecolor": "black" if best else "none"})
        copies = sum(c for *_, c in group.regions)
        counted = f", {copies} in the sum" if copies != len(group.regions) else ""
        ax.set_title(f"{len(group.regions)} region(s) of {group.height}x{group.width} cells{counted}", fontsize=9)
    _weight_bars(axes[len(groups)], regions, weights, top, cmap)
    for ax in axes[len(groups) + 1:]:
        ax.set_axis_off()
    panel.suptitle(f"(d) SR-MAC regions; weight = share of the region in S; top {TOP_REGIONS} in bold")


def _ink(background: tuple[float, float, float, float]) -> str:
    """Black or white text, whichever reads better on ``background`` (Rec. 601 luma)."""
    red, green, blue = background[:3]
    return "black" if 0.299 * red + 0.587 * green + 0.114 * blue > 0.5 else "white"


def _weight_bars(ax: Axes, regions: list[Region], weights: npt.NDArray[Any], top: list[Region],
                 cmap: Any) -> None:
    """Every region's weight, in pooling order (global first)."""
    values = np.asarray(weights, dtype=np.float64)
    positions = np.arange(len(values))
    ax.barh(positions, values, color=[cmap(v) for v in values],
            edgecolor=["black" if tuple(r) in top else "none" for r in regions])
    ax.set_yticks(positions, [f"{h}x{w} @{t},{l}" for t, l, h, w in regions], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("SR-MAC weight", fontsize=9)
    ax.set_ylabel("size @ top,left (cells)", fontsize=8)
    ax.tick_params(axis="x", labelsize=8)
    ax.set_title("all regions (global first)", fontsize=9)
