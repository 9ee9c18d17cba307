"""OnnxRuntimeExtractor on the real exported DINOv2 and real photos."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from skimage import data

from edge.backends.onnxruntime_backend import OnnxRuntimeExtractor
from okcell.extractor import FeatureExtractor, Features
from okcell.sidecar import sidecar_path_for
from okcell.schema import ConfigError


@pytest.fixture(scope="module")
def extractor(exported_model: Path) -> OnnxRuntimeExtractor:
    return OnnxRuntimeExtractor(exported_model, threads=2)


def test_extract_batch_of_mixed_frames(extractor: OnnxRuntimeExtractor) -> None:
    backend: FeatureExtractor = extractor  # mypy checks the protocol
    assert backend.backend_name == "onnxruntime"
    frames = [data.astronaut(), data.brick(), data.coffee()]  # RGB 512x512, mono 512x512, RGB 400x600
    features = extractor.extract(frames)
    assert isinstance(features, Features)
    rows, cols = extractor.sidecar.patch_grid
    assert features.grid == (rows, cols) == (16, 16)
    assert features.patches.shape == (3, rows * cols, extractor.sidecar.feature_dim)
    assert features.embedding.shape == (3, extractor.sidecar.embedding_dim)
    assert features.patches.dtype == np.float32 and features.embedding.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(features.patches, axis=-1), 1.0, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(features.embedding, axis=-1), 1.0, atol=1e-4)
    assert set(features.timings_ms) == {"preprocess", "backbone"}
    assert all(value > 0 for value in features.timings_ms.values())
    # different photos give different embeddings; the same photo alone gives the same features as in a batch
    assert float(features.embedding[0] @ features.embedding[1]) < 0.95
    single = extractor.extract([frames[1]])
    np.testing.assert_allclose(single.patches[0], features.patches[1], atol=1e-5)


def test_similar_textures_are_closer_than_different_ones(extractor: OnnxRuntimeExtractor) -> None:
    gravel = data.gravel()
    left, right = gravel[:, :256], gravel[:, 256:]
    features = extractor.extract([left, right, data.astronaut()])
    same = float(features.embedding[0] @ features.embedding[1])
    different = float(features.embedding[0] @ features.embedding[2])
    assert same > different


def test_bad_frames_are_refused(extractor: OnnxRuntimeExtractor) -> None:
    with pytest.raises(ValueError, match="uint8"):
        extractor.extract([data.astronaut().astype(np.float32)])
    with pytest.raises(ValueError, match="at least one frame"):
        extractor.extract([])


def test_edited_model_is_refused(exported_model: Path, tmp_path: Path) -> None:
    copy = tmp_path / exported_model.name
    shutil.copy(exported_model, copy)
    shutil.copy(sidecar_path_for(exported_model), sidecar_path_for(copy))
    with open(copy, "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ConfigError, match="does not match its sidecar"):
        OnnxRuntimeExtractor(copy)
    sidecar_path_for(copy).unlink()
    with pytest.raises(ConfigError, match="sidecar not found"):
        OnnxRuntimeExtractor(copy)


def test_bad_thread_count(exported_model: Path) -> None:
    with pytest.raises(ConfigError, match="threads"):
        OnnxRuntimeExtractor(exported_model, threads=0)


def test_closed_extractor_refuses_work(exported_model: Path) -> None:
    extractor = OnnxRuntimeExtractor(exported_model)
    extractor.close()
    with pytest.raises(RuntimeError, match="closed"):
        extractor.extract([data.astronaut()])
