"""The golden self-test: a few known images whose decision and score a release must reproduce on the cell.

``okcell bundle create`` inspects candidate images (held-out OK parts, known NOK parts) with the real model and
recipe and keeps a few whose score lies clearly on one side of the threshold (at least twice the tolerance away),
so that a small numeric difference on the cell (another CPU, a TensorRT FP16 engine) cannot flip a decision.
``okcell bundle install`` inspects them again with the backend the cell will use and requires the same decision
and a score within the tolerance (the check itself is :mod:`edge.runtime.golden`, shared with ``okcell recipe
push`` and the cell's recipe switch); any difference stops the install before the release is switched on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge.backends.onnxruntime_backend import OnnxRuntimeExtractor
from edge.backends.select import open_extractor
from edge.deploy.bundle import MODEL_FILE, InstallError, ReleaseManifest
from edge.runtime.golden import GoldenOutcome, RecipeGolden, inspect_golden, selftest_failure, write_recipe_golden
from edge.runtime.inspector import Inspector
from okcell.extractor import FeatureExtractor
from okcell.images import IMAGE_SUFFIXES, read_image
from okcell.recipe import Recipe
from okcell.result import InspectionResult
from okcell.schema import ConfigError
from okcell.sidecar import load_verified

MARGIN = 2.0  # golden images lie at least MARGIN * tolerance from the threshold


def image_files(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursively: ``nok/<defect>/...``), sorted; ConfigError if there are none."""
    if not folder.is_dir():
        raise ConfigError(f"{folder}: golden image folder not found")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not p.is_symlink())
    if not files:
        raise ConfigError(f"{folder}: holds no image files ({', '.join(IMAGE_SUFFIXES)})")
    return files


def spread(items: list[Path]) -> list[Path]:
    """``items`` reordered so that any prefix is spread over the whole list (first, last, middle, quarters, ...)."""
    order: list[int] = []
    parts = 1
    while len(order) < len(items):
        for index in np.linspace(0, len(items) - 1, parts + 1).round().astype(int):
            if int(index) not in order:
                order.append(int(index))
        parts *= 2
    return [items[i] for i in order]


def pick_golden(inspector: Inspector, folder: Path, count: int, tolerance: float) -> list[tuple[Path, InspectionResult]]:
    """Up to ``count`` images of ``folder``, spread over it, each inspected to OK or NOK at least ``MARGIN *
    tolerance`` away from the threshold. ConfigError if none qualifies."""
    chosen: list[tuple[Path, InspectionResult]] = []
    close = 0
    for path in spread(image_files(folder)):
        if len(chosen) == count:
            break
        result = inspector.inspect(read_image(path))
        if result.decision == "ERROR" or result.score is None:
            raise ConfigError(f"{path}: golden candidate gives ERROR: {result.error}")
        if abs(result.score - result.threshold) < MARGIN * tolerance:
            close += 1
            continue
        chosen.append((path, result))
    if not chosen:
        raise ConfigError(f"{folder}: no golden image: all {close} candidate(s) score within {MARGIN * tolerance:g} of "
                          f"the threshold {inspector.threshold:.4f}; give other images or a smaller --tolerance")
    return chosen


def run_selftest(release: Path, manifest: ReleaseManifest, backend: str, engine: Path | None,
                 recipe_key: Path | None) -> list[GoldenOutcome]:
    """Load every recipe of the release with its model on ``backend`` (as the cell will) and inspect the golden
    images. InstallError naming each failing image, or a recipe that does not load."""
    onnx = release / MODEL_FILE
    try:
        sidecar = load_verified(onnx)
        extractor: FeatureExtractor = open_extractor(onnx, backend=backend, engine_path=engine)
    except ConfigError as exc:
        raise InstallError(f"self-test: the model does not load: {exc}") from None
    try:
        outcomes = []
        for name, folder in sorted(manifest.recipes.items()):
            try:
                recipe = Recipe.load(release / folder, sidecar, public_key=recipe_key)
            except ConfigError as exc:
                raise InstallError(f"self-test: recipe {name!r} does not load: {exc}") from None
            inspector = Inspector(extractor, recipe, heatmap=False)
            outcomes += inspect_golden(inspector, release, [g for g in manifest.golden if g.recipe == name])
    finally:
        extractor.close()
    failure = selftest_failure(outcomes, manifest.tolerance)
    if failure is not None:
        raise InstallError(failure)
    return outcomes


def add_recipe_golden(recipe_dir: Path, model: Path, folders: list[Path], count: int, tolerance: float) -> RecipeGolden:
    """``okcell recipe golden``: pick up to ``count`` golden images from each folder with the recipe and its model
    (ONNX Runtime, as ``okcell bundle create`` does) and store them in ``recipe_dir/selftest/``."""
    if count < 1:
        raise ConfigError(f"--golden-count must be >= 1, found {count}")
    if not tolerance >= 0:
        raise ConfigError(f"--tolerance must be >= 0, found {tolerance}")
    recipe = Recipe.load(recipe_dir, load_verified(model))
    extractor = OnnxRuntimeExtractor(model)
    try:
        inspector = Inspector(extractor, recipe, heatmap=False)
        chosen = [pick for folder in folders for pick in pick_golden(inspector, folder, count, tolerance)]
    finally:
        extractor.close()
    return write_recipe_golden(recipe_dir, recipe.recipe_id, tolerance, chosen)
