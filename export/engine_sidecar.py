"""The JSON sidecar of a TensorRT engine (``model.engine`` -> ``model.engine.json``) and the load-time checks.

A TensorRT engine only runs with the TensorRT version and GPU it was built with, and only means something for the
ONNX it was built from. :func:`verify_engine` refuses any other combination with a message saying how to rebuild.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from okcell import __version__
from okcell.schema import ConfigError, read_json, require_format, require_keys, sha256_file, typed

ENGINE_SIDECAR_FORMAT = 1
PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class BuildTarget:
    """What an engine is tied to: the TensorRT library and the GPU model."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: tuple[int, int]

    def describe(self) -> str:
        major, minor = self.compute_capability
        return f"TensorRT {self.tensorrt_version} on '{self.gpu_name}' (sm_{major}{minor})"


@dataclass(frozen=True)
class EngineSidecar:
    """Description of one engine file, written by ``okcell build-engine`` next to it."""

    engine_file: str
    engine_sha256: str
    onnx_file: str
    onnx_sha256: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: tuple[int, int]
    precision: str  # "fp32", "fp16" or "int8"
    input_size: tuple[int, int]  # (height, width)
    batch: tuple[int, int, int]  # (min, opt, max) batch of the optimisation profile; (1, 1, 1) if static
    built_at: str  # ISO 8601 UTC
    build_options: dict[str, Any] = field(default_factory=dict)
    okcell_version: str = __version__
    format_version: int = ENGINE_SIDECAR_FORMAT

    @property
    def target(self) -> BuildTarget:
        return BuildTarget(self.tensorrt_version, self.gpu_name, self.compute_capability)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> "EngineSidecar":
        """Read and validate an engine sidecar; raises ConfigError naming the file and field."""
        data = read_json(path, missing="engine sidecar not found (engines are made by `okcell build-engine`)")
        required = {
            "engine_file", "engine_sha256", "onnx_file", "onnx_sha256", "tensorrt_version", "gpu_name",
            "compute_capability", "precision", "input_size", "batch", "built_at", "okcell_version", "format_version",
        }
        require_keys(data, required, {"build_options"}, path)
        require_format(data, ENGINE_SIDECAR_FORMAT, path)
        for key in ("engine_file", "engine_sha256", "onnx_file", "onnx_sha256", "tensorrt_version", "gpu_name",
                    "built_at", "okcell_version"):
            typed(data, key, str, path)
        if typed(data, "precision", str, path) not in PRECISIONS:
            raise ConfigError(f"{path}: field 'precision' must be one of {', '.join(PRECISIONS)}, found {data['precision']!r}")
        _int_list(data, "compute_capability", 2, path)
        _int_list(data, "input_size", 2, path)
        batch = _int_list(data, "batch", 3, path)
        if not 1 <= batch[0] <= batch[1] <= batch[2]:
            raise ConfigError(f"{path}: field 'batch' must be [min, opt, max] with 1 <= min <= opt <= max, found {batch}")
        if "build_options" in data:
            typed(data, "build_options", dict, path)
        return cls(
            **{
                **data,
                "compute_capability": tuple(data["compute_capability"]),
                "input_size": tuple(data["input_size"]),
                "batch": tuple(batch),
            }
        )


def _int_list(data: dict[str, Any], key: str, length: int, source: Path) -> list[int]:
    value = typed(data, key, list, source)
    if len(value) != length or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in value):
        raise ConfigError(f"{source}: field '{key}' must be a list of {length} non-negative integers, found {value}")
    return value


def engine_sidecar_path(engine_path: Path) -> Path:
    """``model.engine`` -> ``model.engine.json`` (``model.json`` is the ONNX's own sidecar)."""
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".json")


def default_engine_path(onnx_path: Path) -> Path:
    """Where ``okcell build-engine`` writes the engine of ``model.onnx`` unless told otherwise."""
    return Path(onnx_path).with_suffix(".engine")


def rebuild_hint(engine_path: Path, onnx_path: Path | str, precision: str = "fp16") -> str:
    return (
        f"rebuild it on this machine: okcell build-engine {onnx_path} --{precision} -o {engine_path} "
        "(engines are not portable between TensorRT versions or GPU models)"
    )


def verify_engine(engine_path: Path, onnx_path: Path, onnx_sha256: str, target: BuildTarget) -> EngineSidecar:
    """Check that ``engine_path`` was built from this ONNX, with this TensorRT, for this GPU, and is intact.

    ``onnx_sha256`` is the verified hash of the model the runtime uses (``load_verified(onnx_path).onnx_sha256``)."""
    engine_path = Path(engine_path)
    if not engine_path.is_file():
        raise ConfigError(f"{engine_path}: TensorRT engine not found; {rebuild_hint(engine_path, onnx_path)}")
    sidecar_path = engine_sidecar_path(engine_path)
    if not sidecar_path.is_file():
        raise ConfigError(
            f"{sidecar_path}: engine sidecar not found, so the engine's TensorRT version, GPU and model are unknown; "
            + rebuild_hint(engine_path, onnx_path)
        )
    info = EngineSidecar.load(sidecar_path)
    hint = rebuild_hint(engine_path, onnx_path, info.precision)
    if info.onnx_sha256 != onnx_sha256:
        raise ConfigError(
            f"{engine_path}: built from a different model ({info.onnx_file}, sha256 {info.onnx_sha256[:12]}…) "
            f"than {onnx_path} (sha256 {onnx_sha256[:12]}…); {hint}"
        )
    if info.tensorrt_version != target.tensorrt_version:
        raise ConfigError(
            f"{engine_path}: built with TensorRT {info.tensorrt_version}, this machine has TensorRT "
            f"{target.tensorrt_version}; {hint}"
        )
    if info.compute_capability != target.compute_capability or info.gpu_name != target.gpu_name:
        raise ConfigError(f"{engine_path}: built for {info.target.describe()}, this machine is {target.describe()}; {hint}")
    actual = sha256_file(engine_path)
    if actual != info.engine_sha256:
        raise ConfigError(
            f"{engine_path}: sha256 {actual[:12]}… does not match its sidecar ({info.engine_sha256[:12]}…); "
            f"the engine file was replaced or damaged; {hint}"
        )
    return info


def current_target(device: int = 0) -> BuildTarget:
    """TensorRT version and GPU of this machine (imports tensorrt and pycuda)."""
    import pycuda.driver as cuda
    import tensorrt as trt

    cuda.init()
    gpu = cuda.Device(device)
    major, minor = gpu.compute_capability()
    return BuildTarget(tensorrt_version=trt.__version__, gpu_name=gpu.name(), compute_capability=(major, minor))
