"""Session fixtures ``demo_images`` (a small demo set) and ``demo_recipe`` (calibrated on it with ``exported_model``);
``recipe_copy``, a private copy of the recipe that a test may alter."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from calibration.demo_data import DemoCounts

DEMO_COUNTS = DemoCounts(train_ok=30, calib_nok_per_defect=2, holdout_ok=6, holdout_nok_per_defect=2)
DEMO_SIZE = 256


@pytest.fixture(scope="session")
def demo_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root of a demo set (layout in :mod:`calibration.demo_data`): train/ok, calib/nok/<defect>, holdout/..."""
    from calibration.demo_data import write_demo_set

    root = tmp_path_factory.mktemp("demo-images")
    write_demo_set(root, part="brick", size=DEMO_SIZE, counts=DEMO_COUNTS, seed=0)
    return root


@pytest.fixture(scope="session")
def demo_recipe(exported_model: Path, demo_images: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Recipe directory calibrated on ``train/ok`` with the ``calib/nok`` defect folders (5 folds, k=1, top 1 %)."""
    from calibration.build import CalibrationSettings, calibrate
    from edge.backends.onnxruntime_backend import OnnxRuntimeExtractor

    out = tmp_path_factory.mktemp("recipes") / "demo-recipe"
    settings = CalibrationSettings(ok_dir=demo_images / "train" / "ok", nok_dirs=(demo_images / "calib" / "nok",))
    extractor = OnnxRuntimeExtractor(exported_model)
    try:
        calibrate(extractor, exported_model, settings, out)
    finally:
        extractor.close()
    return out


@pytest.fixture
def recipe_copy(demo_recipe: Path, tmp_path: Path) -> Path:
    """A private copy of ``demo_recipe`` that a test may alter."""
    return Path(shutil.copytree(demo_recipe, tmp_path / "recipe"))
