"""ONNX -> TensorRT engine on the target machine (TensorRT 10 API: ``build_serialized_network``).

Everything that is not a TensorRT call (option checks, the batch profile, the unsupported-node report, the engine
sidecar) is plain Python and tested on machines without TensorRT; :func:`build_engine` imports tensorrt and pycuda.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence, TextIO

from export.engine_sidecar import PRECISIONS, EngineSidecar, current_target, engine_sidecar_path
from okcell.progress import Progress
from okcell.sidecar import ModelSidecar, load_verified
from okcell.schema import ConfigError, sha256_file

if TYPE_CHECKING:
    import tensorrt as trt

MAX_OPT_LEVEL = 5


@dataclass(frozen=True)
class BuildOptions:
    """What ``okcell build-engine`` was asked for."""

    precision: str = "fp16"
    workspace_mib: int = 2048
    opt_level: int = 3
    timing_cache: Path | None = None
    calib_images: Path | None = None
    calib_cache: Path | None = None
    calib_batch: int = 8
    opt_batch: int = 1
    max_batch: int = 8
    fp32_norms: bool = False  # keep LayerNorm/Softmax in FP32 under --fp16/--int8 if FP16 parity is not good enough

    def validate(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, found {self.precision!r}")
        if self.workspace_mib < 16:
            raise ConfigError(f"--workspace: expected at least 16 MiB, found {self.workspace_mib}")
        if not 0 <= self.opt_level <= MAX_OPT_LEVEL:
            raise ConfigError(f"--opt-level: expected 0..{MAX_OPT_LEVEL}, found {self.opt_level}")
        if not 1 <= self.opt_batch <= self.max_batch:
            raise ConfigError(f"--opt-batch/--max-batch: expected 1 <= opt <= max, found {self.opt_batch} and {self.max_batch}")
        if self.calib_batch < 1:
            raise ConfigError(f"--calib-batch: expected at least 1, found {self.calib_batch}")
        if self.precision != "int8" and self.calib_images is not None:
            raise ConfigError("--calib-images is only used with --int8")
        if self.precision == "int8" and self.calib_images is None and (self.calib_cache is None or not self.calib_cache.is_file()):
            raise ConfigError("--int8 needs reference images (--calib-images DIR) or an existing calibration cache (--calib-cache FILE)")
        if self.calib_images is not None and not self.calib_images.is_dir():
            raise ConfigError(f"--calib-images {self.calib_images}: not a folder of images")

    def to_json(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self).items()}


@dataclass(frozen=True)
class BatchProfile:
    """Batch sizes of the optimisation profile (min, opt, max); None profile when the ONNX batch is static."""

    min: int
    opt: int
    max: int

    def shapes(self, chw: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        return (self.min, *chw), (self.opt, *chw), (self.max, *chw)


def batch_profile(input_name: str, shape: Sequence[int], options: BuildOptions) -> BatchProfile | None:
    """Profile for an ONNX input of ``shape`` (-1 marks a dynamic axis): only the batch axis may be dynamic."""
    if len(shape) != 4:
        raise ConfigError(f"ONNX input '{input_name}': expected 4 dimensions (B, 3, H, W), found {list(shape)}")
    if any(d < 0 for d in shape[1:]):
        raise ConfigError(
            f"ONNX input '{input_name}' has dynamic channel/height/width {list(shape)}; export with a fixed --size"
        )
    if shape[0] >= 0:
        return None
    return BatchProfile(1, options.opt_batch, options.max_batch)


@dataclass(frozen=True)
class ParserIssue:
    """One error of TensorRT's ONNX parser."""

    node_index: int
    node_name: str
    operator: str
    description: str


def unsupported_report(onnx_path: Path, issues: Sequence[ParserIssue]) -> str:
    """A readable list of the nodes TensorRT could not parse, with a hint on what to do."""
    lines = [f"{onnx_path}: TensorRT cannot parse {len(issues)} node(s):"]
    for issue in issues:
        where = f"node {issue.node_index} '{issue.node_name}' ({issue.operator})" if issue.node_index >= 0 else "model"
        lines.append(f"  - {where}: {issue.description}")
    operators = sorted({i.operator for i in issues if i.operator})
    if operators:
        lines.append(
            f"unsupported operator(s): {', '.join(operators)}. Re-export with `okcell export --opset 17` (or newer "
            "TensorRT) — TensorRT 10 parses opset 17/18 LayerNormalization and ViT attention"
        )
    return "\n".join(lines)


class BuildPhases:
    """TensorRT's build phases (the IProgressMonitor calls) as okcell progress: one ``Progress`` per top-level phase,
    its nested phases' steps shown as the detail of that line."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream
        self.steps: dict[str, int] = {}
        self.parents: dict[str, str | None] = {}
        self.shown: dict[str, Progress] = {}

    def start(self, phase: str, parent: str | None, num_steps: int) -> None:
        self.steps[phase], self.parents[phase] = num_steps, parent
        if parent is None:
            self.shown[phase] = Progress(f"build-engine: {phase}", num_steps, "steps", stream=self.stream)

    def step(self, phase: str, step: int) -> None:
        top = phase
        while (parent := self.parents.get(top)) is not None:
            top = parent
        progress = self.shown.get(top)
        if progress is None:
            return
        if top == phase:
            progress.advance(step + 1 - progress.done)
        else:
            progress.advance(0, f"{phase} {step + 1}/{self.steps.get(phase, 0)}")

    def finish(self, phase: str) -> None:
        progress = self.shown.pop(phase, None)
        if progress is not None:
            progress.close()


def _heartbeat(log: Progress, stop: threading.Event) -> None:
    """Where TensorRT has no IProgressMonitor: a line every 10 s while the build runs."""
    while not stop.wait(10.0):
        log.note("building (TensorRT measures kernels; this takes minutes on a Jetson)…")


def _logger() -> "trt.ILogger":
    import tensorrt as trt

    class BuildLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: trt.ILogger.Severity, msg: str) -> None:
            if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR, trt.ILogger.Severity.WARNING):
                print(f"TensorRT {str(severity).rsplit('.', 1)[-1]}: {msg}", file=sys.stderr, flush=True)

    return BuildLogger()


def _progress_monitor(phases: BuildPhases) -> "trt.IProgressMonitor":
    import tensorrt as trt

    class BuildProgress(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            phases.start(phase_name, parent_phase, num_steps)

        def step_complete(self, phase_name: str, step: int) -> bool:
            phases.step(phase_name, step)
            return True  # never cancel

        def phase_finish(self, phase_name: str) -> None:
            phases.finish(phase_name)

    return BuildProgress()


def _parse(onnx_path: Path, logger: "trt.ILogger") -> tuple["trt.Builder", "trt.INetworkDefinition", Any]:
    import tensorrt as trt

    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        issues = []
        for index in range(parser.num_errors):
            error = parser.get_error(index)
            issues.append(ParserIssue(int(error.node()), str(error.node_name()), str(error.node_operator()), str(error.desc())))
        raise ConfigError(unsupported_report(onnx_path, issues))
    return builder, network, parser


def _keep_norms_fp32(network: "trt.INetworkDefinition") -> int:
    """Pin normalisation, softmax and the reductions of decomposed LayerNorms to FP32; returns how many layers."""
    import tensorrt as trt

    kinds = {trt.LayerType.NORMALIZATION, trt.LayerType.SOFTMAX, trt.LayerType.REDUCE}
    pinned = 0
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        if layer.type in kinds:
            layer.precision = trt.float32
            for output in range(layer.num_outputs):
                layer.set_output_type(output, trt.float32)
            pinned += 1
    return pinned


def build_engine(onnx_path: Path, engine_path: Path, options: BuildOptions) -> EngineSidecar:
    """Parse, build and write ``engine_path`` + its sidecar; the old engine is replaced only once the new one exists."""
    from okcell.gpu import GPU_EXTRA_HINT, gpu_extra_missing

    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    model: ModelSidecar = load_verified(onnx_path)
    options.validate()
    missing = gpu_extra_missing()
    if missing:
        raise ConfigError(f"building a TensorRT engine needs TensorRT and pycuda on this machine: missing {missing}; {GPU_EXTRA_HINT}")
    import pycuda.driver as cuda
    import tensorrt as trt

    target = current_target()
    log = Progress("build-engine")
    log.note(f"{onnx_path.name} -> {engine_path.name}: {options.precision}, {target.describe()}")
    logger = _logger()
    builder, network, _parser = _parse(onnx_path, logger)

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mib << 20)
    config.builder_optimization_level = options.opt_level
    if options.precision in ("fp16", "int8"):
        if not builder.platform_has_fast_fp16:
            log.note(f"warning: {target.gpu_name} has no fast FP16; the engine may be slower than expected")
        config.set_flag(trt.BuilderFlag.FP16)
    if options.fp32_norms and options.precision != "fp32":
        config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
        log.note(f"kept {_keep_norms_fp32(network)} normalisation/softmax layers in FP32")

    input_tensor = network.get_input(0)
    input_shape = [input_tensor.shape[i] for i in range(len(input_tensor.shape))]
    profile = batch_profile(input_tensor.name, input_shape, options)
    if profile is not None:
        trt_profile = builder.create_optimization_profile()
        trt_profile.set_shape(input_tensor.name, *(trt.Dims(list(s)) for s in profile.shapes(input_shape[1:])))
        config.add_optimization_profile(trt_profile)
    batch = (profile.min, profile.opt, profile.max) if profile else (1, 1, 1)

    context = None
    calibrator = None
    if options.precision == "int8":
        from export.int8_calibration import CalibrationFeed, entropy_calibrator

        cuda.init()
        context = cuda.Device(0).retain_primary_context()
        context.push()
        calib_batch = options.calib_batch if profile else 1
        cache_path = options.calib_cache or engine_path.with_suffix(".calib")
        feed = CalibrationFeed(model, cache_path, options.calib_images, calib_batch)
        calibrator = entropy_calibrator(feed)
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = calibrator
        if profile is not None:
            calibration_profile = builder.create_optimization_profile()
            shape = trt.Dims([calib_batch, *input_shape[1:]])
            calibration_profile.set_shape(input_tensor.name, shape, shape, shape)
            config.set_calibration_profile(calibration_profile)

    timing_cache_bytes = options.timing_cache.read_bytes() if options.timing_cache and options.timing_cache.is_file() else b""
    timing_cache = config.create_timing_cache(timing_cache_bytes)
    if not config.set_timing_cache(timing_cache, ignore_mismatch=False):
        log.note(f"timing cache {options.timing_cache} was made for another GPU/TensorRT; starting a new one")
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)

    stop = threading.Event()
    if hasattr(trt, "IProgressMonitor"):
        config.progress_monitor = _progress_monitor(BuildPhases())
    else:
        threading.Thread(target=_heartbeat, args=(log, stop), daemon=True).start()
    try:
        serialized = builder.build_serialized_network(network, config)
    finally:
        stop.set()
        if context is not None:
            context.pop()
    if serialized is None:
        raise ConfigError(f"{onnx_path}: TensorRT could not build an engine (see the TensorRT errors above)")

    if options.timing_cache is not None:
        _write_atomic(options.timing_cache, bytes(memoryview(config.get_timing_cache().serialize())))
    _write_atomic(engine_path, bytes(memoryview(serialized)))
    info = EngineSidecar(
        engine_file=engine_path.name, engine_sha256=sha256_file(engine_path), onnx_file=onnx_path.name,
        onnx_sha256=model.onnx_sha256, tensorrt_version=target.tensorrt_version, gpu_name=target.gpu_name,
        compute_capability=target.compute_capability, precision=options.precision, input_size=model.input_size,
        batch=batch, built_at=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        build_options=options.to_json(),
    )
    info.save(engine_sidecar_path(engine_path))
    log.note(f"wrote {engine_path} ({engine_path.stat().st_size / 2**20:.1f} MiB) and {engine_sidecar_path(engine_path).name}")
    log.close()
    return info


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
