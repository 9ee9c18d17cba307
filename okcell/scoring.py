"""Patch and image anomaly scores against the reference bank of known-good patch features.

Patch anomaly = 1 - mean of the ``k`` highest cosine similarities between the patch and the bank
(features are L2-normalised, so cosine = inner product). Image score = mean of the highest 1 % of patch
scores (``"top1pct"``, at least one patch), the mean of the ``N`` highest (``"topN"``, e.g. ``"top10"``) or their
maximum (``"max"``). A part is NOK when its image score is strictly greater than the recipe threshold
(:func:`decide`).
"""

from __future__ import annotations

import math
import re
from typing import Literal, Sequence

import hnswlib
import numpy as np

AGGREGATIONS: tuple[str, ...] = ("top1pct", "max", "topN")
_TOP_N = re.compile(r"top([1-9][0-9]{0,4})")
SCORE_RANGE = (0.0, 2.0)  # patch and image scores: 1 - cosine similarity
DECISION_RULE = "NOK if image score > threshold"


def check_aggregation(value: str) -> str:
    """``value`` if it names an aggregation (``top1pct``, ``max`` or ``topN`` with N in 1..99999), else ValueError."""
    if value not in ("top1pct", "max") and _TOP_N.fullmatch(value) is None:
        raise ValueError(f"aggregation must be top1pct, max or topN (N patches, e.g. top10), found {value!r}")
    return value


def aggregate(patch_scores: np.ndarray, aggregation: str) -> np.ndarray:
    """(B, N) patch scores -> (B,) image scores."""
    if aggregation == "max":
        return patch_scores.max(axis=1)
    top_n = _TOP_N.fullmatch(aggregation) if aggregation != "top1pct" else None
    total = patch_scores.shape[1]
    count = min(total, int(top_n.group(1))) if top_n else max(1, math.ceil(0.01 * total))
    top = np.partition(patch_scores, total - count, axis=1)[:, -count:]
    return top.mean(axis=1)


def aggregate_valid(grid: np.ndarray, valid: np.ndarray, aggregation: str) -> float:
    """Image score from the patch scores of the ``valid`` cells of ``grid`` (all cells if none is valid: a frame
    with no foreground at all is scored whole, so a missing part is not passed unscored)."""
    values = grid[valid] if valid.any() else grid.ravel()
    return float(aggregate(values.reshape(1, -1), aggregation)[0])


def decide(score: float, threshold: float) -> Literal["OK", "NOK"]:
    """NOK when the image score is strictly above the threshold."""
    return "NOK" if score > threshold else "OK"


def expected_frr(references: int, target_frr: float) -> float:
    """False-reject rate a new good part meets, in expectation, at a threshold set for ``target_frr`` from the
    held-out scores of ``references`` OK images (calibration.thresholds): the target, or 1/(n + 1) when there
    are too few references to place the threshold below the highest score."""
    return max(target_frr, 1.0 / (references + 1))


class _Scorer:
    """Shared aggregation; subclasses return (M, k) cosine similarities for (M, C) patches."""

    k: int
    aggregation: str

    def _top_similarities(self, flat: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    @property
    def bank_size(self) -> int:
        raise NotImplementedError

    def patch_scores(self, patches: np.ndarray) -> np.ndarray:
        """(B, N, C) L2-normalised patch features -> (B, N) float32 anomaly in [0, 2]."""
        if patches.ndim != 3:
            raise ValueError(f"patches must be (B, N, C), found shape {patches.shape}")
        batch, count, channels = patches.shape
        flat = np.ascontiguousarray(patches.reshape(batch * count, channels), dtype=np.float32)
        similarity = self._top_similarities(flat).mean(axis=1)
        return np.clip(1.0 - similarity, *SCORE_RANGE).astype(np.float32).reshape(batch, count)

    def image_scores(self, patch_scores: np.ndarray) -> np.ndarray:
        """(B, N) patch scores -> (B,) image scores."""
        return aggregate(patch_scores, self.aggregation)

    def score(self, patches: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B, N, C) -> (image scores (B,), patch scores (B, N))."""
        patch = self.patch_scores(patches)
        return self.image_scores(patch), patch

    def _check_k(self) -> None:
        if not 1 <= self.k <= self.bank_size:
            raise ValueError(f"k must be between 1 and the bank size {self.bank_size}, found {self.k}")


class PatchScorer(_Scorer):
    """Scores with approximate nearest neighbours from an hnswlib index (``space='ip'``, normalised features)."""

    def __init__(self, index: hnswlib.Index, k: int = 1, aggregation: str = "top1pct", threads: int = -1) -> None:
        if index.space != "ip":
            raise ValueError(f"the bank index must use space='ip' (cosine on normalised features), found {index.space!r}")
        self.index = index
        self.k = k
        self.aggregation = check_aggregation(aggregation)
        self.threads = threads
        self._check_k()
        if index.ef < k:
            index.set_ef(k)

    @property
    def bank_size(self) -> int:
        return int(self.index.element_count)

    def _top_similarities(self, flat: np.ndarray) -> np.ndarray:
        _, distances = self.index.knn_query(flat, k=self.k, num_threads=self.threads)
        return 1.0 - distances  # hnswlib 'ip' distance is 1 - <a, b>


class ExactPatchScorer(_Scorer):
    """Exact nearest neighbours by matrix product over the bank array (reference for accuracy/benchmarks)."""

    def __init__(self, bank: np.ndarray, k: int = 1, aggregation: str = "top1pct", rows_per_block: int = 2048) -> None:
        if bank.ndim != 2:
            raise ValueError(f"bank must be (M, C), found shape {bank.shape}")
        self.bank = np.ascontiguousarray(bank, dtype=np.float32)
        self.k = k
        self.aggregation = check_aggregation(aggregation)
        self.rows_per_block = rows_per_block
        self._check_k()

    @property
    def bank_size(self) -> int:
        return int(self.bank.shape[0])

    def _top_similarities(self, flat: np.ndarray) -> np.ndarray:
        blocks: list[np.ndarray] = []
        for start in range(0, flat.shape[0], self.rows_per_block):
            similarity = flat[start : start + self.rows_per_block] @ self.bank.T
            if self.k == 1:
                blocks.append(similarity.max(axis=1, keepdims=True))
            else:
                blocks.append(np.partition(similarity, similarity.shape[1] - self.k, axis=1)[:, -self.k :])
        return np.concatenate(blocks) if blocks else np.zeros((0, self.k), np.float32)


def bank_vectors(index: hnswlib.Index, ids: Sequence[int] | None = None) -> np.ndarray:
    """The stored (M, C) float32 vectors of an hnswlib index (for :class:`ExactPatchScorer`)."""
    labels = list(range(index.element_count)) if ids is None else list(ids)
    return np.asarray(index.get_items(labels, return_type="numpy"), dtype=np.float32)
