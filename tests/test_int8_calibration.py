"""INT8 calibration feed: batches (shape, order, runtime preprocessing), cache written, reused without images."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from okcell.images import list_images, read_image
from okcell.preprocess import Preprocessor
from export.int8_calibration import CalibrationBatches, CalibrationFeed
from okcell.sidecar import ModelSidecar
from okcell.schema import ConfigError

SIDECAR = ModelSidecar(
    onnx_file="model.onnx", onnx_sha256="a" * 64, input_size=(224, 224), patch_size=14, feature_dim=384,
    embedding_dim=384, layers=(12,), layer_fusion="concat", dynamic_batch=True, opset=17, model_source={},
)
TENSORRT_CACHE = b"TRT-100300-EntropyCalibration2\npixel_values: 3c010a14\npatch_tokens: 3d8f5c29\n"


def calibrate_like_tensorrt(feed: CalibrationFeed) -> tuple[bytes, int]:
    """The order in which TensorRT's builder calls an IInt8EntropyCalibrator2: cache first, else every batch then
    write. Returns the cache and the number of batches consumed."""
    cached = feed.read_cache()
    if cached is not None:
        return cached, 0
    served = 0
    while (batch := feed.next_batch()) is not None:
        assert batch.shape == feed.input_shape and batch.dtype == np.float32
        served += 1
    feed.write_cache(TENSORRT_CACHE)
    return TENSORRT_CACHE, served


@pytest.fixture()
def reference_images(demo_images: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "ok"
    shutil.copytree(demo_images / "train" / "ok", folder)
    return folder


def test_batches_are_runtime_preprocessing_in_file_order(reference_images: Path) -> None:
    paths = list_images(reference_images)
    batches = CalibrationBatches(reference_images, SIDECAR, batch_size=8)
    assert batches.num_batches == len(paths) // 8 and batches.images_read == 0
    runtime = Preprocessor(SIDECAR)
    collected = list(batches)
    assert [b.shape for b in collected] == [(8, 3, 224, 224)] * (len(paths) // 8)
    for index, batch in enumerate(collected):
        for slot in range(8):
            expected = runtime.frame(read_image(paths[index * 8 + slot]))
            np.testing.assert_array_equal(batch[slot], expected)
    assert batches.images_read == len(batches.used_paths) == (len(paths) // 8) * 8


def test_cache_written_then_reused_without_touching_images(reference_images: Path, tmp_path: Path) -> None:
    cache = tmp_path / "model.calib"
    first = CalibrationFeed(SIDECAR, cache, reference_images, batch_size=4)
    data, served = calibrate_like_tensorrt(first)
    assert served == len(list_images(reference_images)) // 4 and cache.read_bytes() == TENSORRT_CACHE
    assert first.batches.images_read == served * 4

    second = CalibrationFeed(SIDECAR, cache, reference_images, batch_size=4)
    assert calibrate_like_tensorrt(second) == (TENSORRT_CACHE, 0)
    assert second.batches.images_read == 0 and second.batches_served == 0

    shutil.rmtree(reference_images)  # on the line PC the reference images may be gone: the cache alone suffices
    third = CalibrationFeed(SIDECAR, cache, None, batch_size=4)
    assert calibrate_like_tensorrt(third) == (TENSORRT_CACHE, 0)


def test_cache_ignored_for_other_model_batch_or_images(reference_images: Path, tmp_path: Path) -> None:
    cache = tmp_path / "model.calib"
    calibrate_like_tensorrt(CalibrationFeed(SIDECAR, cache, reference_images, batch_size=4))
    other_model = ModelSidecar(**{**SIDECAR.__dict__, "onnx_sha256": "b" * 64})
    assert CalibrationFeed(other_model, cache, reference_images, batch_size=4).read_cache() is None
    assert CalibrationFeed(SIDECAR, cache, reference_images, batch_size=2).read_cache() is None
    first = list_images(reference_images)[0]
    os.utime(first, ns=(first.stat().st_atime_ns, first.stat().st_mtime_ns + 10**9))
    feed = CalibrationFeed(SIDECAR, cache, reference_images, batch_size=4)
    assert feed.read_cache() is None
    _, served = calibrate_like_tensorrt(feed)
    assert served > 0


def test_errors_name_the_folder_or_file(reference_images: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no usable INT8 calibration cache .* --calib-images"):
        CalibrationFeed(SIDECAR, tmp_path / "none.calib", None)
    few = tmp_path / "few"
    few.mkdir()
    for path in list_images(reference_images)[:3]:
        shutil.copy(path, few)
    with pytest.raises(ConfigError, match=r"few: 3 image\(s\), INT8 calibration needs at least 8"):
        CalibrationBatches(few, SIDECAR, batch_size=8)
    with pytest.raises(ConfigError, match="not a folder of images"):
        CalibrationBatches(tmp_path / "missing", SIDECAR, batch_size=1)
    (few / "0000_broken.png").write_bytes(b"not a png")
    with pytest.raises(ConfigError, match=r"calibration image .*0000_broken\.png: not a readable image"):
        list(CalibrationBatches(few, SIDECAR, batch_size=2))
