"""PCA-whitening learned on the catalogue: fitting (scikit-learn), the projection, storage.

A whitened model runs its base model's pipeline, then ``x -> (x - mean) @ P -> L2`` with
``P = components.T / sqrt(explained_variance)``: exactly ``sklearn.decomposition.PCA(whiten=True)``
followed by L2 normalisation (Jégou & Chum, ECCV 2012). The fitted arrays are stored in the
``projections`` table, keyed by the whitened model, so every worker on any machine applies the
same projection without shared files.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np
import sqlalchemy as sa

from manet.errors import DamagedModelError, ManetError, NotFoundError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from manet.store.database import Database

#: ``PipelineConfig.projection["kind"]`` of a PCA-whitened model.
PCA_WHITEN = "pca-whiten"
#: A component whose variance is below this share of the largest is treated as zero: dividing
#: by its square root would blow float32 rounding noise up into the descriptor.
MIN_VARIANCE_RATIO = 1e-8


@dataclass(frozen=True)
class Projection:
    """A fitted PCA-whitening: ``mean`` (D,), ``components`` (d, D), ``explained_variance`` (d,)."""

    mean: np.ndarray
    components: np.ndarray
    explained_variance: np.ndarray
    fitted_rows: int

    @property
    def input_dim(self) -> int:
        return int(self.components.shape[1])

    @property
    def output_dim(self) -> int:
        return int(self.components.shape[0])

    @cached_property
    def matrix(self) -> np.ndarray:
        """The (D, d) whitening matrix applied after centring."""
        return whitening_matrix(self.components, self.explained_variance)


def whitening_matrix(components: np.ndarray, explained_variance: np.ndarray) -> np.ndarray:
    """``components.T / sqrt(explained_variance)``: (d, D) and (d,) -> (D, d), float32."""
    components = np.asarray(components, dtype=np.float64)
    scale = 1.0 / np.sqrt(np.asarray(explained_variance, dtype=np.float64))
    return np.ascontiguousarray((components.T * scale[None, :]).astype(np.float32))


def whiten(x: "torch.Tensor", mean: "torch.Tensor", matrix: "torch.Tensor") -> "torch.Tensor":
    """Whitened, L2-normalised descriptors: ``normalize((x - mean) @ matrix)``; (B, D) -> (B, d)."""
    import torch

    return torch.nn.functional.normalize((x - mean) @ matrix, p=2, dim=1, eps=1e-12)


def whiten_array(vectors: np.ndarray, projection: Projection) -> np.ndarray:
    """:func:`whiten` on a float32 numpy matrix (CPU), for descriptors already stored."""
    import torch

    with torch.inference_mode():
        out = whiten(torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32)),
                     torch.from_numpy(np.asarray(projection.mean, dtype=np.float32)),
                     torch.from_numpy(projection.matrix))
    return out.numpy()


def check_fit_size(rows: int, dims: int, input_dim: int, base: str) -> None:
    """Raise a one-line error when ``rows`` catalogue descriptors of ``input_dim`` dimensions
    cannot give a ``dims``-dimensional whitening (centred data has rank at most rows - 1)."""
    if not 1 <= dims <= input_dim:
        raise ManetError(f"--dims {dims} is out of range for model '{base}' ({input_dim} dimensions); "
                         f"use 1..{input_dim}")
    if rows == 0:
        raise ManetError(f"model '{base}' has no catalogue descriptors to learn a whitening from; "
                         f"run: manet extract --model {base}")
    if rows <= dims:
        raise ManetError(
            f"model '{base}' has {rows} catalogue descriptors, too few to learn a {dims}-dimensional "
            f"whitening (it needs more than {dims}); use --dims {max(1, rows - 1)} or less, or ingest and "
            f"extract more catalogue images"
        )


def fit_whitening(gallery: np.ndarray, dims: int, *, base: str = "base") -> Projection:
    """Fit PCA(n_components=dims, whiten=True) on catalogue descriptors (N, D)."""
    from sklearn.decomposition import PCA

    gallery = np.asarray(gallery, dtype=np.float32)
    check_fit_size(gallery.shape[0], dims, gallery.shape[1], base)
    # An exact solver: the randomized one sklearn picks for large inputs gets the trailing
    # components wrong, and whitening divides by their variances.
    pca = PCA(n_components=dims, whiten=True, svd_solver="covariance_eigh").fit(gallery.astype(np.float64))
    variance = np.asarray(pca.explained_variance_, dtype=np.float64)
    usable = int(np.sum(variance > MIN_VARIANCE_RATIO * variance.max())) if variance.max() > 0 else 0
    if usable < dims:
        raise ManetError(
            f"model '{base}''s catalogue descriptors span only {usable} dimensions, fewer than --dims {dims}; "
            f"use --dims {max(1, usable)} or less"
        )
    return Projection(pca.mean_.astype(np.float32), pca.components_.astype(np.float32),
                      variance.astype(np.float32), int(gallery.shape[0]))


def save_projection(conn: Any, model_id: int, source_model_id: int, projection: Projection) -> None:
    """Store ``projection`` for ``model_id`` on a psycopg connection (in its transaction)."""
    conn.execute(
        "INSERT INTO projections (model_id, source_model_id, input_dim, output_dim, mean, components, "
        "explained_variance, fitted_rows) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
        [model_id, source_model_id, projection.input_dim, projection.output_dim, projection.mean.tolist(),
         projection.components.tolist(), projection.explained_variance.tolist(), projection.fitted_rows],
    )


def load_projection(db: "Database", model_id: int, model_name: str) -> Projection:
    """The stored projection of a whitened model."""
    with db.begin() as conn:
        row = conn.execute(
            sa.text("SELECT mean, components, explained_variance, fitted_rows FROM projections "
                    "WHERE model_id = :m"),
            {"m": int(model_id)},
        ).first()
    fix = f"delete it and whiten its base again: manet models whiten BASE --dims D --name {model_name}"
    if row is None:
        raise NotFoundError(f"model '{model_name}' is whitened but its projection is missing; {fix}")
    mean, components, variance = (np.asarray(values, dtype=np.float32)
                                  for values in (row.mean, row.components, row.explained_variance))
    fits = (mean.ndim == 1 and components.ndim == 2 and variance.ndim == 1
            and components.shape == (variance.shape[0], mean.shape[0]) and components.size > 0)
    if not fits or not all(np.isfinite(a).all() for a in (mean, components, variance)) or not (variance > 0).all():
        raise DamagedModelError(f"model '{model_name}''s stored projection is damaged (mean {mean.shape}, components "
                                f"{components.shape}, variance {variance.shape}, each finite with variances > 0 "
                                f"expected); {fix}")
    return Projection(mean, components, variance, int(row.fitted_rows))
