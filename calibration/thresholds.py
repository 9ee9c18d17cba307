"""Decision threshold from held-out OK scores, and the stated risk with exact binomial (Clopper–Pearson) bounds.

Why held-out scores: an OK image that is in the bank scores near zero against itself, so thresholds taken from
in-bank scores would reject far more good parts in production than promised. Each OK reference is scored against
the bank without its own patches (leave-one-out, the default: the final bank less one image's share, so its score
is distributed like a new good part's), or against a bank of the other folds (k-fold: a smaller, sparser bank, so
held-out scores run higher than a new part's and the threshold errs high — fewer false rejects than the target,
more escapes).

The threshold is the (1 - target) quantile of the n held-out scores placed at rank (n + 1)(1 - target) between
neighbouring scores (Hyndman–Fan type 6): a new part whose score is exchangeable with the held-out ones then
exceeds it with probability about the target. With fewer than 1/target - 1 references no rank is high enough; the
threshold is the highest held-out score and the expected false-reject rate 1/(n + 1), above the target.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from okcell.scoring import expected_frr

DEFAULT_CONFIDENCE = 0.95


def _binomial_cdf(successes: int, trials: int, p: float) -> float:
    """P(X <= successes) for X ~ Binomial(trials, p), summed in log space."""
    if p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 1.0 if successes >= trials else 0.0
    log_p, log_q = math.log(p), math.log1p(-p)
    log_n_fact = math.lgamma(trials + 1)
    terms = [
        log_n_fact - math.lgamma(i + 1) - math.lgamma(trials - i + 1) + i * log_p + (trials - i) * log_q
        for i in range(successes + 1)
    ]
    peak = max(terms)
    return min(1.0, math.exp(peak) * math.fsum(math.exp(t - peak) for t in terms))


def chance_of_at_least(events: int, trials: int, p: float) -> float:
    """P(X >= events) for X ~ Binomial(trials, p): how surprising ``events`` are if the true rate is ``p``."""
    return 1.0 if events <= 0 else max(0.0, 1.0 - _binomial_cdf(events - 1, trials, p))


def clopper_pearson_upper(events: int, trials: int, confidence: float = DEFAULT_CONFIDENCE) -> float:
    """One-sided exact upper confidence bound on a rate after ``events`` in ``trials``.

    The true rate is below the returned value with probability ``confidence``: the p with
    P(Binomial(trials, p) <= events) = 1 - confidence, i.e. the ``confidence`` quantile of Beta(events + 1,
    trials - events), found by bisection. (The upper end of the two-sided 95 % interval is ``confidence=0.975``.)"""
    if trials <= 0:
        raise ValueError(f"need at least one trial, found {trials}")
    if not 0 <= events <= trials:
        raise ValueError(f"events must be between 0 and {trials}, found {events}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), found {confidence}")
    if events == trials:
        return 1.0
    alpha = 1.0 - confidence
    if events == 0:
        return 1.0 - alpha ** (1.0 / trials)
    low, high = events / trials, 1.0
    for _ in range(200):
        mid = 0.5 * (low + high)
        if _binomial_cdf(events, trials, mid) > alpha:
            low = mid
        else:
            high = mid
        if high - low < 1e-13:
            break
    return 0.5 * (low + high)


@dataclass(frozen=True)
class RateEstimate:
    """``events`` out of ``total`` with its one-sided 95 % Clopper–Pearson upper bound."""

    events: int
    total: int

    @property
    def rate(self) -> float:
        return self.events / self.total

    @property
    def upper95(self) -> float:
        return clopper_pearson_upper(self.events, self.total)

    @property
    def lower95(self) -> float:
        """One-sided 95 % lower bound (the upper bound of the complementary rate, mirrored)."""
        return 1.0 - clopper_pearson_upper(self.total - self.events, self.total)

    def to_json(self) -> dict[str, Any]:
        return {"events": self.events, "total": self.total, "rate": self.rate, "upper95": self.upper95}


def choose_threshold(ok_scores: np.ndarray, target_frr: float) -> float:
    """The (1 - ``target_frr``) quantile of the held-out OK scores at rank (n + 1)(1 - target), interpolated
    between neighbours and at most the highest score (see the module doc)."""
    if not 0.0 <= target_frr < 1.0:
        raise ValueError(f"target FRR must be in [0, 1), found {target_frr}")
    scores = np.asarray(ok_scores, dtype=np.float64)
    if not len(scores):
        raise ValueError("no held-out OK scores to set a threshold from")
    return float(np.quantile(scores, 1.0 - target_frr, method="weibull"))


def measured_threshold(ok_scores: np.ndarray, max_frr: float) -> float:
    """The lowest OK score with at most ``floor(max_frr * n)`` OK scores above it: the operating point where the
    measured false-reject rate on these very images is at most ``max_frr`` (for test sets, not for calibration)."""
    ordered = np.sort(np.asarray(ok_scores, dtype=np.float64))
    if not len(ordered):
        raise ValueError("no OK scores to set a threshold from")
    return float(ordered[len(ordered) - 1 - math.floor(max_frr * len(ordered))])


def references_needed(target_frr: float) -> int:
    """Fewest OK references whose expected false-reject rate is the target (none for a target of 0)."""
    return math.ceil(1.0 / target_frr) - 1 if target_frr > 0 else 0


def assign_folds(count: int, folds: int, seed: int = 0) -> np.ndarray:
    """Fold number (0..folds-1) per image: a seeded shuffle dealt round-robin, so folds differ by at most one."""
    if folds < 2:
        raise ValueError(f"need at least 2 folds, found {folds}")
    if count < folds:
        raise ValueError(f"need at least one OK image per fold: {count} images for {folds} folds")
    order = np.random.default_rng(seed).permutation(count)
    fold_of = np.empty(count, dtype=np.int64)
    fold_of[order] = np.arange(count) % folds
    return fold_of


@dataclass(frozen=True)
class Risk:
    """What the recipe promises: threshold, target and measured FRR, escape rate and recall per defect folder."""

    threshold: float
    target_frr: float
    false_rejects: RateEstimate  # held-out OK images scored above the threshold
    escapes: RateEstimate | None  # NOK images scored at or below the threshold (all folders together)
    detected_per_defect: dict[str, RateEstimate]  # per NOK folder: images scored above the threshold
    expected_frr: float | None = None  # on new good parts, in expectation, for a threshold set from these OK scores

    def to_json(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "target_frr": self.target_frr,
            "expected_frr": self.expected_frr,
            "confidence": DEFAULT_CONFIDENCE,
            "frr": self.false_rejects.to_json(),
            "escape": None if self.escapes is None else self.escapes.to_json(),
            "recall": {
                name: {**est.to_json(), "lower95": est.lower95}
                for name, est in self.detected_per_defect.items()
            },
        }


def assess(ok_scores: np.ndarray, nok_scores: dict[str, np.ndarray], target_frr: float) -> Risk:
    """Threshold for ``target_frr`` from held-out OK scores, the rates it gives on OK and each NOK folder, and the
    false-reject rate new parts meet in expectation."""
    risk = risk_at(choose_threshold(ok_scores, target_frr), ok_scores, nok_scores, target_frr)
    return dataclasses.replace(risk, expected_frr=expected_frr(len(ok_scores), target_frr))


def risk_at(threshold: float, ok_scores: np.ndarray, nok_scores: dict[str, np.ndarray], target_frr: float) -> Risk:
    """The rates a given ``threshold`` gives on OK scores and each NOK folder's scores."""
    ok_scores = np.asarray(ok_scores, dtype=np.float64)
    nok_scores = {name: np.asarray(s, dtype=np.float64) for name, s in nok_scores.items()}
    false_rejects = RateEstimate(int(np.sum(ok_scores > threshold)), len(ok_scores))
    detected = {name: RateEstimate(int(np.sum(s > threshold)), len(s)) for name, s in nok_scores.items() if len(s)}
    total_nok = sum(est.total for est in detected.values())
    escapes = RateEstimate(total_nok - sum(est.events for est in detected.values()), total_nok) if total_nok else None
    return Risk(threshold, target_frr, false_rejects, escapes, detected)
