"""Held-out OK scores on real DINOv2 features: leave-one-out against the final bank vs k-fold, and the hidden rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from calibration.build import CalibrationSettings, ReferenceBank, reference_bank
from calibration.demo_data import make_part, texture
from calibration.reference_features import FeatureCache
from calibration.thresholds import choose_threshold
from okcell.bank_index import IndexParams, build_index, hidden
from okcell.frames import CropFeatures, extract_crops, score_crop
from okcell.masking import NoMask
from okcell.names import HeldOut
from okcell.scoring import ExactPatchScorer, PatchScorer
from okcell.sizing import Sizing

REFERENCES = 20


@pytest.fixture(scope="module")
def references(exported_model: Path) -> list[CropFeatures]:
    """Features of OK parts from one line (brick demo parts at the model's size)."""
    from edge.backends.onnxruntime_backend import OnnxRuntimeExtractor

    photo, rng = texture("brick"), np.random.default_rng(5)
    extractor = OnnxRuntimeExtractor(exported_model)
    try:
        return extract_crops(extractor, [make_part(photo, 224, rng) for _ in range(REFERENCES)], Sizing())
    finally:
        extractor.close()


def test_hidden_rows_leave_the_results_and_come_back(references: list[CropFeatures]) -> None:
    patches = np.concatenate([crop.patches for crop in references[:6]])
    bank = patches.reshape(-1, patches.shape[2])
    index = build_index(bank, IndexParams(ef=256))
    own = np.arange(256, 512)  # the second image's patches
    with hidden(index, own):
        labels, _ = index.knn_query(patches[1], k=3)
        without = PatchScorer(index).score(patches[1:2])[0]
    assert not np.isin(labels, own).any()
    assert without == pytest.approx(ExactPatchScorer(np.delete(bank, own, axis=0)).score(patches[1:2])[0], rel=1e-3)
    assert PatchScorer(index).score(patches[1:2])[0] == pytest.approx(0.0, abs=1e-5)  # back in the bank: itself


def _reference_bank(crops: list[CropFeatures], held_out: HeldOut) -> ReferenceBank:
    settings = CalibrationSettings(ok_dir=Path("unused"), folds=3, held_out=held_out)  # calibrate's coreset ratio
    with FeatureCache(crops[0].patches.shape[2]) as cache:
        for source, crop in enumerate(crops):
            cache.append(crop, source)
        bank = reference_bank(cache, NoMask(), settings)
    assert bank.ef_tuning.max_relative_error <= bank.ef_tuning.tolerance
    return bank


def test_leave_one_out_scores_references_as_new_parts(references: list[CropFeatures]) -> None:
    """A new part meets the bank calibrate built from all references, so a reference scores as a new part would
    against the bank calibrate builds from the others (its exact jackknife score: both sets of scores come from
    the same distribution). Leave-one-out matches it; the k-fold banks, built from 2/3 of the 20 references here,
    score higher, and their threshold lands too high (fewer false rejects than the target, more escapes)."""
    loo = _reference_bank(references, "leave-one-out").ok_scores
    k_fold = _reference_bank(references, "k-fold").ok_scores
    jackknife = np.array([score_crop(crop, NoMask(), _reference_bank(references[:i] + references[i + 1 :], "leave-one-out").scorer, "top1pct").score
                          for i, crop in enumerate(references)])
    assert np.all(loo <= k_fold * (1 + 5e-3))  # the final bank less one image holds every other fold's coreset
    k_fold_bias, loo_bias = np.mean(k_fold - jackknife), np.mean(loo - jackknife)
    assert k_fold_bias > 0 and abs(loo_bias) < 0.25 * k_fold_bias, (loo_bias, k_fold_bias)
    truth = choose_threshold(jackknife, 0.1)
    assert abs(choose_threshold(loo, 0.1) - truth) < 0.5 * (choose_threshold(k_fold, 0.1) - truth)
