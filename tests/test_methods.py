"""Accuracy methods as recipe options on the real model: reference augmentation, background masks, tiling, frames
of any size. Small scenes the tests make: a brick-textured part (notched, so it has a pose) on a grey background,
and brick strips of varying length."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import pytest

from calibration.demo_data import texture
from edge.backends.onnxruntime_backend import OnnxRuntimeExtractor
from edge.cli.main import main
from edge.runtime.inspector import Inspector
from okcell.frames import extract_crops
from okcell.images import read_image
from okcell.masking import ImageMask, NoMask, PcaMask
from okcell.recipe import MANIFEST_FILE, Recipe, compute_recipe_id
from okcell.schema import ConfigError
from okcell.sizing import Sizing

SIZE = 224  # the fixture model's input: scenes need no resize
PART = (40, 184)  # the part's box, rows and columns (px)
NOTCH = (40, 100, 130, 184)  # top-right corner cut away: rows, columns
BACKGROUND_BLOB = (9, 214)  # a corner of the background, outside the part's mask grown by one patch
PART_BLOB = (150, 80)


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return texture("brick")


def scene(photo: np.ndarray, seed: int, turns: int = 0, blob: tuple[int, int] | None = None) -> np.ndarray:
    """The notched brick part on grey, a few px off centre; ``turns`` quarter turns; a dark disc at ``blob``."""
    rng = np.random.default_rng(seed)
    frame = np.clip(150 + rng.normal(0, 3, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
    dy, dx = rng.integers(-3, 4, 2)
    y, x = rng.integers(0, photo.shape[0] - SIZE, 2)
    surface = photo[y : y + SIZE, x : x + SIZE]
    part = np.zeros((SIZE, SIZE), bool)
    part[PART[0] + dy : PART[1] + dy, PART[0] + dx : PART[1] + dx] = True
    part[NOTCH[0] + dy : NOTCH[1] + dy, NOTCH[2] + dx : NOTCH[3] + dx] = False
    frame[part] = surface[part]
    if blob is not None:
        cv2.circle(frame, (blob[1], blob[0]), 8, (35, 35, 35), -1)
    return np.ascontiguousarray(np.rot90(frame, turns))


def strip(photo: np.ndarray, seed: int, length: int, blob: tuple[int, int] | None = None) -> np.ndarray:
    """A brick strip, 224 px wide and ``length`` px long (the photo mirrored below itself for length)."""
    rng = np.random.default_rng(seed)
    tall = np.concatenate([photo, photo[::-1]])
    y, x = rng.integers(0, tall.shape[0] - length), rng.integers(0, photo.shape[1] - SIZE)
    image = np.ascontiguousarray(tall[y : y + length, x : x + SIZE])
    if blob is not None:
        cv2.circle(image, (blob[1], blob[0]), 9, (35, 35, 35), -1)
    return image


def write_set(folder: Path, images: list[np.ndarray]) -> Path:
    folder.mkdir(parents=True)
    for number, image in enumerate(images):
        cv2.imwrite(str(folder / f"ok_{number:02d}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return folder


@pytest.fixture(scope="module")
def parts(photo: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_set(tmp_path_factory.mktemp("parts") / "ok", [scene(photo, seed) for seed in range(10)])


@pytest.fixture(scope="module")
def extractor(exported_model: Path) -> Iterator[OnnxRuntimeExtractor]:
    extractor = OnnxRuntimeExtractor(exported_model)
    yield extractor
    extractor.close()


def calibrated(model: Path, ok: Path, out: Path, extractor: OnnxRuntimeExtractor, *options: str) -> Recipe:
    assert main(["calibrate", "--model", str(model), "--ok", str(ok), "--out", str(out), "--folds", "3", *options]) == 0
    return Recipe.load(out, extractor.sidecar)


@pytest.fixture(scope="module")
def plain(exported_model: Path, parts: Path, extractor: OnnxRuntimeExtractor, tmp_path_factory: pytest.TempPathFactory) -> Recipe:
    return calibrated(exported_model, parts, tmp_path_factory.mktemp("r") / "plain", extractor)


@dataclass
class Inspected:
    decision: str
    score: float
    anomaly_map: np.ndarray


def inspect(recipe: Recipe, extractor: OnnxRuntimeExtractor, frame: np.ndarray) -> Inspected:
    result = Inspector(extractor, recipe).inspect(frame)
    assert result.error is None and result.score is not None and result.anomaly_map is not None, result.error
    return Inspected(result.decision, result.score, result.anomaly_map)


def test_rotated_part_passes_only_with_rotation_augmentation(exported_model: Path, parts: Path, photo: np.ndarray, plain: Recipe,
                                                              extractor: OnnxRuntimeExtractor, tmp_path: Path) -> None:
    turned = calibrated(exported_model, parts, tmp_path / "turned", extractor,
                        "--augment", "rot90,rot180,rot270", "--k", "2", "--aggregation", "top5")
    manifest = json.loads((tmp_path / "turned" / MANIFEST_FILE).read_text())
    assert manifest["calibration"]["augment"] == ["rot90", "rot180", "rot270"]
    assert (turned.scorer.k, turned.scorer.aggregation) == (2, "top5")
    assert manifest["bank"]["patches_seen"] == 4 * 10 * 256  # each reference and its three turns
    assert manifest["risk"]["frr"]["total"] == 10  # only the real references are scored for the threshold
    rotated = scene(photo, 99, turns=1)
    assert inspect(plain, extractor, rotated).decision == "NOK"
    assert inspect(turned, extractor, rotated).decision == "OK"
    assert inspect(turned, extractor, scene(photo, 98, blob=PART_BLOB)).decision == "NOK"


def test_pca_mask_keeps_the_part_and_drops_the_background(exported_model: Path, parts: Path, photo: np.ndarray,
                                                         extractor: OnnxRuntimeExtractor, tmp_path: Path) -> None:
    recipe = calibrated(exported_model, parts, tmp_path / "pca", extractor, "--mask", "pca")
    assert isinstance(recipe.mask, PcaMask) and (tmp_path / "pca" / "mask.npz").is_file()
    crop = extract_crops(extractor, [scene(photo, 95)], recipe.sizing)[0]
    foreground = recipe.mask.foreground(crop.patches, crop.layout)
    centres = (np.arange(16) + 0.5) * 14
    part = (centres[:, None] > PART[0]) & (centres[:, None] < PART[1]) & (centres[None, :] > PART[0]) & (centres[None, :] < PART[1])
    part &= ~((centres[:, None] < NOTCH[1]) & (centres[None, :] > NOTCH[2]))
    near = cv2.dilate(part.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    assert foreground[part].mean() > 0.9
    assert foreground[~near].mean() < 0.1  # ViT-S without registers has a few outlier tokens on plain background
    manifest = json.loads((tmp_path / "pca" / MANIFEST_FILE).read_text())
    assert manifest["scoring"]["mask"]["mode"] == "pca"
    assert manifest["bank"]["patches_seen"] < 0.75 * 10 * 256  # background patches stay out of the bank
    found = inspect(recipe, extractor, scene(photo, 96, blob=PART_BLOB))
    assert found.decision == "NOK"
    assert found.anomaly_map[BACKGROUND_BLOB] < 0.1 * recipe.threshold  # background cells are not scored


def test_drawn_mask_inspects_only_inside(exported_model: Path, parts: Path, photo: np.ndarray, plain: Recipe,
                                         extractor: OnnxRuntimeExtractor, tmp_path: Path) -> None:
    on_background = scene(photo, 97, blob=BACKGROUND_BLOB)
    assert inspect(plain, extractor, on_background).decision == "NOK"
    mask_file = tmp_path / "mask.png"
    box = np.zeros((SIZE, SIZE), np.uint8)
    box[PART[0] : PART[1], PART[0] : PART[1]] = 255
    cv2.imwrite(str(mask_file), box)
    recipe = calibrated(exported_model, parts, tmp_path / "drawn", extractor, "--mask", str(mask_file))
    assert isinstance(recipe.mask, ImageMask) and (read_image(tmp_path / "drawn" / "mask.png") > 0).sum() == (box > 0).sum()
    assert json.loads((tmp_path / "drawn" / MANIFEST_FILE).read_text())["scoring"]["mask"]["mode"] == "file"
    ignored = inspect(recipe, extractor, on_background)
    assert ignored.decision == "OK" and ignored.anomaly_map[BACKGROUND_BLOB] < 0.1 * recipe.threshold
    found = inspect(recipe, extractor, scene(photo, 96, blob=PART_BLOB))
    assert found.decision == "NOK"
    peak = np.unravel_index(int(np.argmax(found.anomaly_map)), found.anomaly_map.shape)
    assert np.hypot(peak[0] - PART_BLOB[0], peak[1] - PART_BLOB[1]) < 20


def test_tiles_take_strips_of_any_length_and_find_a_border_defect_once(
        exported_model: Path, photo: np.ndarray, extractor: OnnxRuntimeExtractor, tmp_path: Path) -> None:
    lengths = [532, 546, 560, 574, 588, 553, 567, 539]  # references differ in length, like real strips
    ok = write_set(tmp_path / "ok", [strip(photo, seed, length) for seed, length in enumerate(lengths)])
    recipe = calibrated(exported_model, ok, tmp_path / "tiled", extractor, "--sizing", "tile", "--tile-scale", "1")
    manifest = json.loads((tmp_path / "tiled" / MANIFEST_FILE).read_text())
    assert recipe.sizing == Sizing("tile", 1.0, 0.25) and manifest["input"]["sizing"] == recipe.sizing.to_json()
    assert manifest["input"]["crop_sizes"] == [[532, 224], [588, 224]]

    longer = inspect(recipe, extractor, strip(photo, 50, 700))  # more tiles than any reference had
    assert longer.anomaly_map.shape == (700, 224) and longer.decision == "OK"

    layout = recipe.sizing.layout((560, SIZE), (SIZE, SIZE), 14)
    assert layout.origins == ((0, 0), (168, 0), (336, 0))
    border = (224, 112)  # the bottom edge of the first tile, inside the second
    found = inspect(recipe, extractor, strip(photo, 51, 560, blob=border))
    assert found.decision == "NOK" and found.anomaly_map.shape == (560, 224)
    hot = np.asarray(found.anomaly_map > recipe.threshold, np.uint8)
    count, labels = cv2.connectedComponents(hot)
    assert count - 1 == 1, f"{count - 1} hot regions"  # one region: the overlapping tiles' scores were stitched
    peak = np.unravel_index(int(np.argmax(found.anomaly_map)), found.anomaly_map.shape)
    assert np.hypot(peak[0] - border[0], peak[1] - border[1]) < 20


def test_options_are_checked_before_any_work(exported_model: Path, parts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "recipe"
    base = ["calibrate", "--model", str(exported_model), "--ok", str(parts), "--out", str(out)]
    cases = {
        ("--augment", "rot45"): "--augment 'rot45': expected distinct names from rot90, rot180, rot270, flipx, flipy",
        ("--aggregation", "top0"): "aggregation must be top1pct, max or topN",
        ("--tile-scale", "2"): "--tile-scale 2.0: only with --sizing tile",
        ("--mask", str(tmp_path / "missing.png")): "missing.png: no such file",
        ("--sizing", "tile", "--tile-overlap", "0.95"): "tile overlap 0.95",
    }
    for options, expected in cases.items():
        assert main([*base, *options]) == 2, options
        assert expected in capsys.readouterr().err, options
    wide = write_set(tmp_path / "wide", [np.zeros((100, 300, 3), np.uint8)] * 3)
    assert main([*base[:3], "--ok", str(wide), "--out", str(out), "--folds", "3", "--augment", "rot90"]) == 2
    assert "quarter turns need square crops" in capsys.readouterr().err
    assert not out.exists()


def test_recipes_from_before_the_methods_load_with_the_old_behaviour(plain: Recipe, extractor: OnnxRuntimeExtractor, tmp_path: Path) -> None:
    manifest = json.loads((plain.directory / MANIFEST_FILE).read_text())
    for section, key in (("input", "sizing"), ("input", "crop_sizes"), ("scoring", "mask"), ("calibration", "augment")):
        del manifest[section][key]
    manifest["recipe_id"] = compute_recipe_id(manifest)
    old = tmp_path / "old"
    old.mkdir()
    for path in plain.directory.iterdir():
        (old / path.name).write_bytes(path.read_bytes())
    (old / MANIFEST_FILE).write_text(json.dumps(manifest))
    loaded = Recipe.load(old, extractor.sidecar)
    assert loaded.sizing == Sizing("stretch") and isinstance(loaded.mask, NoMask)


def test_forged_method_fields_are_refused(plain: Recipe, extractor: OnnxRuntimeExtractor, tmp_path: Path) -> None:
    cases = [
        ("input", "sizing", {"mode": "zoom"}, "field 'input.sizing': sizing 'zoom': expected one of stretch, letterbox, tile"),
        ("input", "sizing", {"mode": "tile", "tile_scale": -1.0, "tile_overlap": 0.25}, "tile scale -1.0"),
        ("scoring", "aggregation", "top0", "field 'scoring.aggregation' is 'top0'; allowed 'top1pct', 'max' or 'topN'"),
        ("scoring", "mask", {"mode": "pca"}, r"\[scoring.mask\]: missing key\(s\)"),
        ("scoring", "mask", {"mode": "pca", "file": "mask.npz", "sha256": "0" * 64}, "mask.npz: missing from the recipe"),
    ]
    for section, key, value, expected in cases:
        manifest = json.loads((plain.directory / MANIFEST_FILE).read_text())
        manifest[section][key] = value
        manifest["recipe_id"] = compute_recipe_id(manifest)
        forged = tmp_path / f"forged-{len(list(tmp_path.iterdir()))}"
        forged.mkdir()
        for path in plain.directory.iterdir():
            (forged / path.name).write_bytes(path.read_bytes())
        (forged / MANIFEST_FILE).write_text(json.dumps(manifest))
        with pytest.raises(ConfigError, match=expected):
            Recipe.load(forged, extractor.sidecar)
