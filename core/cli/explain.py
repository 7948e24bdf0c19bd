"""``manet explain IMAGE --model NAME --out FILE.png``: what a model's retrieval saw in an image.

``manet.cli.main`` registers the command with ``cli.add_command(explain)``.
"""

from __future__ import annotations

from pathlib import Path

import click

from manet.cli.common import JSON_OPTION, State, _echo_json, pass_state


def _png(ctx: click.Context, param: click.Parameter, value: Path) -> Path:
    if value.suffix.lower() != ".png":
        raise click.BadParameter(f"{value} must end in .png (the figure is a PNG)")
    return value


@click.command()
@click.argument("image", type=click.Path(path_type=Path))
@click.option("--model", required=True, help="The model whose descriptor to explain.")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path), callback=_png,
              help="PNG file to write.")
@click.option("--text-detector", default=None,
              help="Show this text detector's mask when the model has no text branch (e.g. mser).")
@JSON_OPTION
@pass_state
def explain(state: State, image: Path, model: str, out: Path, text_detector: str | None, as_json: bool) -> None:
    """Draw IMAGE with the saliency, text mask and SR-MAC region weights MODEL used for it."""
    from manet.tools.explain import explain_image

    summary = explain_image(state.retriever, model, image, out, text_detector=text_detector)
    if as_json:
        _echo_json(summary)
        return
    top = ", ".join(f"{r['weight']:.2f}" for r in summary["top_regions"]) or "-"
    click.echo(f"wrote {summary['out']}: saliency {summary['saliency_source']}; "
               f"text {summary['text_source'] or 'none'}; {summary['regions']} regions (top weights {top})")
