"""`okcell inspect` on real files: per-image lines, bad files, JSON lines, overlays, truth from folders."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.cli.main import main
from okcell.images import read_image


@pytest.fixture(scope="module")
def mixed_folder(demo_images: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two good OK images, one NOK, a corrupt file, a 16-bit and a mono image, in sub-folders."""
    root = tmp_path_factory.mktemp("inspect-input")
    oks = sorted((demo_images / "holdout" / "ok").glob("*.png"))[:2]
    (root / "line" / "ok").mkdir(parents=True)
    for path in oks:
        shutil.copy(path, root / "line" / "ok" / path.name)
    (root / "line" / "nok").mkdir()
    shutil.copy(next((demo_images / "holdout" / "nok" / "hole").glob("*.png")), root / "line" / "nok" / "hole.png")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    frame = read_image(oks[0])
    cv2.imwrite(str(root / "deep16.png"), frame[:, :, ::-1].astype(np.uint16) * 257)
    cv2.imwrite(str(root / "mono.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY))
    return root


def test_json_lines_and_per_image_errors(mixed_folder: Path, exported_model: Path, demo_recipe: Path,
                                         tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "overlays"
    code = main(["inspect", str(mixed_folder), "--recipe", str(demo_recipe), "--model", str(exported_model),
                 "--json", "--out", str(out), "--threads", "2"])
    assert code == 1  # some images errored
    records = {Path(r["path"]).name: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert len(records) == 6
    for name in ("broken.png", "deep16.png", "mono.png"):
        record = records[name]
        assert record["decision"] == "ERROR" and record["score"] is None
    assert records["broken.png"]["error"] == "not a readable image (corrupt or unsupported format)"  # path: in "path"
    assert "16-bit" in records["deep16.png"]["error"]
    assert "mono" in records["mono.png"]["error"]
    good = [r for r in records.values() if r["decision"] != "ERROR"]
    assert len(good) == 3
    for record in good:
        assert isinstance(record["score"], float) and isinstance(record["threshold"], float)
        assert set(record["timings_ms"]) == {"preprocess", "backbone", "search", "heatmap", "total"}
        assert "nearest_label" in record and "error" not in record
    assert records["hole.png"]["decision"] == "NOK"
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    # overlays mirror the input tree; the mono frame (readable, refused by the recipe) gets one too
    assert {"line/ok/" + n for n in [k for k in records if k.startswith("ok_")]} <= set(written)
    assert "line/nok/hole.png" in written and "mono.png" in written and "broken.png" not in written
    assert read_image(out / "line" / "nok" / "hole.png").shape == (256, 256, 3)


def test_truth_from_folders_prints_confusion_and_auroc(demo_images: Path, exported_model: Path, demo_recipe: Path,
                                                       tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["inspect", str(demo_images / "holdout"), "--recipe", str(demo_recipe), "--model", str(exported_model),
                 "--truth-from-folders", "--out", str(tmp_path / "out")])
    text = capsys.readouterr().out
    assert code == 0
    lines = text.splitlines()
    assert sum(line.startswith(("OK ", "NOK ")) for line in lines) == 14
    assert "confusion" in text and "NOK:scratch" in text and "false-reject rate" in text and "escape rate" in text
    value = float(next(line for line in lines if line.startswith("image AUROC")).split()[-1])
    assert 0.9 <= value <= 1.0
    assert cv2.imread(str(tmp_path / "out" / "scores.png")) is not None


def test_out_inside_the_input_is_refused(demo_images: Path, exported_model: Path, demo_recipe: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    target = demo_images / "holdout" / "overlays"
    code = main(["inspect", str(demo_images / "holdout"), "--recipe", str(demo_recipe), "--model", str(exported_model),
                 "--out", str(target)])
    assert code == 2 and "inside the inspected folder" in capsys.readouterr().err
    assert not target.exists()


def test_missing_path_is_named(exported_model: Path, demo_recipe: Path, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["inspect", str(tmp_path / "nothing.png"), "--recipe", str(demo_recipe), "--model", str(exported_model)])
    assert code == 2 and "nothing.png: no such file or folder" in capsys.readouterr().err


@pytest.fixture(scope="module")
def faulty_folder(demo_images: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two OK images and a whole JPEG around a 1x1 image, a truncated JPEG, a 4096x3000 image and broken and
    looping symbolic links (a broken link without an image suffix is not an image and is passed over)."""
    root = tmp_path_factory.mktemp("faulty")
    oks = sorted((demo_images / "holdout" / "ok").glob("*.png"))[:2]
    shutil.copy(oks[0], root / "a_ok.png")
    shutil.copy(oks[1], root / "z_ok.png")
    cv2.imwrite(str(root / "tiny.png"), np.full((1, 1, 3), 128, np.uint8))
    cv2.imwrite(str(root / "whole.jpg"), read_image(oks[0])[:, :, ::-1])
    data = (root / "whole.jpg").read_bytes()
    (root / "trunc.jpg").write_bytes(data[: len(data) // 2])
    cv2.imwrite(str(root / "huge.png"), np.tile(read_image(oks[1]), (12, 16, 1))[:3000])
    os.symlink(root / "gone.png", root / "broken.png")
    os.symlink(root / "loop.png", root / "loop.png")
    os.symlink(root / "gone.txt", root / "notes.txt")
    return root


def _lines_naming(text: str, names: list[str]) -> dict[str, str]:
    """The one result line that names each file."""
    lines = [line for line in text.splitlines() if line.startswith(("OK ", "NOK ", "ERROR "))]
    found = {name: [line for line in lines if f"/{name}" in line] for name in names}
    assert all(len(hits) == 1 for hits in found.values()), found
    assert len(lines) == len(names)
    return {name: hits[0] for name, hits in found.items()}


def test_bad_files_are_error_lines_and_the_batch_goes_on(faulty_folder: Path, exported_model: Path, demo_recipe: Path,
                                                         tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "overlays"
    direct = tmp_path / "direct.png"  # a broken link given as PATH is an ERROR line too, not a start-up error
    os.symlink(tmp_path / "gone.png", direct)
    code = main(["inspect", str(faulty_folder), str(direct), "--recipe", str(demo_recipe), "--model", str(exported_model),
                 "--out", str(out), "--threads", "2"])
    text = capsys.readouterr().out
    assert code == 1
    errors = {"broken.png": "broken symbolic link", "loop.png": "symbolic link loop", "tiny.png": "frame of 1x1 px",
              "trunc.jpg": "truncated JPEG", "direct.png": "broken symbolic link"}
    inspected = ("a_ok.png", "whole.jpg", "z_ok.png", "huge.png")  # a frame of any size is inspected (sizing rule)
    lines = _lines_naming(text, [*errors, *inspected])
    for name, reason in errors.items():
        path = faulty_folder / name if name != "direct.png" else direct
        assert lines[name].startswith(f"ERROR  {path}: ") and reason in lines[name], lines[name]
        assert lines[name].count(name) == 1  # the path is named once
    for name in inspected:
        assert lines[name].startswith(("OK ", "NOK ")), lines[name]
    assert "4 inspected, 5 error(s)" in text
    assert read_image(out / "tiny.png").shape == (1, 1, 3)
    assert read_image(out / "huge.png").shape == (1500, 2048, 3)  # overlays are capped at 2048 px
    assert sorted(p.name for p in out.iterdir()) == ["a_ok.png", "huge.png", "tiny.png", "whole.png", "z_ok.png"]


def test_an_overlay_that_cannot_be_written_is_an_error_line(faulty_folder: Path, exported_model: Path,
                                                            demo_recipe: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "overlays"
    (out / "a_ok.png").mkdir(parents=True)  # the overlay's file name is taken by a folder
    code = main(["inspect", str(faulty_folder / "a_ok.png"), str(faulty_folder / "z_ok.png"), "--recipe",
                 str(demo_recipe), "--model", str(exported_model), "--out", str(out), "--json"])
    assert code == 1
    first, second = map(json.loads, capsys.readouterr().out.splitlines())
    assert first["decision"] == "ERROR" and first["path"] == str(faulty_folder / "a_ok.png")
    assert first["error"].startswith(("OK, score", "NOK, score")) and f"{out / 'a_ok.png'}" in first["error"]
    assert "heatmap overlay not written" in first["error"]
    assert second["decision"] in ("OK", "NOK") and read_image(out / "z_ok.png").shape == (256, 256, 3)
