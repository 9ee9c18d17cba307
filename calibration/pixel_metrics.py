"""Threshold-free curves over scored samples: ROC (images or pixels) and the per-region-overlap curve (AUPRO).

Both follow the MVTec AD evaluation code: samples are sorted by score (highest first) and every distinct score is
one threshold, so ties move both rates at once (an AUROC counts a tie half, as the Mann-Whitney statistic does).
AUPRO is the area under PRO(FPR) up to ``fpr_limit`` (0.3 by convention) divided by ``fpr_limit``, where PRO is the
mean over connected defect regions (8-connected, per image) of the share of the region above the threshold, and
FPR is the share of defect-free pixels above it.
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

AUPRO_FPR_LIMIT = 0.3


def _sorted_steps(scores: np.ndarray, *weights: np.ndarray) -> tuple[np.ndarray, ...]:
    """Cumulative sums of ``weights`` taken in descending score order, read at the last sample of each distinct
    score, with a leading 0."""
    order = np.argsort(-scores.astype(np.float64, copy=False), kind="stable")
    ordered = scores[order]
    last = np.r_[np.flatnonzero(ordered[1:] != ordered[:-1]), len(ordered) - 1]
    return tuple(np.r_[0.0, np.cumsum(w[order], dtype=np.float64)[last]] for w in weights)


def roc_curve(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false-positive rates, true-positive rates) from (0, 0) to (1, 1), one point per distinct score."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    positive = np.asarray(positive, dtype=bool).ravel()
    if scores.shape != positive.shape:
        raise ValueError(f"{scores.size} scores but {positive.size} labels")
    positives = int(positive.sum())
    if positives == 0 or positives == positive.size:
        raise ValueError("a ROC curve needs both positive and negative samples")
    tp, fp = _sorted_steps(scores, positive.astype(np.float64), (~positive).astype(np.float64))
    return fp / (positive.size - positives), tp / positives


def area_under(x: np.ndarray, y: np.ndarray, x_max: float = 1.0) -> float:
    """Trapezoid area under y(x) for x in [x[0], x_max] (x non-decreasing); y at x_max is interpolated."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    inside = x <= x_max
    xs, ys = x[inside], y[inside]
    if not inside.all() and xs[-1] < x_max:
        after = int(np.argmin(inside))  # first point past x_max
        before = after - 1
        share = (x_max - x[before]) / (x[after] - x[before])
        xs, ys = np.r_[xs, x_max], np.r_[ys, y[before] + share * (y[after] - y[before])]
    return float(np.sum(np.diff(xs) * (ys[1:] + ys[:-1]) / 2.0))


def pixel_auroc(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> float:
    """AUROC over all pixels of all images (mask > 0 = defect)."""
    scores = np.concatenate([np.asarray(m, np.float32).ravel() for m in maps])
    labels = np.concatenate([np.asarray(m).ravel() > 0 for m in masks])
    return area_under(*roc_curve(scores, labels))


def pro_curve(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(FPR over defect-free pixels, mean per-region overlap) from (0, 0) to (1, 1)."""
    if len(maps) != len(masks):
        raise ValueError(f"{len(maps)} anomaly maps but {len(masks)} masks")
    fpr_steps, pro_steps, scores = [], [], []
    regions = 0
    for amap, mask in zip(maps, masks):
        amap = np.asarray(amap, np.float32)
        defect = np.asarray(mask) > 0
        if amap.shape != defect.shape:
            raise ValueError(f"anomaly map {amap.shape} and mask {defect.shape} differ in shape")
        count, labels = cv2.connectedComponents(defect.astype(np.uint8), connectivity=8)
        inverse_size = np.zeros(count)
        inverse_size[1:] = 1.0 / np.bincount(labels.ravel(), minlength=count)[1:]
        share = inverse_size[labels]  # each region's pixels sum to 1, defect-free pixels add nothing
        regions += count - 1
        scores.append(amap.ravel())
        pro_steps.append(share.ravel())
        fpr_steps.append((~defect).ravel().astype(np.float64))
    free = float(sum(f.sum() for f in fpr_steps))
    if regions == 0 or free == 0:
        raise ValueError("a PRO curve needs defect regions and defect-free pixels")
    fp, overlap = _sorted_steps(np.concatenate(scores), np.concatenate(fpr_steps), np.concatenate(pro_steps))
    return fp / free, np.minimum(overlap / regions, 1.0)


def aupro(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray], fpr_limit: float = AUPRO_FPR_LIMIT) -> float:
    """Normalised area under the PRO curve up to ``fpr_limit`` (1.0 = every region found before any false pixel)."""
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], found {fpr_limit}")
    return area_under(*pro_curve(maps, masks), x_max=fpr_limit) / fpr_limit
