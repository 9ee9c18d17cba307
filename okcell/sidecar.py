"""The JSON sidecar written next to an exported ONNX: everything a runtime needs to feed and read the model."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from okcell import __version__
from okcell.schema import ConfigError, read_json, require_format, require_keys, sha256_file, typed

SIDECAR_FORMAT = 1
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelSidecar:
    """Description of one exported feature model (``<name>.onnx`` + ``<name>.json``)."""

    onnx_file: str
    onnx_sha256: str
    input_size: tuple[int, int]  # (height, width), multiples of patch_size
    patch_size: int
    feature_dim: int  # channels of the patch tokens after layer fusion
    embedding_dim: int
    layers: tuple[int, ...]  # 1-based transformer block indices
    layer_fusion: str  # "concat" or "mean"
    dynamic_batch: bool
    opset: int
    model_source: dict[str, Any]  # kind, name, path, hidden_size, num_layers, num_register_tokens
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    colour_order: str = "RGB"
    input_name: str = "pixel_values"
    patch_output: str = "patch_tokens"
    embedding_output: str = "embedding"
    okcell_version: str = __version__
    format_version: int = SIDECAR_FORMAT
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def patch_grid(self) -> tuple[int, int]:
        """(rows, cols) of patch tokens."""
        return self.input_size[0] // self.patch_size, self.input_size[1] // self.patch_size

    @property
    def num_patches(self) -> int:
        rows, cols = self.patch_grid
        return rows * cols

    @property
    def sha256(self) -> str:
        """Identity of the model a recipe or engine is bound to (the ONNX hash)."""
        return self.onnx_sha256

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["patch_grid"] = list(self.patch_grid)
        return data

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> "ModelSidecar":
        """Read and validate a sidecar; raises ConfigError naming the file and field."""
        data = read_json(path, missing="model sidecar not found (export the model with `okcell export`)")
        required = {
            "onnx_file", "onnx_sha256", "input_size", "patch_size", "feature_dim", "embedding_dim",
            "layers", "layer_fusion", "dynamic_batch", "opset", "model_source", "mean", "std",
            "colour_order", "input_name", "patch_output", "embedding_output", "okcell_version", "format_version",
        }
        require_keys(data, required, {"patch_grid", "extra"}, path)
        require_format(data, SIDECAR_FORMAT, path)
        size = typed(data, "input_size", list, path)
        patch = typed(data, "patch_size", int, path)
        if len(size) != 2 or any(not isinstance(v, int) or v <= 0 or v % patch for v in size):
            raise ConfigError(f"{path}: field 'input_size' must be [height, width], multiples of {patch}; found {size}")
        if typed(data, "layer_fusion", str, path) not in ("concat", "mean"):
            raise ConfigError(f"{path}: field 'layer_fusion' must be 'concat' or 'mean', found {data['layer_fusion']!r}")
        if typed(data, "colour_order", str, path) not in ("RGB", "BGR"):
            raise ConfigError(f"{path}: field 'colour_order' must be 'RGB' or 'BGR', found {data['colour_order']!r}")
        for key in ("mean", "std"):
            if len(typed(data, key, list, path)) != 3:
                raise ConfigError(f"{path}: field '{key}' must hold 3 numbers, found {data[key]}")
        layers = typed(data, "layers", list, path)
        if not layers or any(not isinstance(v, int) or v < 1 for v in layers):
            raise ConfigError(f"{path}: field 'layers' must be a non-empty list of 1-based block indices, found {layers}")
        for key in ("feature_dim", "embedding_dim", "opset"):
            typed(data, key, int, path)
        typed(data, "dynamic_batch", bool, path)
        typed(data, "model_source", dict, path)
        for key in ("onnx_file", "onnx_sha256", "input_name", "patch_output", "embedding_output", "okcell_version"):
            typed(data, key, str, path)
        data.pop("patch_grid", None)
        return cls(
            **{
                **data,
                "input_size": (size[0], size[1]),
                "layers": tuple(layers),
                "mean": tuple(float(v) for v in data["mean"]),
                "std": tuple(float(v) for v in data["std"]),
            }
        )


def sidecar_path_for(onnx_path: Path) -> Path:
    """``model.onnx`` -> ``model.json``."""
    return Path(onnx_path).with_suffix(".json")


def load_verified(onnx_path: Path) -> ModelSidecar:
    """Load the sidecar of ``onnx_path`` and check that it describes exactly this ONNX file."""
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise ConfigError(f"{onnx_path}: ONNX model not found")
    sidecar = ModelSidecar.load(sidecar_path_for(onnx_path))
    actual = sha256_file(onnx_path)
    if actual != sidecar.onnx_sha256:
        raise ConfigError(
            f"{onnx_path}: sha256 {actual[:12]}… does not match its sidecar ({sidecar.onnx_sha256[:12]}…); "
            "the ONNX was replaced or edited — re-export it with `okcell export`"
        )
    return sidecar
