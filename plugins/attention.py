"""Built-in attention branch: MANet's saliency branch over the backbone stages.

``saliency-fpn`` is a top-down path (FPN: lateral 1x1 convs, upsample, add) followed by a
bottom-up path (PANet: strided 3x3 convs, add) and a small head that fuses every level at
the second stage's resolution into one saliency logit map. Its network is in
:mod:`manet.plugins.saliency_fpn`, imported only when a module is built, so listing plugins
stays cheap (no torch).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from manet.errors import PluginError
from manet.hookspecs import Register, hookimpl
from manet.plugin_base import AttentionBranch

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: Index of the stage whose resolution the saliency map has (stride 8 on ResNets); finer
#: stages are not read, which keeps the branch small and fast.
OUTPUT_STAGE = 1


class SaliencyFPNBranch(AttentionBranch):
    name = "saliency-fpn"
    description = (
        "MANet saliency branch: FPN top-down + PANet bottom-up over the backbone stages, "
        "one logit map at stride 8"
    )
    defaults = {"channels": 64}

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        if self.params["channels"] < 1:
            raise PluginError(f"attention branch 'saliency-fpn': channels must be >= 1, "
                              f"got {self.params['channels']}")

    def build(self, stage_channels: Sequence[int]) -> "torch.nn.Module":
        """Return the module ``forward(stages: list of (B, C_i, h_i, w_i)) -> (B, 1, h_1, w_1)``."""
        if len(stage_channels) < OUTPUT_STAGE + 1:
            raise PluginError(
                f"attention branch 'saliency-fpn' needs at least {OUTPUT_STAGE + 1} backbone "
                f"stages, got {len(stage_channels)}"
            )
        from manet.plugins.saliency_fpn import SaliencyFPN  # torch only when a branch is built

        return SaliencyFPN(stage_channels, int(self.params["channels"]))


@hookimpl
def register_attention_branches(register: Register) -> None:
    """Register the built-in attention branches."""
    register(SaliencyFPNBranch)
