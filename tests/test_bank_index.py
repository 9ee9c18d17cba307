"""hnswlib bank vs exact search on real DINOv2 patch features; index files and parameters."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from okcell.bank_index import IndexParams, build_index, load_index
from okcell.recipe import Recipe
from okcell.images import read_image
from okcell.scoring import ExactPatchScorer, PatchScorer, aggregate, bank_vectors
from okcell.sidecar import load_verified
from okcell.schema import ConfigError


@pytest.fixture(scope="module")
def holdout_patches(exported_model: Path, demo_images: Path) -> np.ndarray:
    """(B, N, C) patch features of the demo hold-out OK and NOK parts."""
    from edge.backends.onnxruntime_backend import OnnxRuntimeExtractor

    paths = sorted((demo_images / "holdout").rglob("*.png"))[:10]
    extractor = OnnxRuntimeExtractor(exported_model)
    try:
        return extractor.extract([read_image(p) for p in paths]).patches
    finally:
        extractor.close()


@pytest.mark.parametrize(("k", "aggregation"), [(1, "top1pct"), (3, "max")])
def test_hnsw_agrees_with_exact_search(demo_recipe: Path, exported_model: Path, holdout_patches: np.ndarray, k: int, aggregation: str) -> None:
    index = Recipe.load(demo_recipe, load_verified(exported_model)).scorer.index
    bank = bank_vectors(index)
    assert bank.shape == (index.element_count, holdout_patches.shape[2])
    assert np.allclose(np.linalg.norm(bank, axis=1), 1.0, atol=1e-4)
    approximate = PatchScorer(index, k=k, aggregation=aggregation)
    exact = ExactPatchScorer(bank, k=k, aggregation=aggregation)
    image_a, patch_a = approximate.score(holdout_patches)
    image_e, patch_e = exact.score(holdout_patches)
    assert np.all(patch_a >= patch_e - 1e-5)  # approximate search can only miss closer neighbours
    assert np.mean(np.isclose(patch_a, patch_e, atol=1e-5)) >= 0.98
    assert np.allclose(image_a, image_e, rtol=0.02, atol=1e-4)


def test_scores_follow_their_definition(holdout_patches: np.ndarray) -> None:
    bank = holdout_patches[0]
    exact = ExactPatchScorer(bank, k=1)
    image, patch = exact.score(holdout_patches[:2])
    assert np.allclose(patch[0], 0.0, atol=1e-5)  # every patch of the bank image is in the bank
    similarity = holdout_patches[1] @ bank.T
    assert np.allclose(patch[1], 1.0 - similarity.max(axis=1), atol=1e-5)
    top = np.sort(patch[1])[-3:]  # 256 patches: top 1 % = 3 patches
    assert image[1] == pytest.approx(top.mean(), abs=1e-6)
    assert aggregate(patch, "max")[1] == pytest.approx(patch[1].max())


def test_index_round_trip_and_bad_files(tmp_path: Path, holdout_patches: np.ndarray) -> None:
    features = holdout_patches[:2].reshape(-1, holdout_patches.shape[2]) * 3.0  # unnormalised on purpose
    params = IndexParams(M=8, ef_construction=50, ef=32)
    index = build_index(features, params)
    path = tmp_path / "bank.hnsw"
    index.save_index(str(path))
    loaded = load_index(path, features.shape[1], len(features), params)
    assert loaded.ef == 32
    labels, distances = loaded.knn_query(features[:5] / 3.0, k=1)
    assert labels[:, 0].tolist() == [0, 1, 2, 3, 4] and np.allclose(distances, 0.0, atol=1e-5)
    with pytest.raises(ConfigError, match=f"holds {len(features)} vectors, manifest says 7"):
        load_index(path, features.shape[1], 7, params)
    with pytest.raises(ConfigError, match="reference bank index not found"):
        load_index(tmp_path / "none.hnsw", features.shape[1], 7, params)
    with pytest.raises(ConfigError, match="'ef' must be a positive integer"):
        IndexParams(ef=0)
    with pytest.raises(ValueError, match="k must be between 1 and the bank size"):
        PatchScorer(loaded, k=len(features) + 1)
