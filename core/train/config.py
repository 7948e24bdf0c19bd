"""What a training run is given and what it reports: :class:`TrainConfig` (stored with the
checkpoint and the model row), each epoch's figures and the run's report."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from manet import config as manet_config

#: What the classifier learns to tell apart (TrainConfig.labels).
LABELS = ("category", "sku")


@dataclass
class TrainConfig:
    """Everything a training run needs; stored with the checkpoint and the model row."""

    name: str
    backbone: str = manet_config.DEFAULT_BACKBONE
    weights: str = "imagenet"
    image_size: int = 224
    epochs: int = 10
    batch_size: int = 32
    saliency: bool = True
    text: bool = True
    lambda_dice: float = 1.0
    lr: float = 1e-3
    #: Backbone learning rate relative to ``lr``; 0 freezes the backbone.
    backbone_lr_scale: float = manet_config.DEFAULT_BACKBONE_LR_SCALE
    #: Backbone stages (from the input) kept as pretrained: the early, generic filters. On the
    #: CPU most of a backward pass is spent there (EfficientNet-Lite0 at 224 px: 8.5 img/s
    #: fine-tuning everything, 17 img/s with the first stage frozen).
    frozen_stages: int = 1
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    training_set: str = "default"
    #: Classes of the classifier: the training set's mined ``category`` (the paper's), or each
    #: image's product (``sku``: finer, for catalogues with several images per product).
    labels: str = "category"
    saliency_estimator: str = manet_config.DEFAULT_SALIENCY_ESTIMATOR
    text_detector: str = ""
    attention_branch: str = "saliency-fpn"
    #: How the learned saliency weights X (:data:`manet.config.SALIENCY_GATES`).
    saliency_gate: str = manet_config.DEFAULT_SALIENCY_GATE
    #: Whether Eq. 1's gradient reaches the backbone (:data:`manet.config.SALIENCY_INPUTS`).
    saliency_input: str = manet_config.DEFAULT_SALIENCY_INPUT
    #: The scale of Eq. 2's text weight (:data:`manet.config.TEXT_SCALES`; why this default there).
    text_scale: str = manet_config.DEFAULT_TEXT_SCALE
    #: The classifier over the pooled features (:data:`manet.config.HEADS`).
    head: str = manet_config.DEFAULT_HEAD
    #: How the cosine head's weights start (:data:`manet.config.HEAD_INITS`); empty: the head's
    #: default (:data:`manet.config.DEFAULT_HEAD_INITS`), recorded when the run starts.
    head_init: str = ""
    seed: int = 0
    num_workers: int | None = None
    #: How the learning rate grows with the global batch (processes x batch_size): sqrt | linear | none.
    lr_scaling: str = "sqrt"
    #: Processes of the run (set by :func:`train` from torchrun); the global batch is world_size x batch_size.
    world_size: int = 1
    #: Folder for checkpoints; empty = $MANET_HOME/checkpoints.
    checkpoint_root: str = ""

    def manet_config(self, num_classes: int) -> dict[str, Any]:
        return {"backbone": self.backbone, "weights": self.weights, "num_classes": num_classes,
                "saliency": self.saliency, "text": self.text, "attention_branch": self.attention_branch,
                "saliency_gate": self.saliency_gate, "saliency_input": self.saliency_input,
                "text_scale": self.text_scale, "head": self.head}


@dataclass
class EpochMetrics:
    epoch: int
    loss: float
    ce: float
    dice: float
    train_accuracy: float
    val_accuracy: float
    val_map7: float
    seconds: float


@dataclass
class TrainReport:
    name: str
    device: str
    checkpoint: str
    epochs: list[EpochMetrics] = field(default_factory=list)
    resumed_from: int = 0
    world_size: int = 1
    global_batch_size: int = 0
    learning_rate: float = 0.0
    #: SHA-256 of each rank's final weights (rank order): all equal in a healthy run.
    parameter_checksums: list[str] = field(default_factory=list)
    #: This process's rank (only rank 0 prints the report).
    rank: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "device": self.device, "checkpoint": self.checkpoint,
                "resumed_from": self.resumed_from, "world_size": self.world_size,
                "global_batch_size": self.global_batch_size, "learning_rate": self.learning_rate,
                "parameter_checksums": self.parameter_checksums, "epochs": [asdict(e) for e in self.epochs]}
