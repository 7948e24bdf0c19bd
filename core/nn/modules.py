"""The torch modules of a descriptor pipeline, built by :func:`manet.nn.pipeline.build_pipeline`.

They live apart from :mod:`manet.nn.pipeline` because they subclass ``torch.nn.Module`` and so
import torch: :mod:`manet.nn.pipeline` (read by models, the CLI, plugin listings) imports this
module only when a pipeline is built, and stays cheap to import. Being module-level classes
(not classes made inside ``build_pipeline``), they can be imported, typed and pickled; what
they once captured from the builder's locals is passed to their constructors.
"""

from __future__ import annotations

from typing import Any

import torch

from manet.nn.attention_math import weight_features
from manet.nn.pipeline import LEARNED, UNIFORM, Attention
from manet.nn.pooling import salient_cells
from manet.nn.whitening import whiten


class Plain(torch.nn.Module):
    """An untrained backbone as a pipeline network: images -> (X, no learned saliency)."""

    def __init__(self, backbone: torch.nn.Module) -> None:
        super().__init__()
        self.features = backbone

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.features(images), None

    def weight(self, features: torch.Tensor, saliency_prob: torch.Tensor | None,
               text_mask: torch.Tensor | None) -> torch.Tensor:
        """Eq. 3 as the paper writes it (an untrained network was trained with no variant)."""
        return weight_features(features, saliency_prob, text_mask)


class Trained(torch.nn.Module):
    """A trained MANet as a pipeline network: images -> (X, learned saliency or None)."""

    def __init__(self, manet: torch.nn.Module) -> None:
        super().__init__()
        self.manet = manet

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.manet.attend(images)

    def weight(self, features: torch.Tensor, saliency_prob: torch.Tensor | None,
               text_mask: torch.Tensor | None) -> torch.Tensor:
        """Eq. 3 as the MANet was trained with it (:meth:`manet.nn.network.MANet.weight`)."""
        return self.manet.weight(features, saliency_prob, text_mask)


class DescriptorPipeline(torch.nn.Module):
    """uint8 images (B, 3, S, S) -> L2-normalised descriptors (B, D), all on one device.

    X from the backbone (or a trained MANet); Eq. 3 weighting by the learned saliency and
    the text mask when the pipeline uses them; SR-MAC region weights from the learned
    saliency, else from the saliency estimator.

    ``backbone`` is the backbone plugin (its input normalisation); ``network`` a :class:`Plain`
    or :class:`Trained`; ``pool`` the pooling plugin's module; ``estimator`` the saliency
    estimator plugin or None (pseudo-saliency serves untrained pipelines; a trained one uses
    its learned saliency, or uniform region weights when that branch is switched off);
    ``text`` the text detector plugin or None; ``projection`` a
    :class:`manet.nn.whitening.Projection` or None; ``learned_saliency`` whether Eq. 3 and the
    pooling use the learned map; ``saliency_name`` the estimator's name (for
    ``saliency_source``). The network weights X (Eq. 3) as it was trained to.
    """

    def __init__(self, backbone: Any, network: torch.nn.Module, pool: torch.nn.Module, *,
                 uses_saliency: bool, estimator: Any = None, text: Any = None, projection: Any = None,
                 learned_saliency: bool = False, saliency_name: str = "") -> None:
        super().__init__()
        self.dim = int(backbone.out_channels)
        self.backbone = backbone
        self.network = network
        self.pool = pool
        self.uses_saliency = uses_saliency
        self.estimator = estimator
        self.text = text
        self.learned_saliency = learned_saliency
        self.saliency_name = saliency_name
        self.whitened = projection is not None
        if projection is not None:
            self.dim = projection.output_dim
            self.register_buffer("whiten_mean", torch.from_numpy(projection.mean), persistent=False)
            self.register_buffer("whiten_matrix", torch.from_numpy(projection.matrix), persistent=False)

    def _network_maps(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Images in [0, 1], then X and the learned saliency (or None) in float32."""
        unit = images.float().div_(255.0)
        features, learned = self.network(self.backbone.normalise(unit))  # bf16 under autocast
        return unit, features.float(), learned.float() if learned is not None else None

    def forward(self, images: torch.Tensor, text_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``text_mask``: T_m (B, 1, h, w) computed already (training caches it per image);
        None runs the pipeline's text detector when it uses one."""
        unit, features, learned = self._network_maps(images)
        # Everything after the network in float32: the saliency estimate and masks are
        # thresholded at their mean, and a bf16 map flips pixels near it (measured: one
        # SR-MAC descriptor in 30 moved to cosine 0.91); whitening divides by small variances.
        with torch.autocast(unit.device.type, enabled=False):
            return self._describe(unit, features, learned, text_mask)

    def attention_maps(self, images: torch.Tensor) -> dict[str, Any]:
        """What the descriptor of uint8 images (B, 3, S, S) is made from, at X's size, float32.

        ``features`` X (B, C, h, w) before Eq. 3; ``saliency`` (B, 1, h, w): the learned map
        (Eq. 3 and SR-MAC), the estimator's (SR-MAC only) or ones (SR-MAC with the branch
        off), None when the pipeline uses none, named by ``saliency_source``; ``text_mask``
        T_m or None; with SR-MAC, its ``regions`` ((top, left, height, width) cells, the
        global one first), their ``region_weights`` (B, R) and the salient cells S
        (``salient``, bool), else None.
        """
        unit, features, learned = self._network_maps(images)
        with torch.autocast(unit.device.type, enabled=False):
            seen = self._attention(unit, features, learned)
            regions = weights = salient = None
            # A pooling with saliency-weighted regions (SR-MAC) declares the function of its
            # weights; the maps then show the pooling's own weights, computed the same way.
            region_weights = getattr(self.pool, "region_weights", None)
            if region_weights is not None:
                height, width = features.shape[-2:]
                regions, weights = region_weights(seen.pool_saliency, height, width, **self.pool.fixed)
                salient = salient_cells(seen.pool_saliency, (height, width))
        return {"features": features, "saliency": seen.saliency, "saliency_source": seen.source,
                "text_mask": seen.text, "regions": regions, "region_weights": weights, "salient": salient}

    def _attention(self, unit: torch.Tensor, features: torch.Tensor,
                   learned: torch.Tensor | None, text: torch.Tensor | None = None) -> Attention:
        """The maps that weight X (Eq. 3) and the saliency that the pooling gets."""
        learned = learned if self.learned_saliency else None
        if self.text is None:
            text = None
        elif text is None:
            text = self.text.detect(unit, tuple(features.shape[-2:]))
        if not self.uses_saliency:
            return Attention(learned, text, None, LEARNED if learned is not None else None)
        if learned is not None:
            return Attention(learned, text, learned, LEARNED)
        if self.estimator is not None:
            estimate = torch.nn.functional.interpolate(  # the estimator's map is smooth already
                self.estimator.estimate(unit).float(), size=features.shape[-2:], mode="bilinear",
                align_corners=False)
            return Attention(None, text, estimate, f"{self.saliency_name} estimate")
        # Branch switched off: uniform region weights.
        return Attention(None, text, torch.ones_like(features[:, :1]), UNIFORM)

    def _describe(self, unit: torch.Tensor, features: torch.Tensor,
                  learned: torch.Tensor | None, text: torch.Tensor | None) -> torch.Tensor:
        seen = self._attention(unit, features, learned, text)
        if seen.learned is not None or seen.text is not None:
            features = self.network.weight(features, seen.learned, seen.text)
        if self.uses_saliency:
            pooled = self.pool(features, seen.pool_saliency)
        else:
            pooled = self.pool(features)
        descriptors = torch.nn.functional.normalize(pooled.float(), p=2, dim=1, eps=1e-12)
        if not self.whitened:
            return descriptors
        return whiten(descriptors, self.whiten_mean, self.whiten_matrix)
