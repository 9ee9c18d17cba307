"""Canonical, version-independent names ("roles") for DINOv2 tensors, and filling a transformers model from them.

Every source (embedded ONNX, Hugging Face folder, torch-hub ``.pth``) translates its tensors to roles; the target
``Dinov2Model``'s own state_dict keys are translated the same way, so transformers 4.x (``attention.attention.query``,
``mlp.weights_in``) and 5.x (``attention.q_proj``, ``mlp.gate_proj``) are both filled without a hard-coded key list.

Roles: ``cls_token``, ``mask_token``, ``position_embeddings``, ``register_tokens``, ``patch.{weight,bias}``,
``norm.{weight,bias}`` and per block ``blocks.N.{norm1,q,k,v,attn_out,norm2,fc1,fc2,swiglu_gate,swiglu_up,swiglu_out}.
{weight,bias}`` plus ``blocks.N.ls1`` / ``blocks.N.ls2`` (layer scale). Linear weights are torch layout (out, in).
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any, Mapping

from okcell.schema import ConfigError

if TYPE_CHECKING:
    import torch

_LAYER = r"encoder\.layer\.(\d+)\."
HF_KEY_ROLES: tuple[tuple[str, str], ...] = (
    (r"embeddings\.cls_token", "cls_token"),
    (r"embeddings\.mask_token", "mask_token"),
    (r"embeddings\.position_embeddings", "position_embeddings"),
    (r"embeddings\.register_tokens", "register_tokens"),
    (r"embeddings\.patch_embeddings\.projection\.(weight|bias)", r"patch.\1"),
    (r"layernorm\.(weight|bias)", r"norm.\1"),
    (_LAYER + r"norm([12])\.(weight|bias)", r"blocks.\1.norm\2.\3"),
    (_LAYER + r"attention\.(?:attention\.query|q_proj)\.(weight|bias)", r"blocks.\1.q.\2"),
    (_LAYER + r"attention\.(?:attention\.key|k_proj)\.(weight|bias)", r"blocks.\1.k.\2"),
    (_LAYER + r"attention\.(?:attention\.value|v_proj)\.(weight|bias)", r"blocks.\1.v.\2"),
    (_LAYER + r"attention\.(?:output\.dense|o_proj)\.(weight|bias)", r"blocks.\1.attn_out.\2"),
    (_LAYER + r"layer_scale([12])\.lambda1", r"blocks.\1.ls\2"),
    (_LAYER + r"mlp\.fc([12])\.(weight|bias)", r"blocks.\1.fc\2.\3"),
    (_LAYER + r"mlp\.weights_in\.(weight|bias)", r"blocks.\1.swiglu_in.\2"),
    (_LAYER + r"mlp\.gate_proj\.(weight|bias)", r"blocks.\1.swiglu_gate.\2"),
    (_LAYER + r"mlp\.up_proj\.(weight|bias)", r"blocks.\1.swiglu_up.\2"),
    (_LAYER + r"mlp\.(?:weights_out|down_proj)\.(weight|bias)", r"blocks.\1.swiglu_out.\2"),
)
_COMPILED = tuple((re.compile(pattern + "$"), role) for pattern, role in HF_KEY_ROLES)
_FUSED_SWIGLU = re.compile(r"blocks\.(\d+)\.swiglu_in\.(weight|bias)$")
HEAD_DIM = 64  # every DINOv2 size (S/B/L/g) uses 64-channel attention heads


def role_of_hf_key(key: str) -> str | None:
    """transformers Dinov2 state_dict key (4.x or 5.x naming) -> role, or None."""
    for pattern, role in _COMPILED:
        if pattern.match(key):
            return pattern.sub(role, key)
    return None


def split_fused_swiglu(tensors: dict[str, "torch.Tensor"]) -> dict[str, "torch.Tensor"]:
    """Replace fused ``swiglu_in`` (gate rows first, then up rows) by ``swiglu_gate`` + ``swiglu_up``."""
    result: dict[str, torch.Tensor] = {}
    for role, tensor in tensors.items():
        match = _FUSED_SWIGLU.match(role)
        if match:
            gate, up = tensor.chunk(2, dim=0)
            result[f"blocks.{match[1]}.swiglu_gate.{match[2]}"] = gate
            result[f"blocks.{match[1]}.swiglu_up.{match[2]}"] = up
        else:
            result[role] = tensor
    return result


def _tensor_for(role: str, tensors: Mapping[str, "torch.Tensor"]) -> "torch.Tensor | None":
    import torch

    if role in tensors:
        return tensors[role]
    match = _FUSED_SWIGLU.match(role)  # a transformers 4.x target keeps gate and up fused
    if match:
        gate = tensors.get(f"blocks.{match[1]}.swiglu_gate.{match[2]}")
        up = tensors.get(f"blocks.{match[1]}.swiglu_up.{match[2]}")
        if gate is not None and up is not None:
            return torch.cat([gate, up], dim=0)
    return None


def fill_model(model: "torch.nn.Module", tensors: Mapping[str, "torch.Tensor"], source: str) -> list[str]:
    """Load role-named ``tensors`` into ``model`` (built on the meta device or normally).

    Every parameter must be provided except ``mask_token`` (only used for masked pre-training; set to zeros, as
    transformers initialises it). Unused or missing tensors and shape mismatches raise ConfigError naming them.
    Returns notes for the source info (e.g. which tensors were left as initialised)."""
    import torch

    tensors = split_fused_swiglu(dict(tensors))
    state: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    missing: list[str] = []
    mismatched: list[str] = []
    notes: list[str] = []
    for key, target in model.state_dict().items():
        role = role_of_hf_key(key)
        if role is None:
            raise ConfigError(
                f"{source}: the installed transformers' Dinov2 has a parameter okcell cannot map ({key}); "
                "this transformers version is not supported"
            )
        tensor = _tensor_for(role, tensors)
        if tensor is None and role == "mask_token":
            tensor = torch.zeros(target.shape, dtype=torch.float32)
            notes.append("mask_token not in checkpoint: zeros as transformers initialises it (unused at inference)")
        if tensor is None:
            missing.append(role)
            continue
        if tuple(tensor.shape) != tuple(target.shape):
            mismatched.append(f"{role}: found {tuple(tensor.shape)}, expected {tuple(target.shape)}")
            continue
        state[key] = tensor.detach().to(torch.float32).contiguous()
        used.update(_roles_consumed(role, tensors))
    unused = sorted(set(tensors) - used)
    problems = []
    if missing:
        problems.append(f"missing tensor(s) {', '.join(missing)}")
    if mismatched:
        problems.append(f"shape mismatch {'; '.join(mismatched)}")
    if unused:
        problems.append(f"tensor(s) not used by the model {', '.join(unused)}")
    if problems:
        raise ConfigError(f"{source}: checkpoint does not fit DINOv2 {_describe(model)}: " + " | ".join(problems))
    model.load_state_dict(state, strict=True, assign=True)
    return notes


def _roles_consumed(role: str, tensors: Mapping[str, Any]) -> set[str]:
    if role in tensors:
        return {role}
    match = _FUSED_SWIGLU.match(role)
    if match is None:  # a tensor the checkpoint lacks and fill_model defaulted (mask_token)
        return set()
    return {f"blocks.{match[1]}.swiglu_gate.{match[2]}", f"blocks.{match[1]}.swiglu_up.{match[2]}"}


def _describe(model: "torch.nn.Module") -> str:
    config = getattr(model, "config", None)
    if config is None:
        return type(model).__name__
    registers = getattr(config, "num_register_tokens", 0)
    return (
        f"(hidden {config.hidden_size}, {config.num_hidden_layers} layers, patch {config.patch_size}, "
        f"{registers} registers, swiglu={config.use_swiglu_ffn})"
    )


def swiglu_hidden(hidden_size: int, mlp_ratio: int) -> int:
    """Hidden width transformers gives a SwiGLU MLP (2/3 of the ratio, rounded up to a multiple of 8)."""
    hidden = int(hidden_size * mlp_ratio)
    return (int(hidden * 2 / 3) + 7) // 8 * 8


def config_from_roles(tensors: Mapping[str, "torch.Tensor"], source: str) -> Any:
    """Infer the transformers config (Dinov2Config or Dinov2WithRegistersConfig) from tensor shapes."""
    from transformers import Dinov2Config, Dinov2WithRegistersConfig

    tensors = split_fused_swiglu(dict(tensors))
    for role in ("cls_token", "position_embeddings", "patch.weight"):
        if role not in tensors:
            raise ConfigError(f"{source}: no {role} tensor found; this is not a DINOv2 checkpoint")
    hidden = int(tensors["cls_token"].shape[-1])
    patch = int(tensors["patch.weight"].shape[-1])
    positions = int(tensors["position_embeddings"].shape[1]) - 1
    side = math.isqrt(positions)
    if side * side != positions:
        raise ConfigError(f"{source}: {positions} patch position embeddings is not a square grid")
    blocks = {int(role.split(".")[1]) for role in tensors if role.startswith("blocks.")}
    if not blocks or blocks != set(range(len(blocks))):
        raise ConfigError(f"{source}: transformer blocks {sorted(blocks)} are not numbered 0..N-1")
    if hidden % HEAD_DIM:
        raise ConfigError(f"{source}: hidden size {hidden} is not a multiple of the DINOv2 head size {HEAD_DIM}")
    common: dict[str, Any] = dict(
        hidden_size=hidden, num_hidden_layers=len(blocks), num_attention_heads=hidden // HEAD_DIM,
        patch_size=patch, image_size=side * patch, layer_norm_eps=1e-6, qkv_bias="blocks.0.q.bias" in tensors,
        attn_implementation="eager",
    )
    if "blocks.0.fc1.weight" in tensors:
        width = int(tensors["blocks.0.fc1.weight"].shape[0])
        if width % hidden:
            raise ConfigError(f"{source}: MLP width {width} is not a whole multiple of the hidden size {hidden}")
        common.update(mlp_ratio=width // hidden, use_swiglu_ffn=False)
    else:
        gate = tensors.get("blocks.0.swiglu_gate.weight")
        if gate is None:
            raise ConfigError(f"{source}: block 0 has neither an MLP (fc1) nor a SwiGLU (w12) weight")
        width = int(gate.shape[0])
        ratio = next((r for r in range(1, 9) if swiglu_hidden(hidden, r) == width), None)
        if ratio is None:
            raise ConfigError(f"{source}: SwiGLU width {width} does not match any transformers mlp_ratio")
        common.update(mlp_ratio=ratio, use_swiglu_ffn=True)
    registers = tensors.get("register_tokens")
    if registers is not None:
        return Dinov2WithRegistersConfig(num_register_tokens=int(registers.shape[1]), **common)
    return Dinov2Config(**common)


def build_model(config: Any, tensors: Mapping[str, "torch.Tensor"], source: str) -> tuple["torch.nn.Module", list[str]]:
    """Instantiate the transformers model for ``config`` without random init and fill it from ``tensors``."""
    import torch
    from transformers import Dinov2Model, Dinov2WithRegistersModel

    config._attn_implementation = "eager"  # plain MatMul/Softmax: exact and parseable by every ONNX consumer
    model_class = Dinov2WithRegistersModel if getattr(config, "num_register_tokens", 0) else Dinov2Model
    with torch.device("meta"):
        model = model_class(config)
    notes = fill_model(model, tensors, source)
    return model.eval(), notes
