"""Built-in poolings plugins: thin wrappers around :mod:`manet.nn.pooling`.

torch is imported only when a module is built, so listing plugins stays cheap.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from manet.errors import PluginError
from manet.hookspecs import Register, hookimpl
from manet.plugin_base import Pooling

if TYPE_CHECKING:  # pragma: no cover
    import torch

_REGION_DEFAULTS = {"levels": 3, "overlap": 0.4}


class _FunctionPooling(Pooling):
    """A pooling plugin whose module calls ``manet.nn.pooling.<function>`` with its params."""

    #: Name of the pure function in :mod:`manet.nn.pooling`.
    function: ClassVar[str] = ""
    #: Name of the function in :mod:`manet.nn.pooling` giving the regions and weights of a
    #: saliency-weighted region pooling (SR-MAC), which attention maps show; "" for none.
    region_weights: ClassVar[str] = ""

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        if self.params.get("levels", 1) < 1:
            raise PluginError(f"pooling '{self.name}': levels must be >= 1")
        if not 0.0 < self.params.get("overlap", 0.5) < 1.0:
            raise PluginError(f"pooling '{self.name}': overlap must be in (0, 1)")

    def _function(self) -> Callable[..., "torch.Tensor"]:
        from manet.nn import pooling

        return getattr(pooling, self.function)

    def module(self) -> "torch.nn.Module":
        from manet.nn import pooling

        region_weights = getattr(pooling, self.region_weights) if self.region_weights else None
        return pooling.PoolingModule(self.name, self._function(), dict(self.params), self.uses_saliency,
                                     region_weights=region_weights)


class MAC(_FunctionPooling):
    name = "mac"
    description = "Global max pooling (MAC)."
    function = "mac"


class SPoC(_FunctionPooling):
    name = "spoc"
    description = "Sum pooling (SPoC), computed as the spatial mean."
    function = "spoc"


class GeM(_FunctionPooling):
    name = "gem"
    description = "Generalized-mean pooling (GeM) with fixed or learnable exponent p."
    function = "gem"
    defaults = {"p": 3.0, "learnable": False}

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        if self.params["p"] <= 0:
            raise PluginError(f"pooling 'gem': p must be > 0, got {self.params['p']}")

    def module(self) -> "torch.nn.Module":
        from manet.nn.pooling import PoolingModule

        learnable = ("p",) if self.params["learnable"] else ()
        return PoolingModule(self.name, self._function(), {"p": self.params["p"]},
                             learnable=learnable)


class RMAC(_FunctionPooling):
    name = "rmac"
    description = "Regional MAC (R-MAC): sum of L2-normalised region maxima."
    function = "rmac"
    defaults = _REGION_DEFAULTS


class RAMAC(_FunctionPooling):
    name = "ramac"
    description = "R-MAC with regions weighted by their share of above-mean activations (RA-MAC)."
    function = "ramac"
    defaults = _REGION_DEFAULTS


class AMAC(_FunctionPooling):
    name = "amac"
    description = "MAC over the above-mean activation mask (AMAC)."
    function = "amac"


class SRMAC(_FunctionPooling):
    name = "srmac"
    description = "Saliency-weighted R-MAC (SR-MAC, MANet Eq. 4-7); needs a saliency map."
    function = "srmac"
    region_weights = "srmac_weights"
    defaults = _REGION_DEFAULTS
    uses_saliency = True


POOLINGS: tuple[type[Pooling], ...] = (MAC, SPoC, GeM, RMAC, RAMAC, AMAC, SRMAC)


@hookimpl
def register_poolings(register: Register) -> None:
    """Register the built-in poolings."""
    for cls in POOLINGS:
        register(cls)
