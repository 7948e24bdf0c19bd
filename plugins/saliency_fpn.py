"""The ``saliency-fpn`` attention branch's network (see :mod:`manet.plugins.attention`).

A module of its own because it imports torch: the plugin module imports it only inside
``build()``, so listing plugins stays cheap. It is not a plugin module (nothing registers here).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from manet.plugins.attention import OUTPUT_STAGE


def _conv3x3(channels: int, stride: int = 1) -> nn.Module:
    return nn.Sequential(nn.Conv2d(channels, channels, 3, stride, 1), nn.ReLU(inplace=True))


def _fit(t: Tensor, like: Tensor, mode: str) -> Tensor:
    # Stage sizes need not halve exactly (odd inputs; VGG's max-pools floor, strided
    # convs ceil), so every merge resizes to the exact size of the map it adds to.
    if t.shape[-2:] == like.shape[-2:]:
        return t
    if mode == "nearest":
        return F.interpolate(t, size=like.shape[-2:], mode="nearest")
    return F.interpolate(t, size=like.shape[-2:], mode=mode, align_corners=False)


class SaliencyFPN(nn.Module):
    """Stage maps (fine to coarse) -> one saliency logit map (B, 1, h, w) at the resolution
    of stage ``OUTPUT_STAGE``; ``stage_channels``: the backbone's channels per stage,
    ``channels``: the width of every level inside the branch."""

    def __init__(self, stage_channels: Sequence[int], channels: int) -> None:
        super().__init__()
        used = list(stage_channels)[OUTPUT_STAGE:]
        self.lateral = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in used)
        # 3x3 after each top-down merge, as in FPN, to smooth the upsampling steps.
        self.smooth = nn.ModuleList(_conv3x3(channels) for _ in used)
        self.down = nn.ModuleList(_conv3x3(channels, stride=2) for _ in used[1:])
        self.head = nn.Sequential(_conv3x3(channels), nn.Conv2d(channels, 1, 1))

    def forward(self, stages: Sequence[Tensor]) -> Tensor:
        maps = list(stages)[OUTPUT_STAGE:]
        if len(maps) != len(self.lateral):
            raise ValueError(
                f"saliency-fpn was built for {len(self.lateral) + OUTPUT_STAGE} stages, "
                f"got {len(stages)}"
            )
        lateral = [conv(m) for conv, m in zip(self.lateral, maps)]
        # Top-down: coarse semantics flow to the finer levels.
        top_down = [lateral[-1]]
        for lat in reversed(lateral[:-1]):
            top_down.insert(0, lat + _fit(top_down[0], lat, "nearest"))
        top_down = [smooth(p) for smooth, p in zip(self.smooth, top_down)]
        # Bottom-up: fine localisation flows back to the coarse levels.
        bottom_up = [top_down[0]]
        for down, p in zip(self.down, top_down[1:]):
            bottom_up.append(p + _fit(down(bottom_up[-1]), p, "bilinear"))
        # Every level contributes to the output map, so the bottom-up path matters.
        fused = torch.stack([_fit(n, bottom_up[0], "bilinear") for n in bottom_up]).sum(0)
        return self.head(fused)
