"""Backend selection (config ``backend: auto|tensorrt|onnxruntime``).

``auto`` takes TensorRT when an engine exists and the ``gpu`` extra (tensorrt + pycuda) imports, and otherwise
ONNX Runtime with a one-line warning saying why. ``tensorrt`` asked for explicitly never falls back. Every choice is
logged in one line: ``backend NAME: why``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from okcell.extractor import FeatureExtractor
from export.engine_sidecar import default_engine_path
from okcell.gpu import GPU_EXTRA_HINT, gpu_extra_missing
from okcell.schema import ConfigError
from okcell.names import BACKENDS

log = logging.getLogger(__name__)



def open_extractor(
    onnx_path: Path | str, backend: str = "auto", engine_path: Path | str | None = None, threads: int | None = None
) -> FeatureExtractor:
    """The feature extractor for ``onnx_path``. ``engine_path`` defaults to ``MODEL.engine`` next to the ONNX;
    ``threads`` applies to ONNX Runtime only."""
    if backend not in BACKENDS:
        raise ConfigError(f"backend: expected one of {', '.join(BACKENDS)}, found {backend!r}")
    onnx_path = Path(onnx_path)
    engine = Path(engine_path) if engine_path is not None else default_engine_path(onnx_path)
    if backend == "onnxruntime":
        log.info("backend onnxruntime: asked for (CPU)")
        return _onnxruntime(onnx_path, threads)
    missing = gpu_extra_missing()
    if backend == "tensorrt":
        if missing:
            raise ConfigError(f"backend 'tensorrt': missing {missing}; {GPU_EXTRA_HINT}")
        if not engine.is_file():
            raise ConfigError(
                f"backend 'tensorrt': engine {engine} not found; build it on this machine: "
                f"okcell build-engine {onnx_path} -o {engine}"
            )
        extractor = _tensorrt(engine, onnx_path)
        log.info("backend tensorrt: asked for, engine %s", engine)
        return extractor
    if not engine.is_file():
        reason = f"no TensorRT engine at {engine} (build one with `okcell build-engine {onnx_path}`)"
    elif missing:
        reason = f"engine {engine.name} found but the gpu extra is missing: {missing}"
    else:
        try:
            extractor = _tensorrt(engine, onnx_path)
        except ConfigError as exc:
            reason = f"engine not usable: {exc}"
        else:
            log.info("backend tensorrt: auto found engine %s and the gpu extra", engine)
            return extractor
    log.warning("backend onnxruntime: auto fell back to ONNX Runtime (CPU): %s", " ".join(reason.split()))
    return _onnxruntime(onnx_path, threads)


def _onnxruntime(onnx_path: Path, threads: int | None) -> FeatureExtractor:
    from edge.backends.onnxruntime_backend import OnnxRuntimeExtractor

    return OnnxRuntimeExtractor(onnx_path, threads)


def _tensorrt(engine: Path, onnx_path: Path) -> FeatureExtractor:
    from edge.backends.tensorrt_backend import TensorRTExtractor

    return TensorRTExtractor(engine, onnx_path)
