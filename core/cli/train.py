"""``manet train``: MANet or the plain classifier from a training set."""

from __future__ import annotations

import click

from manet import config
from manet.cli.common import (
    JSON_OPTION,
    State,
    _echo_json,
    pass_state,
)
from manet.cli.options import IMAGE_SIZE, LOCAL_PROCESSES, SEED, FiniteFloat
from manet.train.distributed import LR_SCALING_RULES


@click.command()
@click.option("--name", required=True, help="Name of the trained model (a pipeline usable by extract/search/eval).")
@click.option("--backbone", default=config.DEFAULT_BACKBONE, show_default=True)
@click.option("--weights", default="imagenet", show_default=True, help="imagenet | none | PATH.")
@click.option("--epochs", default=10, show_default=True, type=click.IntRange(min=1))
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1),
              help="Images per step and process (under torchrun the global batch is processes x this).")
@click.option("--image-size", default=224, show_default=True, type=IMAGE_SIZE)
@click.option("--no-saliency", is_flag=True, help="No saliency branch (with --no-text: the plain classifier).")
@click.option("--no-text", is_flag=True, help="No text branch.")
@click.option("--saliency-gate", type=click.Choice(config.SALIENCY_GATES), default=config.DEFAULT_SALIENCY_GATE,
              show_default=True,
              help="How the learned saliency S weights the features: X * S (the paper's), X * (1 + S), or "
                   "X * S with only the Dice loss training S (detached).")
@click.option("--saliency-input", type=click.Choice(config.SALIENCY_INPUTS), default=config.DEFAULT_SALIENCY_INPUT,
              show_default=True,
              help="What the saliency branch reads: the backbone's stages detached, so that only the "
                   "classification loss trains the backbone, or shared, so that the Dice loss does too (the "
                   "paper's; 0.01-0.016 MAP@7 lower on Grocery, see docs/RESULTS.md).")
@click.option("--text-scale", type=click.Choice(config.TEXT_SCALES), default=config.DEFAULT_TEXT_SCALE,
              show_default=True,
              help="Eq. 2's text weight: the same / 1.5, so 1 without text; sigmoid(T_m) + 1 (the paper's, "
                   "1.5 without text; trains worse, see docs/RESULTS.md); or 1 + T_m (logit: 1 without "
                   "text, 2 on sure text).")
@click.option("--head", type=click.Choice(config.HEADS), default=config.DEFAULT_HEAD, show_default=True,
              help="The classifier during training: linear, or cosine (normalised softmax: the loss sees "
                   "only the descriptor's direction, which retrieval compares).")
@click.option("--head-init", type=click.Choice(config.HEAD_INITS), default=None,
              help="How the cosine head's class weights start: imprint (each class's mean descriptor under "
                   "the starting network, one pass over the training images) or random.  [default: imprint "
                   "for the cosine head, random for linear]")
@click.option("--saliency-target", default=config.DEFAULT_SALIENCY_ESTIMATOR, show_default=True,
              help="Saliency estimator whose maps are the Dice loss's targets (Eq. 1); "
                   "`manet plugins list` names them.")
@click.option("--lambda", "lambda_dice", type=FiniteFloat(min=0), default=1.0, show_default=True, help="Weight of the Dice loss.")
@click.option("--lr", type=FiniteFloat(min=0, min_open=True), default=1e-3, show_default=True,
              help="Learning rate of the attention branch and head for one process.")
@click.option("--lr-scaling", type=click.Choice(LR_SCALING_RULES), default="sqrt", show_default=True,
              help="Under torchrun with N processes the learning rate is --lr x sqrt(N), x N, or unchanged.")
@click.option("--backbone-lr-scale", type=FiniteFloat(min=0), default=config.DEFAULT_BACKBONE_LR_SCALE, show_default=True,
              help="Backbone learning rate relative to --lr; 0 freezes the backbone.")
@click.option("--frozen-stages", default=1, show_default=True, type=click.IntRange(min=0),
              help="Backbone stages, from the input, kept as pretrained (0: fine-tune all).")
@click.option("--training-set", default="default", show_default=True)
@click.option("--labels", default="category", show_default=True,
              help="Classes to learn: category (the mined categories, the paper's) | sku (each image's product).")
@click.option("--text-detector", default="",
              help="Text detector plugin [default: ppocr when installed; east if MANET_EAST_MODEL is set; else mser].")
@click.option("--workers", "num_workers", type=LOCAL_PROCESSES, default=None)
@click.option("--seed", default=0, show_default=True, type=SEED)
@click.option("--resume", is_flag=True, help="Continue after the last finished epoch.")
@click.option("--device", help="Torch device for this run (overrides MANET_DEVICE / --device of manet).")
@JSON_OPTION
@pass_state
def train(state: State, name: str, backbone: str, weights: str, epochs: int, batch_size: int, image_size: int,
          no_saliency: bool, no_text: bool, saliency_gate: str, saliency_input: str, text_scale: str, head: str,
          head_init: str | None,
          saliency_target: str,
          lambda_dice: float, lr: float, lr_scaling: str,
          backbone_lr_scale: float, frozen_stages: int, training_set: str, labels: str, text_detector: str,
          num_workers: int | None, seed: int, resume: bool, device: str | None, as_json: bool) -> None:
    """Train MANet on the training set (manet dataset build) and store it as a model.

    Data-parallel on N GPUs or CPU processes: torchrun --nproc_per_node N --no-python manet train ...
    (only rank 0 prints and writes; see docs/SCALING.md).
    """
    from manet.train.loop import TrainConfig

    if device:
        state.device = device
    cfg = TrainConfig(name=name, backbone=backbone, weights=weights, image_size=image_size, epochs=epochs,
                      batch_size=batch_size, saliency=not no_saliency, text=not no_text, saliency_gate=saliency_gate,
                      saliency_input=saliency_input, text_scale=text_scale, head=head, head_init=head_init or "",
                      saliency_estimator=saliency_target,
                      lambda_dice=lambda_dice,
                      lr=lr, backbone_lr_scale=backbone_lr_scale, frozen_stages=frozen_stages,
                      training_set=training_set, labels=labels,
                      text_detector=text_detector, seed=seed,
                      num_workers=num_workers, lr_scaling=lr_scaling)
    say = (lambda _m: None) if as_json else click.echo
    report = state.retriever.train(cfg, resume=resume, say=say)
    if as_json and report.rank == 0:
        _echo_json(report.as_dict())
