"""Backend selection: explicit ONNX Runtime, auto fallback with a one-line warning naming what is missing,
TensorRT asked for without TensorRT -> clear error. (Where the gpu extra is installed, see test_tensorrt_backend.)"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import skimage.data

from edge.backends.select import open_extractor
from okcell.gpu import gpu_extra_missing
from export.engine_sidecar import default_engine_path
from okcell.schema import ConfigError

MISSING = gpu_extra_missing()
needs_no_gpu_extra = pytest.mark.skipif(MISSING is None, reason="tensorrt and pycuda are installed here")



def _features_run(extractor: object) -> None:
    features = extractor.extract([skimage.data.astronaut()])  # type: ignore[attr-defined]
    assert features.patches.shape[0] == 1 and np.allclose(np.linalg.norm(features.embedding, axis=-1), 1, atol=1e-4)
    extractor.close()  # type: ignore[attr-defined]


def test_onnxruntime_when_asked(model: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        extractor = open_extractor(model, backend="onnxruntime", threads=1)
    assert extractor.backend_name == "onnxruntime" and not caplog.records
    _features_run(extractor)


def test_auto_without_engine_falls_back_with_one_line_warning(model: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        extractor = open_extractor(model, threads=1)
    assert extractor.backend_name == "onnxruntime"
    [record] = [r for r in caplog.records if r.name == "edge.backends.select"]
    message = record.getMessage()
    assert "\n" not in message
    assert f"no TensorRT engine at {default_engine_path(model)}" in message and "okcell build-engine" in message
    _features_run(extractor)


@needs_no_gpu_extra
def test_auto_with_engine_but_no_gpu_extra_names_what_is_missing(model: Path, caplog: pytest.LogCaptureFixture) -> None:
    engine = model.with_suffix(".engine")
    engine.write_bytes(b"engine built elsewhere")
    with caplog.at_level(logging.WARNING):
        extractor = open_extractor(model, engine_path=engine, threads=1)
    assert extractor.backend_name == "onnxruntime"
    [record] = [r for r in caplog.records if r.name == "edge.backends.select"]
    assert "gpu extra is missing" in record.getMessage()
    assert ("tensorrt" in record.getMessage()) or ("pycuda" in record.getMessage())
    extractor.close()


@needs_no_gpu_extra
def test_tensorrt_requested_without_tensorrt_is_a_clear_error(model: Path) -> None:
    model.with_suffix(".engine").write_bytes(b"engine built elsewhere")
    with pytest.raises(ConfigError, match=r"backend 'tensorrt': missing .*gpu extra"):
        open_extractor(model, backend="tensorrt")


def test_gpu_extra_report_names_each_missing_package() -> None:
    report = gpu_extra_missing()
    if report is None:
        pytest.skip("tensorrt and pycuda are installed here")
    for package in ("tensorrt", "pycuda"):
        try:
            module = __import__(package)
            present = package != "tensorrt" or hasattr(module, "Builder")
        except ImportError:
            present = False
        assert (package in report) != present


def test_unknown_backend(model: Path) -> None:
    with pytest.raises(ConfigError, match=r"backend: expected one of auto, onnxruntime, tensorrt, found 'cuda'"):
        open_extractor(model, backend="cuda")
