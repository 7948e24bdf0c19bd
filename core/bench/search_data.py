"""The descriptors ``manet bench search`` loads: a seeded generator shaped like a CNN's
descriptors, or a ``.npy`` file; both hand out gallery rows chunk by chunk and their queries."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from manet.bench.search_truth import K
from manet.errors import ManetError

#: Rows per streamed chunk (a multiple of IMAGES_PER_PRODUCT).
CHUNK_ROWS = 8192


@dataclass(frozen=True)
class DescriptorGenerator:
    """Seeded synthetic descriptors shaped like a CNN's: clusters in a low-dimensional subspace.

    A row is ``normalise(B.T @ (c + spread * z) + noise * sqrt(intrinsic_dim / dim) * e)`` where
    ``B`` is a random orthonormal basis of an ``intrinsic_dim``-dimensional subspace of R^dim,
    ``c`` one of ``clusters`` centres drawn from N(0, I), ``z ~ N(0, I_intrinsic)`` and
    ``e ~ N(0, I_dim)``: the full-dimensional noise is ``noise`` times as long as a unit-variance
    subspace component. Gallery rows come in chunks of :data:`CHUNK_ROWS`, chunk ``i`` from its
    own seeded stream, and queries from another stream: fresh draws from the same
    distribution, never stored rows or perturbed copies of them.

    ``spread`` sets how hard the data is for HNSW. Measured with FAISS HNSW (m=16,
    ef_construction=64) at 100K x 512, recall@7 at ef_search 10/40/100/200 is 0.94/1.0/1.0/1.0 at
    spread 0.5 (well-separated clusters), 0.76/0.92/0.96/0.98 at 1.25 (the default: the sweep
    shows a trade-off) and 0.18/0.45/0.68/0.83 at 2.0 (almost an isotropic 64-d Gaussian).
    """

    dim: int
    intrinsic_dim: int = 64
    clusters: int = 1000
    spread: float = 1.25
    noise: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.intrinsic_dim <= self.dim:
            raise ManetError(f"--intrinsic-dim {self.intrinsic_dim} must be between 1 and --dim {self.dim}")

    @functools.cached_property
    def basis(self) -> np.ndarray:
        """(intrinsic_dim, dim) orthonormal rows spanning the subspace."""
        rng = np.random.default_rng([self.seed, 0])
        q, _ = np.linalg.qr(rng.standard_normal((self.dim, self.intrinsic_dim)))
        return q.T.astype(np.float32)

    @functools.cached_property
    def centres(self) -> np.ndarray:
        return np.random.default_rng([self.seed, 1]).standard_normal((self.clusters, self.intrinsic_dim))

    def _draw(self, rng: np.random.Generator, count: int) -> np.ndarray:
        coords = self.centres[rng.integers(0, self.clusters, count)]
        coords = coords + self.spread * rng.standard_normal((count, self.intrinsic_dim))
        rows = (coords.astype(np.float32) @ self.basis
                + np.float32(self.noise * np.sqrt(self.intrinsic_dim / self.dim))
                * rng.standard_normal((count, self.dim), dtype=np.float32))
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)

    def gallery(self, n: int) -> Iterator[np.ndarray]:
        """The first ``n`` gallery rows, chunk by chunk (float32, unit norm); a whole chunk is
        always drawn, so the first rows are the same whatever ``n``."""
        for index, start in enumerate(range(0, n, CHUNK_ROWS)):
            yield self._draw(np.random.default_rng([self.seed, 2, index]), CHUNK_ROWS)[: n - start]

    def queries(self, count: int) -> np.ndarray:
        return self._draw(np.random.default_rng([self.seed, 3]), count)

    def describe(self) -> dict[str, Any]:
        return {"source": "generator", **asdict(self)}


def _normalised(rows: np.ndarray, what: str) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float32)
    if not np.isfinite(rows).all():
        raise ManetError(f"{what} contains NaN or infinity; clean the array and re-run")
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    if (norms == 0).any():
        raise ManetError(f"{what} contains an all-zero row; descriptors must have a direction")
    return rows / norms


def _load_array(path: Path, option: str) -> np.ndarray:
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ManetError(f"cannot read {option} {path}: {exc}; give a .npy file saved with numpy.save") from None
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] < 2:
        raise ManetError(f"{option} {path} has shape {array.shape}; expected a 2-D float array (rows x dims)")
    if not np.issubdtype(array.dtype, np.floating):
        raise ManetError(f"{option} {path} holds {array.dtype}; expected float32 descriptors")
    return array


@dataclass
class VectorFile:
    """Descriptors from a ``.npy`` file (memory-mapped, read chunk by chunk, L2-normalised).

    Without a queries file, ``queries`` rows chosen at random (seeded) are held out of the
    gallery and used as queries: unseen rows from the same distribution.
    """

    path: Path
    query_count: int
    queries_path: Path | None = None
    seed: int = 0
    dim: int = 0

    def __post_init__(self) -> None:
        self.array = _load_array(self.path, "--vectors")
        self.dim = int(self.array.shape[1])
        if self.queries_path is not None:
            held = _load_array(self.queries_path, "--queries-file")
            if held.shape[1] != self.dim:
                raise ManetError(f"--queries-file has {held.shape[1]} dimensions but --vectors has {self.dim}; "
                                 f"give queries from the same model")
            self._queries = _normalised(held[: self.query_count], f"--queries-file {self.queries_path}")
            self.held_out = np.zeros(len(self.array), dtype=bool)
        else:
            if len(self.array) <= self.query_count + K:
                raise ManetError(f"--vectors has {len(self.array)} rows, too few to hold out {self.query_count} "
                                 f"queries; lower --queries or give --queries-file")
            self.held_out = np.zeros(len(self.array), dtype=bool)
            picks = np.random.default_rng([self.seed, 4]).choice(len(self.array), self.query_count, replace=False)
            self.held_out[picks] = True
            self._queries = _normalised(self.array[np.sort(picks)], f"--vectors {self.path}")

    @property
    def available(self) -> int:
        return int(len(self.array) - self.held_out.sum())

    def gallery(self, n: int) -> Iterator[np.ndarray]:
        done = 0
        for start in range(0, len(self.array), CHUNK_ROWS):
            if done >= n:
                return
            block = self.array[start:start + CHUNK_ROWS][~self.held_out[start:start + CHUNK_ROWS]][: n - done]
            done += len(block)
            yield _normalised(block, f"--vectors {self.path} (rows {start}..{start + CHUNK_ROWS - 1})")

    def queries(self, count: int) -> np.ndarray:
        return self._queries[:count]

    def describe(self) -> dict[str, Any]:
        queries = (f"first rows of {self.queries_path}" if self.queries_path is not None
                   else f"{self.query_count} rows held out of the file (seed {self.seed})")
        return {"source": str(self.path), "queries": queries, "normalised": "L2, like manet's descriptors"}
