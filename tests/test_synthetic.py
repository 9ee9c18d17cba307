"""Procedural defects on real texture photos, and `okcell synthesize` on a folder."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from calibration.demo_data import make_part, texture
from calibration.synthetic import DEFECT_KINDS, add_defect, parse_kinds, synthesize_folder
from edge.cli.main import main
from okcell.schema import ConfigError


@pytest.fixture(scope="module")
def part() -> np.ndarray:
    return make_part(texture("brick"), 192, np.random.default_rng(3))


@pytest.mark.parametrize("kind", DEFECT_KINDS)
@pytest.mark.parametrize("mono", [False, True])
def test_each_kind_changes_pixels_inside_a_small_mask(part: np.ndarray, kind: str, mono: bool) -> None:
    image = part[:, :, 1].copy() if mono else part
    for seed in range(4):
        defect = add_defect(image, kind, np.random.default_rng(seed), foreign=texture("gravel"))
        assert defect.image.shape == image.shape and defect.image.dtype == np.uint8
        assert defect.mask.shape == image.shape[:2] and set(np.unique(defect.mask)) <= {0, 255}
        area = (defect.mask > 0).mean()
        assert 0.0005 < area < 0.08, f"{kind}: defect covers {area:.2%} of the part"
        diff = np.abs(defect.image.astype(int) - image.astype(int))
        if diff.ndim == 3:
            diff = diff.max(axis=2)
        assert np.median(diff[defect.mask > 0]) >= 8  # clearly visible inside the mask
        # far from the mask nothing changes
        far = cv2.dilate(defect.mask, np.ones((15, 15), np.uint8)) == 0
        assert diff[far].max() == 0


def test_same_seed_same_defect(part: np.ndarray) -> None:
    first = add_defect(part, "scratch", np.random.default_rng(7))
    second = add_defect(part, "scratch", np.random.default_rng(7))
    third = add_defect(part, "scratch", np.random.default_rng(8))
    assert np.array_equal(first.image, second.image) and np.array_equal(first.mask, second.mask)
    assert not np.array_equal(first.mask, third.mask)


def test_bad_requests_are_refused(part: np.ndarray) -> None:
    with pytest.raises(ValueError, match="unknown defect kind 'dent'"):
        add_defect(part, "dent", np.random.default_rng(0))
    with pytest.raises(ValueError, match="uint8"):
        add_defect(part.astype(np.uint16), "hole", np.random.default_rng(0))
    with pytest.raises(ConfigError, match="dent"):
        parse_kinds("scratch,dent")
    assert parse_kinds("hole, scratch,hole") == ["hole", "scratch"]


def test_synthesize_cli_writes_images_and_masks(tmp_path: Path, part: np.ndarray) -> None:
    source = tmp_path / "ok" / "line1"
    source.mkdir(parents=True)
    for i in range(3):
        cv2.imwrite(str(source / f"part{i}.png"), np.roll(part, 20 * i, axis=1)[:, :, ::-1])
    out = tmp_path / "synthetic"
    assert main(["synthesize", "--from", str(tmp_path / "ok"), "--out", str(out), "--kinds", "hole,stain",
                 "--count", "2"]) == 0
    images = sorted((out / "nok").rglob("*.png"))
    assert [p.parent.name for p in images] == ["hole", "hole", "stain", "stain"]
    for path in images:
        mask = cv2.imread(str(out / "masks" / path.parent.name / path.name), cv2.IMREAD_UNCHANGED)
        assert mask is not None and mask.shape == part.shape[:2] and (mask > 0).any()
    assert json.loads((out / "synthesize.json").read_text())["images"] == 4
    # a second run replaces its own output; a folder with other files is never written into
    assert main(["synthesize", "--from", str(source), "--out", str(out), "--kinds", "hole", "--count", "1"]) == 0
    assert len(list((out / "nok").rglob("*.png"))) == 1
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    with pytest.raises(ConfigError, match="not empty"):
        synthesize_folder(source, foreign, ["hole"], 1)
    assert (foreign / "notes.txt").read_text() == "keep"


def test_synthesize_names_an_unreadable_source(tmp_path: Path, part: np.ndarray) -> None:
    (tmp_path / "ok").mkdir()
    cv2.imwrite(str(tmp_path / "ok" / "good.png"), part)
    (tmp_path / "ok" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ConfigError, match="broken.png"):
        synthesize_folder(tmp_path / "ok", tmp_path / "out", ["scratch"], 1)
    assert not (tmp_path / "out").exists()
