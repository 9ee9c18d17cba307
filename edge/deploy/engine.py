"""The engine step of an install: build or reuse the TensorRT engine of a release for this GPU, or say why not.

An engine is reused from another installed release when ``export.engine_sidecar.verify_engine`` accepts it (same
ONNX sha256, TensorRT version and GPU, engine intact) and it has the release's precision and input size; otherwise
it is built here (``export.tensorrt_build``). Without TensorRT the step is skipped with the reason, and the cell runs
on ONNX Runtime — unless its cell.yaml asks for ``backend: tensorrt``, which then fails the install.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from edge.deploy.bundle import ENGINE_FILE, MODEL_FILE, InstallError, ReleaseManifest
from export.engine_sidecar import BuildTarget, current_target, engine_sidecar_path, verify_engine
from okcell.gpu import GPU_EXTRA_HINT, gpu_extra_missing
from okcell.schema import ConfigError
from okcell.sidecar import ModelSidecar, load_verified

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineStep:
    engine: Path | None  # the engine the cell will use, None for ONNX Runtime
    note: str  # what was done, or why nothing was


def prepare_engine(release: Path, manifest: ReleaseManifest, backend: str, others: list[Path],
                   timing_cache: Path) -> EngineStep:
    """Give ``release`` an engine for this GPU (reused from one of ``others`` or built), or skip with the reason."""
    if backend == "onnxruntime":
        return EngineStep(None, "skipped: cell.yaml selects backend onnxruntime")
    missing = gpu_extra_missing()
    if missing:
        if backend == "tensorrt":
            raise InstallError(f"engine build failed: the release's cell.yaml selects backend tensorrt, but TensorRT "
                               f"cannot run on this machine: missing {missing}; {GPU_EXTRA_HINT}")
        return EngineStep(None, f"skipped: no TensorRT on this machine (missing {missing}); the cell runs on ONNX Runtime")
    onnx, engine = release / MODEL_FILE, release / ENGINE_FILE
    sidecar = load_verified(onnx)
    target = current_target()
    for other in others:
        if _usable(other / ENGINE_FILE, onnx, sidecar, target, manifest.engine_precision):
            shutil.copyfile(other / ENGINE_FILE, engine)
            shutil.copyfile(engine_sidecar_path(other / ENGINE_FILE), engine_sidecar_path(engine))
            verify_engine(engine, onnx, sidecar.onnx_sha256, target)
            return EngineStep(engine, f"reused the {manifest.engine_precision} engine of release {other.name} "
                                      f"({target.describe()})")
    from export.tensorrt_build import BuildOptions, build_engine

    try:
        build_engine(onnx, engine, BuildOptions(precision=manifest.engine_precision, timing_cache=timing_cache))
    except Exception as exc:  # a parser, builder or CUDA failure: the release cannot run here
        raise InstallError(f"engine build failed for {onnx} ({manifest.engine_precision}, {target.describe()}): "
                           f"{type(exc).__name__}: {exc}") from None
    return EngineStep(engine, f"built a {manifest.engine_precision} engine for {target.describe()}")


def _usable(engine: Path, onnx: Path, sidecar: ModelSidecar, target: BuildTarget, precision: str) -> bool:
    if not engine.is_file():
        return False
    try:
        info = verify_engine(engine, onnx, sidecar.onnx_sha256, target)
    except ConfigError as exc:
        log.info("engine %s not reused: %s", engine, exc)
        return False
    return info.precision == precision and info.input_size == sidecar.input_size
