"""A facebookresearch/dinov2 torch-hub state dict (``dinov2_vits14_pretrain.pth``, ``*_reg4_pretrain.pth``, …).

The architecture is inferred from the tensor shapes; ``attn.qkv`` is split into query, key and value."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from export.sources.roles import config_from_roles
from okcell.schema import ConfigError

if TYPE_CHECKING:
    import torch

WRAPPER_KEYS = ("teacher", "model", "state_dict")  # training checkpoints nest the backbone one level down
KEY_PREFIXES = ("backbone.", "module.")
_BLOCK = r"blocks\.(?:\d+\.)?(\d+)\."  # also chunked checkpoints (blocks.CHUNK.N.*, N global)
FACEBOOK_KEY_ROLES: tuple[tuple[str, str], ...] = (
    (r"cls_token", "cls_token"),
    (r"mask_token", "mask_token"),
    (r"pos_embed", "position_embeddings"),
    (r"register_tokens", "register_tokens"),
    (r"patch_embed\.proj\.(weight|bias)", r"patch.\1"),
    (r"norm\.(weight|bias)", r"norm.\1"),
    (_BLOCK + r"norm([12])\.(weight|bias)", r"blocks.\1.norm\2.\3"),
    (_BLOCK + r"attn\.proj\.(weight|bias)", r"blocks.\1.attn_out.\2"),
    (_BLOCK + r"ls([12])\.gamma", r"blocks.\1.ls\2"),
    (_BLOCK + r"mlp\.fc([12])\.(weight|bias)", r"blocks.\1.fc\2.\3"),
    (_BLOCK + r"mlp\.w12\.(weight|bias)", r"blocks.\1.swiglu_in.\2"),
    (_BLOCK + r"mlp\.w3\.(weight|bias)", r"blocks.\1.swiglu_out.\2"),
)
_COMPILED = tuple((re.compile(pattern + "$"), role) for pattern, role in FACEBOOK_KEY_ROLES)
_QKV = re.compile(_BLOCK + r"attn\.qkv\.(weight|bias)$")


def facebook_tensors_to_roles(state: dict[str, "torch.Tensor"], source: str) -> dict[str, "torch.Tensor"]:
    """facebookresearch key layout -> role tensors; unknown keys raise ConfigError naming them."""
    tensors: dict[str, torch.Tensor] = {}
    unmapped: list[str] = []
    for key, tensor in state.items():
        key = next((key[len(p):] for p in KEY_PREFIXES if key.startswith(p)), key)
        qkv = _QKV.match(key)
        if qkv:
            if tensor.shape[0] % 3:
                raise ConfigError(f"{source}: {key} has {tensor.shape[0]} rows, expected 3 x hidden size")
            for part, value in zip("qkv", tensor.chunk(3, dim=0)):
                tensors[f"blocks.{qkv[1]}.{part}.{qkv[2]}"] = value
            continue
        role = next((pattern.sub(target, key) for pattern, target in _COMPILED if pattern.match(key)), None)
        if role is None:
            unmapped.append(key)
        else:
            tensors[role] = tensor
    if unmapped:
        raise ConfigError(f"{source}: tensor(s) that are not part of a DINOv2 backbone: {', '.join(sorted(unmapped))}")
    return tensors


def _read(path: Path) -> dict[str, "torch.Tensor"]:
    import torch

    try:
        loaded = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and torch errors differ by file damage
        raise ConfigError(f"{path}: cannot read as a torch state dict ({type(exc).__name__}: {exc})") from None
    for wrapper in WRAPPER_KEYS:
        if isinstance(loaded, dict) and isinstance(loaded.get(wrapper), dict) and "cls_token" not in loaded:
            loaded = loaded[wrapper]
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise ConfigError(f"{path}: expected a dict of tensors (a DINOv2 state dict), found {type(loaded).__name__}")
    return loaded


def load_torchhub(path: Path) -> tuple[Any, "dict[str, torch.Tensor]", dict[str, Any]]:
    """(config, role tensors, source info) of a facebookresearch DINOv2 ``.pth``."""
    tensors = facebook_tensors_to_roles(_read(path), str(path))
    config = config_from_roles(tensors, str(path))
    return config, tensors, {"kind": "torchhub", "name": path.stem, "path": str(path)}
