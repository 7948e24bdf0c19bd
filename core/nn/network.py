"""The MANet model (DESIGN §5): backbone + saliency branch + frozen text branch + classifier.

The backbone and the saliency (attention) branch are plugins; the text detector is a plugin
that runs in the data pipeline, and its soft mask ``T_m`` reaches :meth:`MANet.forward` as a
tensor, so the model never trains it. Switching the saliency or text branch off in
:class:`MANetConfig` replaces its factor in Eq. 3 by 1: ablations run the same code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from manet.config import HEADS, SALIENCY_GATES, SALIENCY_INPUTS, TEXT_SCALES
from manet.errors import PluginError
from manet.nn.attention_math import dice_loss, resize_map, weight_features
from manet.nn.heads import build_head
from manet.plugin_manager import Registry
from manet.settings_json import settings_from_json

#: Head pooling name -> (pooling plugin, its parameters). GeM's p is learnt with the head.
HEAD_POOLINGS: dict[str, tuple[str, dict[str, Any]]] = {
    "gem": ("gem", {"learnable": True}),
    "avg": ("spoc", {}),  # spoc is the spatial mean
}


@dataclass(frozen=True)
class MANetConfig:
    """Everything needed to rebuild a MANet (its weights live in the state dict)."""

    backbone: str = "resnet50"
    weights: str = "imagenet"
    num_classes: int = 44
    saliency: bool = True
    text: bool = True
    attention_branch: str = "saliency-fpn"
    attention_params: dict[str, Any] = field(default_factory=dict)
    head_pooling: str = "gem"
    dropout: float = 0.2
    #: How the learned saliency weights X in Eq. 3 (:data:`manet.config.SALIENCY_GATES`).
    saliency_gate: str = "multiply"
    #: Whether Eq. 1's gradient reaches the backbone (:data:`manet.config.SALIENCY_INPUTS`).
    saliency_input: str = "shared"
    #: The scale of Eq. 2's text weight (:data:`manet.config.TEXT_SCALES`).
    text_scale: str = "paper"
    #: The classifier over the pooled features (:data:`manet.config.HEADS`).
    head: str = "linear"

    def __post_init__(self) -> None:
        choices = (("head pooling", self.head_pooling, tuple(HEAD_POOLINGS)),
                   ("saliency gate", self.saliency_gate, SALIENCY_GATES),
                   ("saliency input", self.saliency_input, SALIENCY_INPUTS),
                   ("text scale", self.text_scale, TEXT_SCALES),
                   ("head", self.head, HEADS))
        for what, value, known in choices:
            if value not in known:
                raise PluginError(f"unknown {what} '{value}'; known: {', '.join(known)}")
        if int(self.num_classes) < 1:
            raise PluginError(f"num_classes must be >= 1, got {self.num_classes}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise PluginError(f"dropout must be in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> "MANetConfig":
        """The config of the JSON object ``data`` (a checkpoint's or a model row's), its types checked."""
        return settings_from_json(cls, data, "MANet")


class MANet(nn.Module):
    """ImageNet-normalised images (B, 3, H, W) -> features, Eq. 3 weighting, class logits.

    Build it with :func:`build_manet`; ``attention`` is None when the saliency branch is off.
    """

    def __init__(self, config: MANetConfig, stages: nn.ModuleList, attention: nn.Module | None,
                 pool: nn.Module, in_features: int) -> None:
        super().__init__()
        self.config = config
        self.stages = stages
        self.attention = attention
        self.pool = pool
        self.dropout = nn.Dropout(float(config.dropout))
        self.classifier = build_head(config.head, in_features, int(config.num_classes))

    def _stage_maps(self, images: Tensor) -> list[Tensor]:
        maps = []
        x = images
        for stage in self.stages:
            x = stage(x)
            maps.append(x)
        return maps

    def _branch_input(self, maps: list[Tensor]) -> list[Tensor]:
        """The stages as the saliency branch reads them (cut from the backbone's graph when detached)."""
        return [m.detach() for m in maps] if self.config.saliency_input == "detached" else maps

    def forward(self, images: Tensor, text_mask: Tensor | None = None) -> dict[str, Tensor | None]:
        """Return ``features`` X (B, C, h, w), ``weighted`` X~ (Eq. 3), ``pooled`` (B, C): what
        the classifier reads, ``saliency_logits`` (B, 1, h', w') or None when the branch is off, and
        ``logits`` (B, num_classes).

        ``text_mask`` is the text detector's T_m (B, 1, h'', w'') in [0, 1], resized to X's
        size. It is required when ``config.text`` is on (a missing mask would silently change
        the feature scale the head was trained on) and ignored when it is off, so the same
        data pipeline feeds every ablation.
        """
        if self.config.text and text_mask is None:
            raise ValueError(
                "this MANet has its text branch on: pass text_mask (B, 1, h, w) from the text "
                "detector, or build it with text=False"
            )
        maps = self._stage_maps(images)
        features = maps[-1]
        saliency_logits = self.attention(self._branch_input(maps)) if self.attention is not None else None
        weighted = self.weight(features, torch.sigmoid(saliency_logits) if saliency_logits is not None else None,
                               text_mask if self.config.text else None)
        pooled = self.pool(weighted)
        logits = self.classifier(self.dropout(pooled))
        return {"features": features, "weighted": weighted, "pooled": pooled,
                "saliency_logits": saliency_logits, "logits": logits}

    def weight(self, features: Tensor, saliency_prob: Tensor | None, text_mask: Tensor | None) -> Tensor:
        """Eq. 3 with this network's saliency gate and text scale (None: that factor is 1); the
        one place training and extraction weight X."""
        return weight_features(features, saliency_prob, text_mask, self.config.saliency_gate, self.config.text_scale)

    def attend(self, images: Tensor) -> tuple[Tensor, Tensor | None]:
        """X (B, C, h, w) and the saliency probability at X's resolution (None when the branch
        is off), without the classifier: what extraction needs."""
        maps = self._stage_maps(images)
        features = maps[-1]
        if self.attention is None:
            return features, None
        return features, resize_map(torch.sigmoid(self.attention(self._branch_input(maps))), features.shape[-2:])

    def saliency_map(self, images: Tensor) -> Tensor:
        """Saliency probability (B, 1, h, w) at the feature map's resolution (for SR-MAC)."""
        if self.attention is None:
            raise ValueError("this MANet has its saliency branch off; it has no saliency map")
        return self.attend(images)[1]


def manet_loss(outputs: dict[str, Tensor | None], labels: Tensor,
               saliency_target: Tensor | None = None, dice_weight: float = 1.0) -> Tensor:
    """Total training loss: cross-entropy over the mined categories + ``dice_weight`` * Eq. 1.

    ``saliency_target`` is the pseudo-saliency mask (B, 1, H, W) already binarised at its mean
    (:func:`manet.nn.attention_math.binarize_at_mean`); the Dice term is skipped when it is None or
    the model's saliency branch is off.
    """
    loss = F.cross_entropy(outputs["logits"], labels)
    saliency_logits = outputs.get("saliency_logits")
    if saliency_logits is not None and saliency_target is not None:
        loss = loss + dice_weight * dice_loss(saliency_logits, saliency_target)
    return loss


def build_manet(config: MANetConfig, registry: Registry) -> MANet:
    """Build a :class:`MANet` for ``config`` (loads the backbone weights), in eval mode.

    Call ``.train()`` before training; the head and the saliency branch start random.
    """
    backbone = registry.create("backbone", config.backbone)
    channels = tuple(backbone.stage_channels)
    if not channels:
        raise PluginError(f"backbone '{config.backbone}' does not provide stages for MANet")
    attention = (
        registry.create("attention_branch", config.attention_branch, **config.attention_params)
        .build(list(channels))
        if config.saliency
        else None
    )
    pool_name, pool_params = HEAD_POOLINGS[config.head_pooling]
    model = MANet(
        config,
        backbone.build_stages(config.weights),
        attention,
        registry.create("pooling", pool_name, **pool_params).module(),
        in_features=channels[-1],
    )
    return model.eval()
