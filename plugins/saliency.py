"""Built-in saliency plugins: training-free pseudo-saliency estimators, batched in torch.

Both map RGB images (B, 3, H, W) in [0, 1] on any device to (B, 1, H, W) in [0, 1].
torch is imported inside the functions so that listing plugins stays cheap.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from manet.errors import PluginError
from manet.hookspecs import Register, hookimpl
from manet.plugin_base import SaliencyEstimator

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor

#: ITU-R BT.601 luma weights.
_LUMA = (0.299, 0.587, 0.114)
#: sRGB (linear) -> CIE XYZ, D65 white.
_RGB_TO_XYZ = (
    (0.4124564, 0.3575761, 0.1804375),
    (0.2126729, 0.7151522, 0.0721750),
    (0.0193339, 0.1191920, 0.9503041),
)
_D65_WHITE = (0.95047, 1.0, 1.08883)
#: Spectral residual: amplitude floor as a fraction of the mean amplitude.
_AMPLITUDE_FLOOR = 1e-2


def _check_images(images: "Tensor") -> None:
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected RGB images (B, 3, H, W), got {tuple(images.shape)}")


def _gaussian_blur(x: "Tensor", sigma: float) -> "Tensor":
    """Separable Gaussian blur of (B, C, h, w), kernel radius ceil(3 sigma).

    Replicate padding (unlike torchvision's reflect) works for maps smaller than the kernel.
    """
    import torch
    import torch.nn.functional as F

    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    channels = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    return F.conv2d(x, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)


def _min_max(x: "Tensor") -> "Tensor":
    """Scale each image of (B, 1, h, w) to [0, 1]; a constant map becomes 0."""
    low = x.amin(dim=(2, 3), keepdim=True)
    span = x.amax(dim=(2, 3), keepdim=True) - low
    return (x - low) / span.clamp_min(1e-12)


def _rgb_to_lab(rgb: "Tensor") -> "Tensor":
    """sRGB (B, 3, h, w) in [0, 1] -> CIE L*a*b* (D65), the standard formulas."""
    import torch

    linear = torch.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    matrix = torch.tensor(_RGB_TO_XYZ, device=rgb.device, dtype=rgb.dtype)
    white = torch.tensor(_D65_WHITE, device=rgb.device, dtype=rgb.dtype).view(1, 3, 1, 1)
    xyz = torch.einsum("ij,bjhw->bihw", matrix, linear) / white
    delta = 6.0 / 29.0
    f = torch.where(xyz > delta**3, xyz.clamp_min(delta**3) ** (1.0 / 3.0),
                    xyz / (3 * delta**2) + 4.0 / 29.0)
    fx, fy, fz = f[:, 0:1], f[:, 1:2], f[:, 2:3]
    return torch.cat([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], dim=1)


class _PositiveParams(SaliencyEstimator):
    """Rejects non-positive numeric parameters with a PluginError."""

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        for key, value in self.params.items():
            if value <= 0:
                raise PluginError(f"saliency estimator '{self.name}': {key} must be > 0")


class SpectralResidual(_PositiveParams):
    """Hou & Zhang (CVPR 2007): saliency from the residual of the log amplitude spectrum."""

    name = "spectral-residual"
    description = "Spectral residual saliency (Hou & Zhang 2007); training-free, the default."
    defaults = {"size": 64, "sigma": 2.5}

    def estimate(self, images: "Tensor") -> "Tensor":
        import torch
        import torch.nn.functional as F

        _check_images(images)
        height, width = images.shape[2:]
        with torch.no_grad():
            rgb = images.to(torch.float32)
            luma = torch.tensor(_LUMA, device=rgb.device).view(1, 3, 1, 1)
            gray = (rgb * luma).sum(dim=1, keepdim=True)
            # The method is defined at a fixed small scale (~64 px wide), where the
            # residual picks out object-sized structure rather than texture.
            size = (max(1, round(height * self.params["size"] / width)), self.params["size"])
            gray = F.interpolate(gray, size=size, mode="bilinear", align_corners=False,
                                 antialias=True)
            spectrum = torch.fft.fft2(gray)
            amplitude = spectrum.abs()
            # Floor the amplitude relative to its mean: flat synthetic or clipped-white
            # backgrounds give exact spectral zeros whose log (-> -inf) would dominate the
            # residual with a periodic artefact; natural spectra stay well above the floor.
            floor = _AMPLITUDE_FLOOR * amplitude.mean(dim=(2, 3), keepdim=True)
            log_amplitude = torch.log(torch.maximum(amplitude, floor).clamp_min(1e-12))
            smoothed = F.avg_pool2d(F.pad(log_amplitude, (1, 1, 1, 1), mode="replicate"), 3, 1)
            residual = torch.polar(torch.exp(log_amplitude - smoothed), spectrum.angle())
            saliency = torch.fft.ifft2(residual).abs() ** 2
            saliency = _min_max(_gaussian_blur(saliency, self.params["sigma"]))
            saliency = F.interpolate(saliency, size=(height, width), mode="bilinear",
                                     align_corners=False)
        return saliency.clamp(0.0, 1.0).to(images.dtype)


class FrequencyTuned(_PositiveParams):
    """Achanta et al. (CVPR 2009): distance of each blurred pixel from the mean colour."""

    name = "frequency-tuned"
    description = "Frequency-tuned saliency (Achanta et al. 2009) in CIE Lab; training-free."
    defaults = {"sigma": 1.0}

    def estimate(self, images: "Tensor") -> "Tensor":
        import torch

        _check_images(images)
        with torch.no_grad():
            lab = _rgb_to_lab(images.to(torch.float32).clamp(0.0, 1.0))
            mean = lab.mean(dim=(2, 3), keepdim=True)
            # sigma 1 approximates the paper's 5x5 binomial kernel.
            blurred = _gaussian_blur(lab, self.params["sigma"])
            saliency = _min_max((blurred - mean).norm(dim=1, keepdim=True))
        return saliency.to(images.dtype)


SALIENCY_ESTIMATORS: tuple[type[SaliencyEstimator], ...] = (SpectralResidual, FrequencyTuned)


@hookimpl
def register_saliency_estimators(register: Register) -> None:
    """Register the built-in saliency estimators."""
    for cls in SALIENCY_ESTIMATORS:
        register(cls)
