"""Inspector on the real demo recipe (embedded DINOv2 at 224, hnswlib bank)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import pytest

from okcell.recipe import Recipe
from edge.backends.onnxruntime_backend import OnnxRuntimeExtractor
from calibration.evaluation import auroc, truth_from_path
from okcell.images import read_image
from edge.runtime.inspector import Inspector
from okcell.names import INSPECTION_TIMINGS
from okcell.roi import Roi


@pytest.fixture(scope="module")
def extractor(exported_model: Path) -> Iterator[OnnxRuntimeExtractor]:
    extractor = OnnxRuntimeExtractor(exported_model)
    yield extractor
    extractor.close()


@pytest.fixture(scope="module")
def recipe(demo_recipe: Path, extractor: OnnxRuntimeExtractor) -> Recipe:
    return Recipe.load(demo_recipe, extractor.sidecar)


@pytest.fixture(scope="module")
def inspector(extractor: OnnxRuntimeExtractor, recipe: Recipe) -> Inspector:
    return Inspector(extractor, recipe)


@pytest.fixture(scope="module")
def holdout(demo_images: Path, inspector: Inspector) -> list[tuple[Path, object]]:
    return [(p, inspector.inspect(read_image(p))) for p in sorted((demo_images / "holdout").rglob("*.png"))]


def test_holdout_nok_scores_above_ok(holdout: list, recipe: Recipe) -> None:
    ok = [r.score for p, r in holdout if truth_from_path(p)[0] == "OK"]
    nok = [r.score for p, r in holdout if truth_from_path(p)[0] == "NOK"]
    assert len(ok) == 6 and len(nok) == 8
    assert all(r.decision in ("OK", "NOK") and r.error is None for _, r in holdout)
    assert all(r.threshold == recipe.threshold for _, r in holdout)
    assert np.median(nok) > np.max(ok)
    area = auroc(np.array(ok), np.array(nok))
    assert area is not None and area >= 0.9
    # decisions follow the threshold
    for _, result in holdout:
        assert result.decision == ("NOK" if result.score > recipe.threshold else "OK")


def test_results_carry_map_timings_and_label(holdout: list, recipe: Recipe) -> None:
    labels = set(recipe.labelled.labels) if recipe.labelled is not None else set()
    assert labels, "the demo recipe is calibrated with labelled NOK folders"
    for path, result in holdout:
        assert result.anomaly_map is not None and result.anomaly_map.dtype == np.float32
        assert result.anomaly_map.shape == (256, 256)
        assert set(result.timings_ms) == set(INSPECTION_TIMINGS) and all(v >= 0 for v in result.timings_ms.values())
        assert result.timings_ms["total"] >= result.timings_ms["backbone"]
        assert result.nearest_label in labels


def test_anomaly_map_follows_patch_scores_and_finds_holes(holdout: list, demo_images: Path, inspector: Inspector) -> None:
    rows, cols = inspector.extractor.sidecar.patch_grid
    for path, result in holdout:
        # the map is in ROI pixels: sampled at the patch centres it follows the patch scores
        patch_scores = inspector.recipe.scorer.patch_scores(inspector.extractor.extract([read_image(path)]).patches)[0]
        centres_y = ((np.arange(rows) + 0.5) * 256 / rows).astype(int)
        centres_x = ((np.arange(cols) + 0.5) * 256 / cols).astype(int)
        sampled = result.anomaly_map[np.ix_(centres_y, centres_x)].ravel()
        assert np.corrcoef(sampled, patch_scores)[0, 1] > 0.6, path.name
        truth, defect = truth_from_path(path)
        row, col = np.unravel_index(int(np.argmax(result.anomaly_map)), result.anomaly_map.shape)
        if defect == "hole":  # block-9 features localise holes (not always pasted material; see report)
            mask = read_image(demo_images / "masks" / "holdout" / defect / path.name)
            near = cv2.dilate(mask, np.ones((33, 33), np.uint8))  # within 16 px (one patch at 224 px input)
            assert near[row, col] > 0, f"{path.name}: map peak at ({row}, {col}) is away from the hole"


def test_bad_frames_give_error_not_ok(inspector: Inspector, demo_images: Path) -> None:
    frame = read_image(next((demo_images / "holdout" / "ok").glob("*.png")))
    cases = {
        "16-bit": (frame.astype(np.uint16) * 257, "16-bit"),
        "mono": (frame[:, :, 0].copy(), "mono frame"),
        "4 channels": (np.dstack([frame, frame[:, :, :1]]), "shape"),
        "not an array": ([[1, 2]], "numpy array"),
    }
    for name, (bad, expected) in cases.items():
        result = inspector.inspect(bad)  # type: ignore[arg-type]
        assert result.decision == "ERROR", name
        assert result.score is None and result.anomaly_map is None
        assert expected in (result.error or ""), f"{name}: {result.error}"


def test_frame_of_another_size_is_inspected(inspector: Inspector, holdout: list, demo_images: Path) -> None:
    """A crop of another size than the references is stretched like them (the recipe's sizing rule), not refused."""
    path = next(p for p, _ in holdout if truth_from_path(p)[0] == "OK")
    whole = dict(holdout)[path]
    smaller = inspector.inspect(cv2.resize(read_image(path), (240, 289), interpolation=cv2.INTER_AREA))
    assert smaller.decision in ("OK", "NOK") and smaller.error is None
    assert smaller.anomaly_map is not None and smaller.anomaly_map.shape == (289, 240)
    assert abs(smaller.score - whole.score) < 0.25 * whole.score


def test_frame_smaller_than_roi(extractor: OnnxRuntimeExtractor, recipe: Recipe, demo_images: Path) -> None:
    with_roi = dataclasses.replace(recipe, roi=Roi(16, 16, 224, 224))
    inspector = Inspector(extractor, with_roi)
    frame = read_image(next((demo_images / "holdout" / "ok").glob("*.png")))
    inside = inspector.inspect(frame)
    assert inside.decision in ("OK", "NOK") and inside.anomaly_map is not None and inside.anomaly_map.shape == (224, 224)
    small = inspector.inspect(frame[:200, :230])
    assert small.decision == "ERROR" and small.error is not None and "does not fit" in small.error
    picture = inspector.overlay(frame, inside)
    assert picture.shape == frame.shape and picture.dtype == np.uint8


def test_backend_fault_gives_error(exported_model: Path, recipe: Recipe, demo_images: Path) -> None:
    closed = OnnxRuntimeExtractor(exported_model)
    closed.close()
    result = Inspector(closed, recipe).inspect(read_image(next((demo_images / "holdout" / "ok").glob("*.png"))))
    assert result.decision == "ERROR" and result.error is not None
    assert "RuntimeError" in result.error and "closed" in result.error
