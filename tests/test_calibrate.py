"""``okcell calibrate`` end to end on the real model: mono + ROI, overwrite protection, clear input errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import pytest

from okcell.recipe import MANIFEST_FILE, Recipe
from edge.cli.main import main
from okcell.images import list_images, read_image
from okcell.sidecar import load_verified


@pytest.fixture(scope="module")
def mono_set(demo_images: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 OK and 2 + 2 NOK demo parts converted to 8-bit mono, as from a monochrome camera."""
    root = tmp_path_factory.mktemp("mono")
    jobs = [(demo_images / "train" / "ok", root / "ok", 12)]
    jobs += [(demo_images / "calib" / "nok" / kind, root / "nok" / kind, 2) for kind in ("scratch", "hole")]
    for source, target, count in jobs:
        target.mkdir(parents=True)
        for path in list_images(source)[:count]:
            cv2.imwrite(str(target / path.name), cv2.cvtColor(read_image(path), cv2.COLOR_RGB2GRAY))
    return root


def _calibrate(model: Path, ok: Path, out: Path, *extra: str) -> int:
    return main(["calibrate", "--model", str(model), "--ok", str(ok), "--out", str(out), "--folds", "3", *extra])


def _tree(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_mono_images_with_roi(exported_model: Path, mono_set: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "recipe"
    rc = _calibrate(exported_model, mono_set / "ok", out, "--nok", str(mono_set / "nok" / "scratch"), str(mono_set / "nok" / "hole"),
                    "--roi", "16,16,208,208", "--k", "2", "--aggregation", "max", "--coreset-ratio", "0.2", "--target-frr", "0.1",
                    "--held-out", "k-fold")
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    for expected in ("threshold", "FRR (held-out OK)", "escape rate (NOK)", "recall scratch", "recall hole", "bank 615 patches", "peak RSS"):
        assert expected in printed.out
    assert "OK features: 12/12 images" in printed.err
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert manifest["input"] == {"roi": [16, 16, 208, 208], "channels": "mono", "image_size": [256, 256],
                                 "sizing": {"mode": "stretch"}, "crop_sizes": [[208, 208], [208, 208]]}
    assert manifest["scoring"]["k"] == 2 and manifest["scoring"]["aggregation"] == "max"
    assert manifest["bank"]["size"] == 3 * 205  # 3 folds of 4 images: ceil(0.2 * 4 * 256) patches each
    assert manifest["risk"]["frr"]["total"] == 12 and manifest["risk"]["escape"]["total"] == 4
    assert manifest["risk"]["target_frr"] == 0.1 and manifest["risk"]["frr"]["events"] <= 1
    assert manifest["calibration"]["held_out"] == "k-fold" and manifest["risk"]["expected_frr"] == 0.1
    recipe = Recipe.load(out, load_verified(exported_model))
    frame = read_image(list_images(mono_set / "ok")[0])
    assert recipe.crop(frame).shape == (208, 208)
    with pytest.raises(ValueError, match="colour frame .* calibrated on mono"):
        recipe.check_frame(cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB))
    with pytest.raises(ValueError, match="does not fit in a 200x200 px frame"):
        recipe.check_frame(frame[:200, :200])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe"]  # no staging left behind


def test_existing_recipe_is_never_lost(exported_model: Path, mono_set: Path, demo_recipe: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = Path(shutil.copytree(demo_recipe, tmp_path / "recipe"))
    before = _tree(out)
    assert _calibrate(exported_model, mono_set / "ok", out) == 2
    assert "pass --force to replace it" in capsys.readouterr().err
    assert _tree(out) == before

    broken = Path(shutil.copytree(mono_set / "nok", tmp_path / "nok"))
    (broken / "scratch" / "zz_truncated.png").write_bytes((broken / "scratch" / list_images(broken / "scratch")[0].name).read_bytes()[:200])
    assert _calibrate(exported_model, mono_set / "ok", out, "--nok", str(broken), "--force") == 2
    assert "zz_truncated.png: not a readable image" in capsys.readouterr().err
    assert _tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nok", "recipe"]

    assert _calibrate(exported_model, mono_set / "ok", out, "--synthetic", str(mono_set / "nok"), "--force") == 0
    replaced = json.loads((out / MANIFEST_FILE).read_text())
    assert replaced["recipe_id"] != json.loads(before[MANIFEST_FILE])["recipe_id"] and replaced["input"]["channels"] == "mono"
    assert replaced["labelled"]["counts"] == {"OK": 12, "synthetic:hole": 2, "synthetic:scratch": 2}
    assert replaced["risk"]["escape"] is None  # synthetic references label, they do not count as escapes

    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("not a recipe")
    assert _calibrate(exported_model, mono_set / "ok", other, "--force") == 2
    assert "not a recipe; refusing to replace it" in capsys.readouterr().err
    assert (other / "keep.txt").read_text() == "not a recipe"


def test_bad_inputs_name_the_file(exported_model: Path, mono_set: Path, demo_images: Path, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "recipe"
    assert _calibrate(exported_model, mono_set / "ok", out, "--roi", "100,100,200,200") == 2
    assert "ok_000.png: 256x256 px is smaller than the required 300x300 px (ROI 100,100,200,200 needs it)" in capsys.readouterr().err

    mixed = Path(shutil.copytree(mono_set / "ok", tmp_path / "mixed"))
    shutil.copy(list_images(demo_images / "train" / "ok")[1], mixed / "ok_001.png")
    assert _calibrate(exported_model, mixed, out) == 2
    assert "ok_001.png: colour image, but the references are mono" in capsys.readouterr().err

    assert _calibrate(exported_model, tmp_path / "missing", out) == 2
    assert "--ok: " in capsys.readouterr().err
    assert _calibrate(exported_model, mono_set / "ok", out, "--folds", "13") == 2
    assert "12 images; need at least one per fold (--folds 13)" in capsys.readouterr().err
    assert _calibrate(exported_model, mono_set / "ok", out, "--roi", "1,2,3") == 2
    assert "expected four integers x,y,width,height" in capsys.readouterr().err
    assert _calibrate(exported_model, mono_set / "ok", out, "--hnsw-ef", "4096") == 2
    assert "--hnsw-ef 4096: at most 2048" in capsys.readouterr().err
    assert not out.exists()
