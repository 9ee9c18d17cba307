"""A Hugging Face DINOv2 folder: ``config.json`` + ``model.safetensors`` (or sharded) or ``pytorch_model.bin``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from export.sources.roles import role_of_hf_key
from okcell.schema import ConfigError, read_json

if TYPE_CHECKING:
    import torch

MODEL_TYPES = ("dinov2", "dinov2_with_registers")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
KEY_PREFIXES = ("dinov2.", "backbone.")  # Dinov2ForImageClassification / backbone wrappers
HEAD_PREFIXES = ("classifier.",)


def _read_config(folder: Path) -> Any:
    from transformers import Dinov2Config, Dinov2WithRegistersConfig

    path = folder / "config.json"
    if not path.is_file():
        raise ConfigError(f"{folder}: no config.json; expected a Hugging Face DINOv2 folder (config.json + weights)")
    data = read_json(path)
    model_type = data.get("model_type") if isinstance(data, dict) else None
    if model_type not in MODEL_TYPES:
        raise ConfigError(f"{path}: model_type {model_type!r}; expected one of {', '.join(MODEL_TYPES)}")
    config_class = Dinov2WithRegistersConfig if model_type == "dinov2_with_registers" else Dinov2Config
    return config_class.from_dict(data)


def _weights_file(folder: Path) -> Path:
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise ConfigError(f"{folder}: no weights; expected one of {', '.join(WEIGHT_FILES)}")


def _read_state_dict(path: Path) -> dict[str, "torch.Tensor"]:
    import torch

    if path.name.endswith(".index.json"):
        index = read_json(path)
        shards = sorted(set(index.get("weight_map", {}).values())) if isinstance(index, dict) else []
        if not shards:
            raise ConfigError(f"{path}: no weight_map in the shard index")
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(_read_state_dict(path.parent / shard))
        return state
    if not path.is_file():
        raise ConfigError(f"{path}: weight shard not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return dict(load_file(str(path)))
        loaded = torch.load(str(path), map_location="cpu", weights_only=True)
    except ConfigError:
        raise
    except Exception as exc:  # corrupt or truncated files raise many different types
        raise ConfigError(f"{path}: cannot read the weights ({type(exc).__name__}: {exc})") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a state dict, found {type(loaded).__name__}")
    return loaded


def load_huggingface(folder: Path) -> tuple[Any, "dict[str, torch.Tensor]", dict[str, Any]]:
    """(config, role tensors, source info) of a Hugging Face DINOv2 folder (transformers 4.x or 5.x key names)."""
    config = _read_config(folder)
    weights = _weights_file(folder)
    tensors: dict[str, torch.Tensor] = {}
    unmapped: list[str] = []
    for key, tensor in _read_state_dict(weights).items():
        key = next((key[len(p):] for p in KEY_PREFIXES if key.startswith(p)), key)
        if key.startswith(HEAD_PREFIXES):
            continue
        role = role_of_hf_key(key)
        if role is None:
            unmapped.append(key)
        else:
            tensors[role] = tensor
    if unmapped:
        raise ConfigError(f"{weights}: tensor(s) that are not part of a DINOv2 backbone: {', '.join(sorted(unmapped))}")
    name = getattr(config, "_name_or_path", "") or folder.name
    info = {"kind": "huggingface", "name": str(name), "path": str(folder), "weights_file": str(weights)}
    return config, tensors, info
