"""Model fixtures: ``exported_model``, the embedded DINOv2 ViT-S/14 exported at 224 once per test session, 
``model``, a private copy of it that a test may alter, and ``sidecar``, its verified sidecar."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from okcell.sidecar import ModelSidecar, load_verified

FIXTURE_SIZE = 224


@pytest.fixture(scope="session")
def exported_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of ``dinov2_vits14_224.onnx`` (+ its sidecar), parity-checked on the scikit-image photos like any export."""
    from export.onnx_export import ExportOptions, export_model

    out = tmp_path_factory.mktemp("model") / f"dinov2_vits14_{FIXTURE_SIZE}.onnx"
    export_model("embedded", ExportOptions(size=(FIXTURE_SIZE, FIXTURE_SIZE)), out)
    return out


@pytest.fixture()
def model(exported_model: Path, tmp_path: Path) -> Path:
    """A private copy of the exported model (ONNX + sidecar) that tests may alter."""
    onnx = tmp_path / exported_model.name
    shutil.copy(exported_model, onnx)
    shutil.copy(exported_model.with_suffix(".json"), onnx.with_suffix(".json"))
    return onnx


@pytest.fixture(scope="module")
def sidecar(exported_model: Path) -> ModelSidecar:
    """The exported model's sidecar, checked against the ONNX file."""
    return load_verified(exported_model)
