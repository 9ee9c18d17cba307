"""``okcell export``: graph shape for TensorRT, parity with PyTorch, sizes, layers, dynamic batch, failures."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from skimage import data

from edge.backends.onnxruntime_backend import OnnxRuntimeExtractor
from edge.cli import export_model as cli_export
from export import parity
from export.onnx_export import ExportOptions, export_model
from export.parity import MIN_PATCH_COSINE
from okcell.sidecar import load_verified, sidecar_path_for
from export.sources import LoadedBackbone, load_backbone
from okcell.schema import ConfigError, sha256_file


@pytest.fixture(scope="module")
def embedded() -> LoadedBackbone:
    return load_backbone("embedded")


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    cli_export.add_arguments(parser)
    return cli_export.run(parser.parse_args(argv))


def test_default_export_is_a_single_static_file_without_resize(exported_model: Path) -> None:
    sidecar = load_verified(exported_model)
    assert sidecar.input_size == (224, 224) and sidecar.patch_grid == (16, 16) and sidecar.layers == (9,)
    assert sidecar.feature_dim == sidecar.embedding_dim == 384 and not sidecar.dynamic_batch
    assert sidecar.model_source["kind"] == "embedded" and sidecar.model_source["num_register_tokens"] == 0
    assert sidecar.extra["parity"]["min_patch_cosine"] >= MIN_PATCH_COSINE
    assert sorted(p.name for p in exported_model.parent.iterdir()) == ["dinov2_vits14_224.json", "dinov2_vits14_224.onnx"]
    model = onnx.load(str(exported_model))  # loads fully: no external data
    onnx.checker.check_model(model)
    ops = {node.op_type for node in model.graph.node}
    assert "Resize" not in ops and "Shape" not in ops  # position embeddings precomputed, constants folded
    assert all(not init.external_data for init in model.graph.initializer)
    assert sidecar.opset >= 17
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 224, 224]
    session = ort.InferenceSession(str(exported_model), providers=["CPUExecutionProvider"])
    patches, embedding = session.run(None, {"pixel_values": np.zeros((1, 3, 224, 224), np.float32)})
    assert patches.shape == (1, 256, 384) and embedding.shape == (1, 384)


def test_large_non_default_size_keeps_parity(embedded: LoadedBackbone, tmp_path: Path) -> None:
    out = tmp_path / "m672.onnx"
    sidecar = export_model(embedded, ExportOptions(size=(672, 672)), out)
    assert sidecar.patch_grid == (48, 48)
    assert sidecar.extra["parity"]["min_patch_cosine"] >= MIN_PATCH_COSINE
    assert sidecar.extra["parity"]["images"] == ["astronaut", "coffee", "brick", "gravel"]
    model = onnx.load(str(out), load_external_data=False)
    assert "Resize" not in {node.op_type for node in model.graph.node}
    assert [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim] == [1, 48 * 48, 384]


def test_dynamic_batch_non_square(embedded: LoadedBackbone, tmp_path: Path) -> None:
    out = tmp_path / "dyn.onnx"
    sidecar = export_model(embedded, ExportOptions(size=(168, 224), dynamic_batch=True), out)
    assert sidecar.dynamic_batch and sidecar.patch_grid == (12, 16)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[0] != 1  # symbolic batch axis
    extractor = OnnxRuntimeExtractor(out)
    pair = extractor.extract([data.astronaut(), data.brick()])
    assert pair.patches.shape == (2, 12 * 16, 384) and pair.grid == (12, 16)
    alone = extractor.extract([data.brick()])
    np.testing.assert_allclose(alone.patches[0], pair.patches[1], atol=1e-5)


def test_multi_layer_concat_and_mean(embedded: LoadedBackbone, exported_model: Path, tmp_path: Path) -> None:
    concat = export_model(embedded, ExportOptions(size=(224, 224), layers=(9, 12), fusion="concat"), tmp_path / "c.onnx")
    mean = export_model(embedded, ExportOptions(size=(224, 224), layers=(9, 12), fusion="mean"), tmp_path / "m.onnx")
    assert (concat.feature_dim, mean.feature_dim, concat.layers) == (768, 384, (9, 12))
    frames = [data.astronaut(), data.gravel()]
    block9 = OnnxRuntimeExtractor(exported_model).extract(frames).patches  # the export default: block 9 alone
    both = OnnxRuntimeExtractor(tmp_path / "c.onnx").extract(frames).patches
    averaged = OnnxRuntimeExtractor(tmp_path / "m.onnx").extract(frames).patches
    # concat = [n9, n12] / sqrt(2) with per-layer unit vectors: its first half is the block-9-only output
    np.testing.assert_allclose(both[..., :384] * math.sqrt(2), block9, atol=1e-4)
    summed = both[..., :384] + both[..., 384:]
    np.testing.assert_allclose(averaged, summed / np.linalg.norm(summed, axis=-1, keepdims=True), atol=1e-4)
    assert float(np.abs(both[..., :384] - both[..., 384:]).max()) > 0.05  # block 9 really differs from block 12


def test_opset_17_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "o17.onnx"
    assert cli(["--size", "112x140", "--opset", "17", "--out", str(out)]) == 0
    sidecar = load_verified(out)
    assert sidecar.opset == 17 and sidecar.input_size == (112, 140)
    model = onnx.load(str(out))
    assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == 17
    assert "Resize" not in {node.op_type for node in model.graph.node}
    captured = capsys.readouterr()
    assert "parity astronaut: min patch cosine" in captured.err and "min patch cosine" in captured.out


@pytest.mark.parametrize(
    "options,message",
    [
        (ExportOptions(size=(225, 224)), r"--size 225x224: height and width must be positive multiples of the patch size 14"),
        (ExportOptions(size=(0, 224)), r"multiples of the patch size 14"),
        (ExportOptions(size=(224, 224), layers=(13,)), r"--layers 13: need distinct block numbers in 1..12"),
        (ExportOptions(size=(224, 224), layers=(12, 12)), r"distinct block numbers"),
        (ExportOptions(size=(224, 224), fusion="max"), r"--fusion 'max': expected one of concat, mean"),
        (ExportOptions(size=(224, 224), opset=16), r"--opset 16: need 17 or newer"),
    ],
)
def test_bad_options_are_refused_before_writing(
    embedded: LoadedBackbone, tmp_path: Path, options: ExportOptions, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        export_model(embedded, options, tmp_path / "bad.onnx")
    assert list(tmp_path.iterdir()) == []


def test_cli_rejects_bad_size_and_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli(["--size", "448x", "--out", str(tmp_path / "m.onnx")])
    assert "expected N or HxW" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="expected a path ending in .onnx"):
        cli(["--out", str(tmp_path / "m.trt")])


def test_failed_parity_leaves_existing_model_untouched(
    embedded: LoadedBackbone, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "model.onnx"
    export_model(embedded, ExportOptions(size=(112, 112)), out)
    before = sha256_file(out), sidecar_path_for(out).read_text()
    monkeypatch.setattr(parity, "MIN_PATCH_COSINE", 1.5)  # unreachable: forces the failure path on a real export
    assert cli(["--size", "140", "--out", str(out)]) == 1
    error = capsys.readouterr().err
    assert "FAILED" in error and "nothing was written" in error
    assert (sha256_file(out), sidecar_path_for(out).read_text()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json", "model.onnx"]
    assert json.loads(sidecar_path_for(out).read_text())["input_size"] == [112, 112]


@pytest.mark.parametrize("opset", [18, 17])
def test_external_data_for_large_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, opset: int) -> None:
    """Models past the protobuf limit (ViT-g) keep weights in NAME.onnx.data; the threshold is lowered so a small
    random DINOv2 with registers takes that path."""
    import torch
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    from export import onnx_export

    torch.manual_seed(0)
    config = Dinov2WithRegistersConfig(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, patch_size=14,
                                       image_size=518, num_register_tokens=4)
    config._attn_implementation = "eager"  # plain MatMul/Softmax, set as export.sources.roles.build_model does
    info = {"kind": "test", "name": "random", "path": "-", "hidden_size": 128, "num_layers": 2,
            "num_register_tokens": 4}
    backbone = LoadedBackbone(Dinov2WithRegistersModel(config).eval(), info)
    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_BYTES", 1000)
    out = tmp_path / "big.onnx"
    sidecar = export_model(backbone, ExportOptions(size=(112, 140), opset=opset), out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.json", "big.onnx", "big.onnx.data"]
    assert sidecar.extra["external_data"] and set(sidecar.extra["external_data_files"]) == {"big.onnx.data"}
    assert sidecar.extra["external_data_files"]["big.onnx.data"] == sha256_file(tmp_path / "big.onnx.data")
    assert sidecar.extra["parity"]["min_patch_cosine"] >= MIN_PATCH_COSINE
    assert out.stat().st_size < 200_000 < (tmp_path / "big.onnx.data").stat().st_size
    features = OnnxRuntimeExtractor(out).extract([data.astronaut()])
    assert features.patches.shape == (1, 8 * 10, 128) and features.grid == (8, 10)
