"""Demo parts from scikit-image textures: layout, determinism, visible defects."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from calibration.demo_data import DemoCounts, write_demo_set
from calibration.synthetic import DEFECT_KINDS
from okcell.images import read_image
from okcell.schema import ConfigError

COUNTS = DemoCounts(train_ok=4, calib_nok_per_defect=1, holdout_ok=2, holdout_nok_per_defect=2)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.png"))}


def test_layout_and_determinism(tmp_path: Path) -> None:
    first = write_demo_set(tmp_path / "a", size=128, counts=COUNTS, seed=5)
    write_demo_set(tmp_path / "b", size=128, counts=COUNTS, seed=5)
    write_demo_set(tmp_path / "c", size=128, counts=COUNTS, seed=6)
    a, b, c = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert a == b
    assert a.keys() == c.keys() and a["train/ok/ok_000.png"] != c["train/ok/ok_000.png"]
    assert len([k for k in a if k.startswith("train/ok/")]) == 4
    assert len([k for k in a if k.startswith("holdout/ok/")]) == 2
    for kind in DEFECT_KINDS:
        assert len([k for k in a if k.startswith(f"calib/nok/{kind}/")]) == 1
        assert len([k for k in a if k.startswith(f"holdout/nok/{kind}/")]) == 2
    assert "preview.png" in a
    assert first["part"] == "brick" and json.loads((tmp_path / "a" / "demo-data.json").read_text()) == first


def test_ok_parts_vary_like_a_line(tmp_path: Path) -> None:
    write_demo_set(tmp_path, size=128, counts=COUNTS)
    images = [read_image(p) for p in sorted((tmp_path / "train" / "ok").glob("*.png"))]
    assert all(img.shape == (128, 128, 3) for img in images)
    for other in images[1:]:
        assert np.abs(images[0].astype(int) - other.astype(int)).mean() > 5


def test_every_nok_part_has_a_defect_under_its_mask(tmp_path: Path) -> None:
    write_demo_set(tmp_path, size=128, counts=COUNTS)
    noks = sorted((tmp_path / "holdout" / "nok").rglob("*.png")) + sorted((tmp_path / "calib" / "nok").rglob("*.png"))
    assert len(noks) == 12
    for path in noks:
        split = path.relative_to(tmp_path).parts[0]
        mask = read_image(tmp_path / "masks" / split / path.parent.name / path.name)
        area = (mask > 0).mean()
        assert 0.0005 < area < 0.08, f"{path}: defect area {area:.2%}"
        image = read_image(path).astype(np.float32)
        inside = image[mask > 0].mean(axis=0)
        ring = cv2.dilate(mask, np.ones((9, 9), np.uint8)) - mask
        around = image[ring > 0].mean(axis=0)
        assert np.abs(inside - around).max() > 6, f"{path}: defect not visible against its surroundings"


def test_rerun_replaces_own_output_and_refuses_foreign_folder(tmp_path: Path) -> None:
    write_demo_set(tmp_path / "demo", size=96, counts=DemoCounts(3, 1, 1, 1))
    write_demo_set(tmp_path / "demo", size=96, counts=DemoCounts(2, 0, 1, 0))
    assert len(list((tmp_path / "demo" / "train" / "ok").glob("*.png"))) == 2
    assert not (tmp_path / "demo" / "calib").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "photo.png").write_bytes(b"x")
    with pytest.raises(ConfigError, match="not empty"):
        write_demo_set(tmp_path / "mine", size=96, counts=COUNTS)
    with pytest.raises(ConfigError, match="unknown part type"):
        write_demo_set(tmp_path / "new", part="marble", counts=COUNTS)
