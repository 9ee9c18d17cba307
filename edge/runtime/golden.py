"""The golden self-test: known images whose decision and score a model + recipe must reproduce on the cell.

One check, three users: ``okcell bundle install`` (golden images listed in a release's ``release.json``),
``okcell recipe push`` and the running cell's recipe switch (OPC UA ActivateRecipe, SIGHUP), which test the golden
images a recipe carries in ``selftest/golden.json`` (written by ``okcell recipe golden``). An image passes when it
gives the expected decision exactly and a score within the tolerance.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from edge.runtime.inspector import Inspector
from okcell.images import ImageError, read_image
from okcell.names import DECISIONS
from okcell.result import InspectionResult
from okcell.schema import ConfigError, read_json, require_keys, typed

GOLDEN_DIR = "selftest"
GOLDEN_FILE = f"{GOLDEN_DIR}/golden.json"  # inside a recipe folder
GOLDEN_FORMAT = 1


class SelftestFailed(ConfigError):
    """Golden images gave another decision or score: the model + recipe must not be switched on here."""

    def __init__(self, where: Path, failure: str) -> None:
        super().__init__(f"{where}: {failure}")
        self.failure = failure  # the reason without the place


@dataclass(frozen=True)
class GoldenImage:
    """One self-test image: what the cell must reproduce with the model and recipe."""

    file: str  # path inside the release or recipe folder
    recipe: str  # the recipe it belongs to (a release's recipe name; a recipe's own id)
    source: str  # where it came from on the machine that picked it
    decision: str
    score: float

    @classmethod
    def from_json(cls, entry: Any, where: str) -> "GoldenImage":
        """Validate one parsed entry; ConfigError naming ``where`` and the field."""
        require_keys(entry, {"file", "recipe", "source", "decision", "score"}, set(), where)
        for key in ("file", "recipe", "source", "decision"):
            typed(entry, key, str, where)
        typed(entry, "score", (int, float), where)
        if entry["decision"] not in DECISIONS or entry["decision"] == "ERROR":
            raise ConfigError(f"{where}: field 'decision' must be OK or NOK, found {entry['decision']!r}")
        return cls(**{**entry, "score": float(entry["score"])})


@dataclass(frozen=True)
class GoldenOutcome:
    image: GoldenImage
    decision: str
    score: float | None
    error: str | None

    def problem(self, tolerance: float) -> str | None:
        """Why this image fails the self-test, or None."""
        expected = f"expected {self.image.decision} {self.image.score:.4f} ± {tolerance:g}"
        if self.score is None:
            return f"{self.image.file}: ERROR ({self.error}), {expected}"
        if self.decision != self.image.decision or abs(self.score - self.image.score) > tolerance:
            return f"{self.image.file}: {self.decision} {self.score:.4f}, {expected}"
        return None


def inspect_golden(inspector: Inspector, folder: Path, images: Sequence[GoldenImage]) -> list[GoldenOutcome]:
    """Inspect each golden image (``file`` relative to ``folder``); an unreadable image is an ERROR outcome."""
    outcomes = []
    for image in images:
        try:
            result = inspector.inspect(read_image(folder / image.file))
        except ImageError as exc:
            outcomes.append(GoldenOutcome(image, "ERROR", None, str(exc)))
            continue
        outcomes.append(GoldenOutcome(image, result.decision, result.score, result.error))
    return outcomes


def selftest_failure(outcomes: Sequence[GoldenOutcome], tolerance: float) -> str | None:
    """``self-test failed: ...`` naming each image that differs, or None when all pass."""
    problems = [p for p in (o.problem(tolerance) for o in outcomes) if p]
    if not problems:
        return None
    return f"self-test failed: {len(problems)} of {len(outcomes)} golden image(s) differ: " + "; ".join(problems)


@dataclass(frozen=True)
class RecipeGolden:
    """``selftest/golden.json`` of a recipe folder."""

    recipe_id: str  # the recipe the expected scores were computed with
    tolerance: float
    images: tuple[GoldenImage, ...]


def load_recipe_golden(recipe_dir: Path) -> RecipeGolden | None:
    """The golden images ``recipe_dir`` carries, None if it carries none; ConfigError naming the file and field."""
    path = recipe_dir / GOLDEN_FILE
    if not path.is_file():
        return None
    data = read_json(path)
    source = str(path)
    require_keys(data, {"format_version", "recipe_id", "tolerance", "golden"}, set(), source)
    if typed(data, "format_version", int, source) != GOLDEN_FORMAT:
        raise ConfigError(f"{source}: field 'format_version' is {data['format_version']}, this okcell reads "
                          f"{GOLDEN_FORMAT}; make the golden images again with `okcell recipe golden`")
    tolerance = typed(data, "tolerance", (int, float), source)
    if not tolerance >= 0:
        raise ConfigError(f"{source}: field 'tolerance' must be >= 0, found {tolerance!r}")
    images = tuple(GoldenImage.from_json(entry, f"{source} [golden[{index}]]")
                   for index, entry in enumerate(typed(data, "golden", list, source)))
    if not images:
        raise ConfigError(f"{source}: field 'golden' lists no image")
    for image in images:
        if not (recipe_dir / image.file).is_file() or not image.file.startswith(f"{GOLDEN_DIR}/") or ".." in image.file:
            raise ConfigError(f"{source}: golden image {image.file!r} is not a file in {recipe_dir / GOLDEN_DIR}")
    return RecipeGolden(typed(data, "recipe_id", str, source), float(tolerance), images)


def write_recipe_golden(recipe_dir: Path, recipe_id: str, tolerance: float,
                        chosen: Sequence[tuple[Path, InspectionResult]]) -> RecipeGolden:
    """Copy the chosen images into ``recipe_dir/selftest/`` (replacing what was there) with their results."""
    folder = recipe_dir / GOLDEN_DIR
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir()
    images = []
    for index, (path, result) in enumerate(chosen):
        file = f"{GOLDEN_DIR}/{index:03d}-{path.name}"
        shutil.copyfile(path, recipe_dir / file)
        assert result.score is not None  # pick_golden keeps scored images only
        images.append(GoldenImage(file, recipe_id, str(path), result.decision, float(result.score)))
    data: dict[str, Any] = {"format_version": GOLDEN_FORMAT, "recipe_id": recipe_id, "tolerance": tolerance,
                            "golden": [asdict(image) for image in images]}
    (recipe_dir / GOLDEN_FILE).write_text(json.dumps(data, indent=2) + "\n")
    return RecipeGolden(recipe_id, tolerance, tuple(images))


def check_recipe(inspector: Inspector, recipe_dir: Path) -> list[GoldenOutcome] | None:
    """Run the golden images ``recipe_dir`` carries through ``inspector`` (holding that recipe, loaded with the
    cell's model and backend); None if it carries none. SelftestFailed naming each differing image."""
    golden = load_recipe_golden(recipe_dir)
    if golden is None:
        return None
    recipe_id = str(inspector.recipe.recipe_id)
    if golden.recipe_id != recipe_id:
        raise SelftestFailed(recipe_dir / GOLDEN_FILE, f"golden images were made with recipe {golden.recipe_id}, the "
                             f"recipe is {recipe_id}; make them again with `okcell recipe golden`")
    outcomes = inspect_golden(inspector, recipe_dir, golden.images)
    failure = selftest_failure(outcomes, golden.tolerance)
    if failure is not None:
        raise SelftestFailed(recipe_dir, failure)
    return outcomes
