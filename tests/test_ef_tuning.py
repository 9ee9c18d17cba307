"""The search beam chosen at calibration keeps HNSW image scores within tolerance of exact search."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from okcell.bank_index import IndexParams, build_index
from calibration.ef_tuning import tune_ef
from edge.backends.onnxruntime_backend import OnnxRuntimeExtractor
from okcell.images import read_image
from okcell.scoring import ExactPatchScorer, PatchScorer


def test_tuned_ef_meets_tolerance_on_real_features(exported_model: Path, demo_images: Path) -> None:
    paths = sorted((demo_images / "train" / "ok").glob("*.png"))[:12]
    extractor = OnnxRuntimeExtractor(exported_model)
    try:
        patches = extractor.extract([read_image(p) for p in paths]).patches
    finally:
        extractor.close()
    bank = patches[:9].reshape(-1, patches.shape[2])
    queries = patches[9:]
    # a deliberately poor graph and beam, so that the starting ef misses neighbours
    scorer = PatchScorer(build_index(bank, IndexParams(M=4, ef_construction=8, ef=1)), k=1)
    tuning = tune_ef(scorer, bank, queries, tolerance=0.001)

    assert scorer.index.ef == tuning.ef
    exact = ExactPatchScorer(bank).score(queries)[0]
    approximate = scorer.score(queries)[0]
    assert np.max(np.abs(approximate - exact) / exact) <= 0.001
    assert tuning.max_relative_error <= 0.001
    assert tuning.sample_images == 3


def test_recipe_records_its_search_beam(demo_recipe: Path) -> None:
    manifest = json.loads((demo_recipe / "manifest.json").read_text())
    bank = manifest["bank"]
    assert bank["ef_tuning"]["ef"] == bank["index"]["ef"]
    assert bank["ef_tuning"]["max_relative_error"] <= bank["ef_tuning"]["tolerance"]
