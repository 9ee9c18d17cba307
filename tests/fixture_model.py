"""Session fixture ``exported_model``: the embedded DINOv2 ViT-S/14 exported at 224 once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

FIXTURE_SIZE = 224


@pytest.fixture(scope="session")
def exported_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of ``dinov2_vits14_224.onnx`` (+ its sidecar), parity-checked on the scikit-image photos like any export."""
    from okcell.export.onnx_export import ExportOptions, export_model

    out = tmp_path_factory.mktemp("model") / f"dinov2_vits14_{FIXTURE_SIZE}.onnx"
    export_model("embedded", ExportOptions(size=(FIXTURE_SIZE, FIXTURE_SIZE)), out)
    return out
