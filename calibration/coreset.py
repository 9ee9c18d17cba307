"""Greedy k-center coreset of patch features (PatchCore), built sequentially over chunks of images.

Distances for the selection are computed on a Gaussian random projection to ``projection_dim`` dimensions
(Johnson–Lindenstrauss: pairwise distances are kept within a small factor), the selected patches keep their
full features. :class:`SequentialCoreset` keeps a running coreset and merges each chunk of patches into it
(Sequential PatchCore), so memory is bounded by one chunk plus the coreset, never all patches of all images.
"""

from __future__ import annotations

import math

import numpy as np

DEFAULT_PROJECTION_DIM = 128
_BLOCK_ROWS = 1024


class RandomProjection:
    """Fixed Gaussian projection C -> d (scaled so that expected squared norms are kept)."""

    def __init__(self, input_dim: int, output_dim: int = DEFAULT_PROJECTION_DIM, seed: int = 0) -> None:
        self.output_dim = min(output_dim, input_dim)
        if self.output_dim == input_dim:
            self.matrix: np.ndarray | None = None
        else:
            rng = np.random.default_rng(seed)
            self.matrix = (rng.standard_normal((input_dim, self.output_dim)) / math.sqrt(self.output_dim)).astype(np.float32)

    def __call__(self, features: np.ndarray) -> np.ndarray:
        features = np.asarray(features, dtype=np.float32)
        return features if self.matrix is None else features @ self.matrix


def nearest_centers(points: np.ndarray, centers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For (n, d) ``points``: squared distance to, and index of, the nearest of (m, d) ``centers`` (row blocks)."""
    min_sq = np.empty(points.shape[0], dtype=np.float32)
    nearest = np.empty(points.shape[0], dtype=np.int64)
    center_norms = np.einsum("ij,ij->i", centers, centers)
    for start in range(0, points.shape[0], _BLOCK_ROWS):
        block = points[start : start + _BLOCK_ROWS]
        sq = np.einsum("ij,ij->i", block, block)[:, None] - 2.0 * (block @ centers.T) + center_norms[None, :]
        nearest[start : start + _BLOCK_ROWS] = sq.argmin(axis=1)
        min_sq[start : start + _BLOCK_ROWS] = np.maximum(sq.min(axis=1), 0.0)
    return min_sq, nearest


def min_sq_distances(points: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """For each of (n, d) ``points`` the squared distance to the nearest of (m, d) ``centers``."""
    return nearest_centers(points, centers)[0]


def coverage_radius(points: np.ndarray, centers: np.ndarray) -> float:
    """Largest distance from any point to its nearest center (the k-center objective)."""
    return float(np.sqrt(min_sq_distances(points, centers).max())) if len(points) else 0.0


def greedy_kcenter(points: np.ndarray, count: int, seeds: np.ndarray | None = None, first: int = 0) -> np.ndarray:
    """Indices of ``count`` points chosen greedily, each the point farthest from all chosen so far.

    ``seeds`` (m, d): centers already chosen (e.g. the running coreset); without seeds the search starts at
    point ``first``. Returns the indices in selection order. A new center c can only come closer to a point x
    than x's current center a if |c - a| < 2 |x - a| (triangle inequality), so only those points are updated."""
    count = min(count, points.shape[0])
    if count <= 0:
        return np.zeros(0, dtype=np.int64)
    norms = np.einsum("ij,ij->i", points, points)
    chosen = np.empty(count, dtype=np.int64)
    seeded = seeds is not None and len(seeds) > 0
    centers = np.empty((count + (len(seeds) if seeds is not None and seeded else 0), points.shape[1]), dtype=np.float32)
    if seeds is not None and seeded:
        centers[: len(seeds)] = seeds
        used, start = len(seeds), 0
        min_sq, nearest = nearest_centers(points, seeds)
    else:
        chosen[0], centers[0] = first, points[first]
        used, start = 1, 1
        min_sq = np.maximum(norms - 2.0 * (points @ points[first]) + norms[first], 0.0).astype(np.float32)
        nearest = np.zeros(points.shape[0], dtype=np.int64)
    for i in range(start, count):
        pick = int(np.argmax(min_sq))
        chosen[i] = pick
        offsets = centers[:used] - points[pick]
        center_sq = np.einsum("ij,ij->i", offsets, offsets)
        candidates = np.flatnonzero(center_sq[nearest] < 4.0 * min_sq)
        if 3 * len(candidates) > len(points):  # many points may move: one full pass is cheaper than gathering
            sq = np.maximum(norms - 2.0 * (points @ points[pick]) + norms[pick], 0.0)
            moved = np.flatnonzero(sq < min_sq)
            moved_sq = sq[moved]
        else:
            sq = np.maximum(norms[candidates] - 2.0 * (points[candidates] @ points[pick]) + norms[pick], 0.0)
            closer = sq < min_sq[candidates]
            moved, moved_sq = candidates[closer], sq[closer]
        min_sq[moved] = moved_sq
        nearest[moved] = used
        centers[used] = points[pick]
        used += 1
    return chosen


class SequentialCoreset:
    """Running greedy k-center coreset: ``add`` chunks of (n, C) patch features, read ``features`` and ``sources``
    (the reference image each kept patch came from, so a reference can be scored without its own patches).

    Its size follows ``ceil(ratio * patches seen)``, capped at ``max_size``. Below the cap the coreset keeps its
    centers and takes the chunk's patches that lie farthest from them; at the cap the coreset and the chunk
    are pooled and the ``max_size`` centers re-selected from the pool."""

    def __init__(self, feature_dim: int, ratio: float, max_size: int, projection_dim: int = DEFAULT_PROJECTION_DIM, seed: int = 0) -> None:
        if not 0.0 < ratio <= 1.0:
            raise ValueError(f"coreset ratio must be in (0, 1], found {ratio}")
        if max_size < 1:
            raise ValueError(f"coreset max size must be at least 1, found {max_size}")
        self.ratio = ratio
        self.max_size = max_size
        self.projection = RandomProjection(feature_dim, projection_dim, seed)
        self.features = np.zeros((0, feature_dim), dtype=np.float32)
        self.projected = np.zeros((0, self.projection.output_dim), dtype=np.float32)
        self.sources = np.zeros(0, dtype=np.int64)
        self.patches_seen = 0

    def __len__(self) -> int:
        return int(self.features.shape[0])

    def add(self, patches: np.ndarray, sources: np.ndarray | int = 0) -> None:
        """Merge (n, C) patch features into the coreset; ``sources``: the source image number of each patch (n,)
        or of all of them."""
        patches = np.asarray(patches, dtype=np.float32).reshape(-1, self.features.shape[1])
        sources = np.broadcast_to(np.asarray(sources, dtype=np.int64), (len(patches),))
        if not len(patches):
            return
        self.patches_seen += len(patches)
        target = min(self.max_size, math.ceil(self.ratio * self.patches_seen))
        projected = self.projection(patches)
        if target > len(self):
            new = greedy_kcenter(projected, target - len(self), seeds=self.projected if len(self) else None)
            self.features = np.concatenate([self.features, patches[new]])
            self.projected = np.concatenate([self.projected, projected[new]])
            self.sources = np.concatenate([self.sources, sources[new]])
        else:
            pool_features = np.concatenate([self.features, patches])
            pool_projected = np.concatenate([self.projected, projected])
            keep = greedy_kcenter(pool_projected, target)
            self.features = pool_features[keep]
            self.projected = pool_projected[keep]
            self.sources = np.concatenate([self.sources, sources])[keep]
