"""``okcell evaluate``: metrics against hand-computed values, and the command end to end on a tiny data set."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from calibration.eval_data import EvalSet
from calibration.evaluation import auroc
from calibration.perturbations import PERTURBATIONS, SHIFT_PX
from calibration.pixel_metrics import aupro, area_under, pixel_auroc, pro_curve, roc_curve
from calibration.thresholds import measured_threshold, risk_at
from edge.cli.main import main


def test_auroc_counts_ties_half_and_the_roc_area_agrees():
    ok, nok = np.array([0.1, 0.2, 0.3]), np.array([0.3, 0.4])
    # 0.3 beats 0.1 and 0.2 and ties 0.3 (2.5 of 3), 0.4 beats all three: 5.5 of 6 pairs
    assert auroc(ok, nok) == pytest.approx(5.5 / 6)
    fpr, tpr = roc_curve(np.r_[ok, nok], np.r_[np.zeros(3, bool), np.ones(2, bool)])
    assert fpr.tolist() == pytest.approx([0, 0, 1 / 3, 2 / 3, 1])
    assert tpr.tolist() == pytest.approx([0, 0.5, 1, 1, 1])
    assert area_under(fpr, tpr) == pytest.approx(5.5 / 6)


def test_recall_at_a_target_false_reject_rate_uses_a_threshold_from_the_ok_scores():
    ok = np.arange(100) / 100.0  # 0.00 ... 0.99
    nok = {"scratch": np.array([0.5, 0.985, 0.99, 1.2])}
    one_percent = risk_at(measured_threshold(ok, 0.01), ok, nok, 0.01)  # one OK score (0.99) may lie above: threshold 0.98
    assert one_percent.threshold == pytest.approx(0.98)
    assert (one_percent.false_rejects.events, one_percent.false_rejects.total) == (1, 100)
    assert one_percent.detected_per_defect["scratch"].events == 3
    tenth = risk_at(measured_threshold(ok, 0.001), ok, nok, 0.001)  # floor(0.1) = 0 above: the highest OK score; a tie with it is not caught
    assert tenth.threshold == pytest.approx(0.99)
    assert tenth.false_rejects.events == 0
    assert tenth.detected_per_defect["scratch"].events == 1
    assert tenth.to_json()["recall"]["scratch"]["rate"] == pytest.approx(0.25)


def test_pixel_auroc_on_tiny_maps():
    maps = [np.array([[0.1, 0.4, 0.35, 0.8]]), np.array([[0.35, 0.0]])]
    masks = [np.array([[0, 0, 1, 1]]), np.array([[0, 0]])]
    # defect pixels 0.35 and 0.8 against good pixels 0.1, 0.4, 0.35, 0.0:
    # 0.35 beats 0.1 and 0.0, ties 0.35 (2.5 of 4); 0.8 beats all four: 6.5 of 8
    assert pixel_auroc(maps, masks) == pytest.approx(6.5 / 8)


def test_aupro_integrates_the_region_overlap_to_30_percent_false_positives():
    maps = [np.array([[0.9, 0.5, 0.6, 0.1, 0.7]]), np.array([[0.2, 0.3]])]
    masks = [np.array([[1, 1, 0, 0, 1]]), np.zeros((1, 2))]
    # regions {0, 1} and {4}; 4 good pixels. Highest first: 0.9 (half of region 1: PRO 0.25), 0.7 (region 2: PRO
    # 0.75), 0.6 (good: FPR 0.25), 0.5 (region 1 complete: PRO 1), then only good pixels.
    fpr, pro = pro_curve(maps, masks)
    assert fpr.tolist() == pytest.approx([0, 0, 0, 0.25, 0.25, 0.5, 0.75, 1])
    assert pro.tolist() == pytest.approx([0, 0.25, 0.75, 0.75, 1, 1, 1, 1])
    # up to FPR 0.3: 0.25 x 0.75 + 0.05 x 1 = 0.2375, normalised by 0.3
    assert aupro(maps, masks) == pytest.approx(0.2375 / 0.3)
    assert aupro(maps, masks, fpr_limit=1.0) == pytest.approx(0.25 * 0.75 + 0.75)


def test_aupro_regions_are_8_connected():
    amap = np.array([[0.9, 0.5, 0.4], [0.6, 0.1, 0.2]])
    mask = np.array([[1, 0, 0], [0, 1, 1]])  # one region of 3 pixels (diagonal touch), not regions of 1 and 2
    # only the 0.9 pixel lies above every good pixel: a third of the one region (with 4-connectivity it would be 0.5)
    assert aupro([amap], [mask]) == pytest.approx(1 / 3)


def test_perturbations_keep_the_frame_format_and_do_what_they_say():
    frame = np.full((40, 50, 3), 100, np.uint8)
    frame[10, 10] = 250
    for perturbation in PERTURBATIONS:
        changed = perturbation.apply(frame)
        assert changed.shape == frame.shape and changed.dtype == np.uint8, perturbation.name
        assert perturbation.apply(frame[:, :, 0]).shape == frame.shape[:2], perturbation.name
    by_name = {p.name: p.apply for p in PERTURBATIONS}
    assert by_name["brightness+20%"](frame)[0, 0].tolist() == [120, 120, 120]
    assert by_name["brightness-20%"](frame)[0, 0].tolist() == [80, 80, 80]
    # the view moves: content moves up and left by about SHIFT_PX (plus the small zoom back to full size)
    row, col = np.unravel_index(np.argmax(by_name["shift"](frame)[:, :, 0]), frame.shape[:2])
    assert abs(row - (10 - SHIFT_PX) * 40 / (40 - SHIFT_PX)) <= 1 and abs(col - (10 - SHIFT_PX) * 50 / (50 - SHIFT_PX)) <= 1
    edge = np.full((40, 50), 100, np.uint8)
    edge[:, :2] = 0  # a dark left border is cropped away, never mirrored or smeared into the frame
    assert (by_name["shift"](edge)[:, 3:] == 100).all()
    assert by_name["blur"](frame)[10, 10, 0] < 250


def test_an_okcell_demo_data_folder_is_read_as_an_evaluation_set(demo_images):
    data = EvalSet.open(demo_images)
    assert data.train_ok == demo_images / "train" / "ok"
    assert sum(image.defect is None for image in data.test) == 6
    assert data.defects == ["contamination", "hole", "scratch", "stain"]
    assert data.masked == 8  # every demo defect has its mask under masks/holdout/


def test_a_folder_without_test_ok_images_is_refused_by_name(tmp_path, demo_images):
    shutil.copytree(demo_images / "train" / "ok", tmp_path / "train" / "ok")
    assert main(["evaluate", "--data", str(tmp_path), "--model", "m.onnx", "--out", str(tmp_path / "out")]) == 2


@pytest.fixture(scope="module")
def small_set(demo_images: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The MVTec-style layout (train/ok, test/ok, test/nok/<defect>, ground_truth) from the demo parts, with one
    corrupt file among the defective parts."""
    root = tmp_path_factory.mktemp("eval-set")
    (root / "train" / "ok").mkdir(parents=True)
    for path in sorted((demo_images / "train" / "ok").iterdir())[:10]:
        shutil.copy(path, root / "train" / "ok")
    shutil.copytree(demo_images / "holdout" / "ok", root / "test" / "ok")
    for defect in ("scratch", "stain"):
        shutil.copytree(demo_images / "holdout" / "nok" / defect, root / "test" / "nok" / defect)
        (root / "ground_truth" / defect).mkdir(parents=True)
        for mask in (demo_images / "masks" / "holdout" / defect).iterdir():
            shutil.copy(mask, root / "ground_truth" / defect / f"{mask.stem}_mask.png")
    (root / "test" / "nok" / "scratch" / "broken.png").write_bytes(b"not a png")
    return root


@pytest.fixture(scope="module")
def evaluation(exported_model: Path, small_set: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[int, Path]:
    out = tmp_path_factory.mktemp("evaluation") / "run"
    status = main(["evaluate", "--data", str(small_set), "--model", str(exported_model), "--out", str(out),
                   "--k", "2", "--aggregation", "max", "--synthetic", "1", "--worst", "2", "--threads", "2"])
    return status, out


def test_evaluate_writes_the_report_with_every_measure(evaluation, small_set):
    status, out = evaluation
    assert status == 1  # one image gave ERROR; the others were all inspected
    result = json.loads((out / "evaluation.json").read_text())
    assert result["status"] == "complete" and result["label"] == "run"
    assert result["data"]["test_nok"] == {"scratch": 3, "stain": 2} and result["data"]["masks"] == 4
    assert result["recipe"]["settings"]["scoring"]["k"] == 2  # calibrate options reach the calibration
    assert result["recipe"]["settings"]["scoring"]["aggregation"] == "max"
    assert 0.0 <= result["image"]["auroc"] <= 1.0
    assert set(result["image"]["auroc_per_defect"]) == {"scratch", "stain"}
    at_recipe = result["at_recipe_threshold"]
    assert at_recipe["frr"]["total"] == 6 and at_recipe["escape"]["total"] == 4
    assert at_recipe["frr"]["upper95"] >= at_recipe["frr"]["rate"]
    assert isinstance(at_recipe["frr_bound_holds"], bool) and 0.0 <= at_recipe["frr_chance_at_bound"] <= 1.0
    assert at_recipe["expected_frr"] == pytest.approx(1 / 11)  # 10 references are too few for 1 %: 1/(n + 1)
    assert [risk["target_frr"] for risk in result["at_test_frr"]] == [0.01, 0.001]
    assert 0.0 <= result["pixel"]["auroc"] <= 1.0 and 0.0 <= result["pixel"]["aupro"] <= 1.0
    assert result["pixel"]["images"] == 10  # 6 good + 4 masked defective
    assert result["cycle_ms"]["total"]["count"] == 10
    assert result["cycle_ms"]["total"]["p99"] >= result["cycle_ms"]["total"]["p50"] > 0
    assert [row["name"] for row in result["robustness"]["rows"]] == ["none"] + [p.name for p in PERTURBATIONS]
    assert all(row["frr"]["total"] == 6 for row in result["robustness"]["rows"])
    assert set(result["synthetic"]["auroc"]) == {"real", "synthetic", "scratch", "stain", "hole", "contamination"}
    assert [row["threshold_name"] for row in result["synthetic"]["rows"]] == ["recipe", "test FRR 1 %", "test FRR 0.1 %"]
    broken = str(small_set / "test" / "nok" / "scratch" / "broken.png")
    assert [e["path"] for e in result["errors"]] == [broken]
    assert next(i for i in result["inspections"] if i["path"] == broken)["decision"] == "ERROR"
    assert len(result["inspections"]) == 11
    for name in ("roc", "scores", "worst"):
        image = cv2.imread(str(out / result["figures"][name]))
        assert image is not None and min(image.shape[:2]) > 200, name
    report = (out / "evaluation.md").read_text()
    for heading in ("## Summary", "## Per defect type", "## Robustness", "## Synthetic defects", "## Recipe settings",
                    "## Errors (1)", "from test OK"):
        assert heading in report
    assert "| false-reject rate the recipe expects on new parts | 9.09 % |" in report
    assert "broken.png" in report and "![worst](worst.png)" in report


def test_compare_prints_runs_side_by_side(evaluation, tmp_path, capsys):
    _, out = evaluation
    other = tmp_path / "other.json"
    result = json.loads((out / "evaluation.json").read_text())
    other.write_text(json.dumps({**result, "label": "other", "model": {**result["model"], "input_size": [560, 224]}}))
    capsys.readouterr()
    assert main(["evaluate", "--compare", str(out / "evaluation.json"), str(other)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| measure | run | other |"
    auroc_row = next(line for line in lines if line.startswith("| image AUROC |"))
    assert auroc_row.count(f"{result['image']['auroc']:.3f}") == 2
    assert any(line.startswith("|   scratch |") for line in lines)
    assert "| FRR expected by the recipe | 9.09 % | 9.09 % |" in lines
    height, width = result["model"]["input_size"]
    assert next(line for line in lines if line.startswith("| model |")).startswith(f"| model | {height}x{width} px, block 9 | 560x224 px, block 9 |")


def test_compare_refuses_an_unfinished_run(tmp_path, capsys):
    running = tmp_path / "evaluation.json"
    running.write_text(json.dumps({"status": "running"}))
    assert main(["evaluate", "--compare", str(running)]) == 2
    assert "not a complete `okcell evaluate` result" in capsys.readouterr().err


def test_a_calibration_that_cannot_run_leaves_a_failed_result_naming_why(exported_model, small_set, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["evaluate", "--data", str(small_set), "--model", str(exported_model), "--out", str(out),
                 "--folds", "20"]) == 2
    result = json.loads((out / "evaluation.json").read_text())
    assert result["status"] == "failed" and "need at least one per fold" in result["error"]
    assert "need at least one per fold" in capsys.readouterr().err
