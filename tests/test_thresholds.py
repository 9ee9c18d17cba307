"""Clopper–Pearson bounds, threshold choice, folds and the stated risk."""

from __future__ import annotations

import numpy as np
import pytest

from calibration.report import risk_lines
from calibration.thresholds import (RateEstimate, assess, assign_folds, chance_of_at_least, choose_threshold,
                                    clopper_pearson_upper, references_needed)
from okcell.scoring import expected_frr


@pytest.mark.parametrize(
    ("events", "trials", "confidence", "expected"),
    [
        (0, 10, 0.95, 0.2589),  # 1 - 0.05 ** (1 / 10)
        (0, 300, 0.95, 0.00994),  # "rule of three": about 3 / n
        (1, 10, 0.975, 0.4450),  # two-sided 95 % interval for 1/10: (0.0025, 0.4450)
        (5, 10, 0.975, 0.8129),  # two-sided 95 % interval for 5/10: (0.1871, 0.8129)
        (10, 10, 0.95, 1.0),
    ],
)
def test_clopper_pearson_known_values(events: int, trials: int, confidence: float, expected: float) -> None:
    assert clopper_pearson_upper(events, trials, confidence) == pytest.approx(expected, abs=6e-5)


def test_clopper_pearson_matches_beta_quantile() -> None:
    beta = pytest.importorskip("scipy.stats").beta  # scipy comes with scikit-image (demo extra), not a runtime dependency
    for trials in (1, 7, 40, 250, 5000):
        for events in sorted({0, 1, trials // 10, trials // 2, trials - 1} - {trials}):
            for confidence in (0.9, 0.95, 0.99):
                expected = beta.ppf(confidence, events + 1, trials - events)
                assert clopper_pearson_upper(events, trials, confidence) == pytest.approx(expected, abs=1e-9)


def test_clopper_pearson_rejects_bad_counts() -> None:
    with pytest.raises(ValueError):
        clopper_pearson_upper(3, 2)
    with pytest.raises(ValueError):
        clopper_pearson_upper(0, 0)


def test_threshold_is_the_quantile_at_rank_n_plus_1() -> None:
    scores = np.random.default_rng(0).permutation(np.arange(1.0, 201.0))
    assert choose_threshold(scores, 0.01) == pytest.approx(198.99)  # rank 201 * 0.99 = 198.99, between 198 and 199
    assert choose_threshold(scores, 0.0) == 200.0
    assert choose_threshold(scores[:40], 0.01) == scores[:40].max()  # rank 40.59 is past the highest of 40


@pytest.mark.parametrize("references", [60, 150, 250, 500])
def test_threshold_hits_the_target_on_new_parts(references: int) -> None:
    """Held-out scores exchangeable with new parts' (unit exponential: a new part exceeds t with probability e^-t):
    averaged over many calibrations, a new part is rejected at about the target rate, or 1/(n + 1) below 99
    references (the old rule, at most floor(target * n) held-out scores above, gave 1.2-1.3 % at 150-500)."""
    rng = np.random.default_rng(references)
    rejected = [np.exp(-choose_threshold(rng.exponential(size=references), 0.01)) for _ in range(3000)]
    assert np.mean(rejected) == pytest.approx(expected_frr(references, 0.01), rel=0.15)
    assert expected_frr(references, 0.01) == (0.01 if references >= references_needed(0.01) else 1 / (references + 1))


def test_references_needed_for_a_target() -> None:
    assert references_needed(0.01) == 99 and expected_frr(99, 0.01) == 0.01 and expected_frr(98, 0.01) == 1 / 99
    assert references_needed(0.001) == 999 and references_needed(0.0) == 0 and expected_frr(500, 0.0) == 1 / 501
    few = risk_lines(assess(np.linspace(0.1, 0.2, 30), {}, 0.01))
    assert "expected FRR on new parts 3.23 %" in few and "  too few OK references to reach the target: use at least 99 OK references" in few
    assert "expected FRR on new parts 1.00 %" in risk_lines(assess(np.linspace(0.1, 0.2, 300), {}, 0.01))


def test_assess_counts_and_bounds() -> None:
    ok = np.linspace(0.1, 0.2, 100)
    nok = {"scratch": np.array([0.05, 0.25, 0.3]), "stain": np.array([0.21, 0.22])}
    risk = assess(ok, nok, 0.05)
    assert risk.threshold == pytest.approx(ok[94] + 0.95 * (ok[95] - ok[94]))  # rank 101 * 0.95 = 95.95
    assert risk.false_rejects == RateEstimate(5, 100) and risk.expected_frr == 0.05
    assert risk.escapes == RateEstimate(1, 5)
    assert risk.detected_per_defect == {"scratch": RateEstimate(2, 3), "stain": RateEstimate(2, 2)}
    stated = risk.to_json()
    assert stated["frr"]["upper95"] == pytest.approx(clopper_pearson_upper(5, 100)) and stated["expected_frr"] == 0.05
    assert stated["recall"]["stain"]["lower95"] == pytest.approx(1 - clopper_pearson_upper(0, 2))
    assert assess(ok, {}, 0.01).escapes is None
    assert assess(ok[:50], {}, 0.01).expected_frr == 1 / 51


def test_folds_are_balanced_and_seeded() -> None:
    folds = assign_folds(23, 5, seed=4)
    assert sorted(np.bincount(folds).tolist()) == [4, 4, 5, 5, 5]
    assert np.array_equal(folds, assign_folds(23, 5, seed=4))
    assert not np.array_equal(folds, assign_folds(23, 5, seed=5))
    with pytest.raises(ValueError, match="per fold"):
        assign_folds(3, 5)


def test_chance_of_at_least_some_events_at_a_given_rate():
    assert chance_of_at_least(2, 3, 0.5) == pytest.approx(0.5)  # 3/8 + 1/8
    assert chance_of_at_least(1, 2, 0.1) == pytest.approx(0.19)  # 1 - 0.9 ** 2
    assert chance_of_at_least(0, 5, 0.01) == 1.0


def test_a_recall_carries_its_lower_bound():
    found = RateEstimate(events=9, total=10)  # lower bound = 1 - upper bound of 1 miss in 10
    assert found.lower95 == pytest.approx(1.0 - clopper_pearson_upper(1, 10))
