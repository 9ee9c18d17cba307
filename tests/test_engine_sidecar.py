"""Engine sidecar: round trip, validation, and the refusals of an engine built for another TensorRT, GPU or ONNX.

The engine file here is an opaque byte blob (TensorRT cannot be installed on CI); the checks under test are
exactly the ones made before TensorRT ever sees the file."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from export.engine_sidecar import (
    BuildTarget,
    EngineSidecar,
    default_engine_path,
    engine_sidecar_path,
    verify_engine,
)
from okcell.sidecar import load_verified
from okcell.schema import ConfigError, sha256_file

ORIN = BuildTarget("10.3.0", "Orin", (8, 7))


def write_engine(folder: Path, onnx: Path, target: BuildTarget = ORIN, precision: str = "fp16") -> tuple[Path, EngineSidecar]:
    engine = folder / "model.engine"
    engine.write_bytes(b"serialized engine bytes " * 100)
    info = EngineSidecar(
        engine_file=engine.name, engine_sha256=sha256_file(engine), onnx_file=onnx.name,
        onnx_sha256=load_verified(onnx).onnx_sha256, tensorrt_version=target.tensorrt_version,
        gpu_name=target.gpu_name, compute_capability=target.compute_capability, precision=precision,
        input_size=(224, 224), batch=(1, 1, 1), built_at="2026-11-27T03:00:00Z",
        build_options={"workspace_mib": 2048, "opt_level": 3},
    )
    info.save(engine_sidecar_path(engine))
    return engine, info



def test_paths() -> None:
    assert engine_sidecar_path(Path("/m/dino.engine")) == Path("/m/dino.engine.json")
    assert default_engine_path(Path("/m/dino.onnx")) == Path("/m/dino.engine")


def test_round_trip_and_accepts_matching_engine(model: Path, tmp_path: Path) -> None:
    engine, info = write_engine(tmp_path, model)
    assert EngineSidecar.load(engine_sidecar_path(engine)) == info
    assert verify_engine(engine, model, load_verified(model).onnx_sha256, ORIN) == info


def test_refuses_other_tensorrt_version_with_rebuild_command(model: Path, tmp_path: Path) -> None:
    engine, _ = write_engine(tmp_path, model, precision="int8")
    here = dataclasses.replace(ORIN, tensorrt_version="10.7.0")
    with pytest.raises(ConfigError) as caught:
        verify_engine(engine, model, load_verified(model).onnx_sha256, here)
    message = str(caught.value)
    assert "built with TensorRT 10.3.0, this machine has TensorRT 10.7.0" in message
    assert f"okcell build-engine {model} --int8 -o {engine}" in message


@pytest.mark.parametrize(
    "here", [BuildTarget("10.3.0", "NVIDIA RTX A2000", (8, 6)), BuildTarget("10.3.0", "Orin Nano", (8, 7))]
)
def test_refuses_other_gpu(model: Path, tmp_path: Path, here: BuildTarget) -> None:
    engine, _ = write_engine(tmp_path, model)
    with pytest.raises(ConfigError, match=r"built for TensorRT 10\.3\.0 on 'Orin' \(sm_87\), this machine is") as caught:
        verify_engine(engine, model, load_verified(model).onnx_sha256, here)
    assert here.gpu_name in str(caught.value) and "okcell build-engine" in str(caught.value)


def test_refuses_engine_of_another_onnx(model: Path, tmp_path: Path) -> None:
    engine, _ = write_engine(tmp_path, model)
    with pytest.raises(ConfigError, match="built from a different model") as caught:
        verify_engine(engine, model, "f" * 64, ORIN)
    assert f"okcell build-engine {model} --fp16" in str(caught.value)


def test_refuses_replaced_engine_file(model: Path, tmp_path: Path) -> None:
    engine, _ = write_engine(tmp_path, model)
    engine.write_bytes(b"another engine")
    with pytest.raises(ConfigError, match="does not match its sidecar"):
        verify_engine(engine, model, load_verified(model).onnx_sha256, ORIN)


def test_missing_engine_or_sidecar_say_how_to_build(model: Path, tmp_path: Path) -> None:
    sha = load_verified(model).onnx_sha256
    with pytest.raises(ConfigError, match=r"TensorRT engine not found; rebuild it on this machine: okcell build-engine"):
        verify_engine(tmp_path / "none.engine", model, sha, ORIN)
    engine, _ = write_engine(tmp_path, model)
    engine_sidecar_path(engine).unlink()
    with pytest.raises(ConfigError, match=r"model\.engine\.json: engine sidecar not found"):
        verify_engine(engine, model, sha, ORIN)


@pytest.mark.parametrize(
    "field, value, expected",
    [
        ("precision", "int4", "field 'precision' must be one of fp32, fp16, int8"),
        ("compute_capability", [8], "field 'compute_capability' must be a list of 2"),
        ("batch", [4, 2, 8], "min <= opt <= max"),
        ("tensorrt_version", 10, "field 'tensorrt_version' must be str"),
        ("format_version", 9, "field 'format_version' is 9, expected 1"),
    ],
)
def test_invalid_sidecar_fields_are_named(model: Path, tmp_path: Path, field: str, value: object, expected: str) -> None:
    engine, _ = write_engine(tmp_path, model)
    path = engine_sidecar_path(engine)
    data = json.loads(path.read_text())
    data[field] = value
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=expected):
        EngineSidecar.load(path)


def test_unknown_and_missing_keys(model: Path, tmp_path: Path) -> None:
    engine, _ = write_engine(tmp_path, model)
    path = engine_sidecar_path(engine)
    data = json.loads(path.read_text())
    del data["gpu_name"]
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="missing key"):
        EngineSidecar.load(path)
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        EngineSidecar.load(path)
