"""Choose the hnswlib search beam ``ef`` so that approximate image scores match exact search.

A larger bank needs a larger ``ef`` for the same recall; a missed neighbour can only raise a patch score, so
too small an ``ef`` shows up as false rejects. Calibration measures the error on held-out OK images against
the exact (matrix-product) scores and doubles ``ef`` until the largest relative image-score error is within
the tolerance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from okcell.bank_index import MAX_EF, hidden
from okcell.scoring import ExactPatchScorer, PatchScorer

DEFAULT_TOLERANCE = 0.005


@dataclass(frozen=True)
class EfTuning:
    """Outcome of :func:`tune_ef` (recorded in the recipe manifest)."""

    ef: int
    max_relative_error: float
    tolerance: float
    sample_images: int

    def to_json(self) -> dict[str, float | int]:
        return {
            "ef": self.ef,
            "max_relative_error": round(self.max_relative_error, 6),
            "tolerance": self.tolerance,
            "sample_images": self.sample_images,
        }


def tune_ef(scorer: PatchScorer, bank: np.ndarray, patches: np.ndarray, tolerance: float = DEFAULT_TOLERANCE,
            left_out: Sequence[np.ndarray] | None = None) -> EfTuning:
    """Raise ``scorer.index``'s ef (doubling, up to MAX_EF) until image scores of ``patches`` (B, N, C) are within
    ``tolerance`` (relative) of exact search. Image b is scored without the bank rows ``left_out[b]`` (its own
    patches, for leave-one-out scores); without ``left_out`` the images must not be in ``bank``. Leaves the index
    at the chosen ef."""
    rows = [np.zeros(0, np.int64)] * len(patches) if left_out is None else [np.asarray(r, np.int64) for r in left_out]
    exact = np.array([ExactPatchScorer(np.delete(bank, rows[b], axis=0), scorer.k, scorer.aggregation).score(patches[b : b + 1])[0][0]
                      for b in range(len(patches))])
    ef = max(int(scorer.index.ef), scorer.k)
    while True:
        scorer.index.set_ef(ef)
        approximate = np.empty_like(exact)
        for b in range(len(patches)):
            with hidden(scorer.index, rows[b]):
                approximate[b] = scorer.score(patches[b : b + 1])[0][0]
        error = float(np.max(np.abs(approximate - exact) / np.maximum(np.abs(exact), 1e-6)))
        if error <= tolerance or ef >= MAX_EF:
            return EfTuning(ef, error, tolerance, int(patches.shape[0]))
        ef = min(2 * ef, MAX_EF)
