"""Recipe directory: load and verify, tampering, model binding, frame checks, labelled embeddings."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from okcell.labelled import LabelledEmbeddings
from okcell.recipe import BANK_FILE, LABELLED_FILE, MANIFEST_FILE, Recipe, compute_recipe_id
from okcell.images import list_images, read_image
from okcell.roi import Roi
from okcell.sidecar import ModelSidecar
from okcell.schema import ConfigError
from okcell.sizing import Sizing


def _edit_manifest(directory: Path, edit, keep_id: bool = True) -> None:
    path = directory / MANIFEST_FILE
    manifest = json.loads(path.read_text())
    edit(manifest)
    if not keep_id:  # a deliberate forger recomputes the id; the field checks must still catch bad values
        manifest["recipe_id"] = compute_recipe_id(manifest)
    path.write_text(json.dumps(manifest))


def test_load_exposes_what_the_runtime_needs(demo_recipe: Path, demo_images: Path, sidecar: ModelSidecar) -> None:
    recipe = Recipe.load(demo_recipe, sidecar)
    manifest = json.loads((demo_recipe / MANIFEST_FILE).read_text())
    assert recipe.recipe_id == manifest["recipe_id"] and len(recipe.recipe_id) == 12
    assert recipe.threshold == manifest["risk"]["threshold"] > 0
    assert recipe.roi is None and recipe.channels == "colour" and recipe.image_size == (256, 256)
    assert recipe.scorer.bank_size == manifest["bank"]["size"] > 0
    assert manifest["model"]["sha256"] == sidecar.sha256
    assert manifest["bank"]["index"] == {"library": "hnswlib", "space": "ip", "M": 16, "ef_construction": 200, "ef": 64}
    assert manifest["calibration"]["ok_images"] == 30 and manifest["calibration"]["peak_rss_mb"] > 0
    assert manifest["calibration"]["held_out"] == "leave-one-out"
    assert manifest["risk"]["expected_frr"] == 1 / 31  # 30 references are too few for the 1 % target
    low, high = manifest["calibration"]["ok_score_range"]  # held-out OK scores; the threshold is one of them
    assert 0 <= low < recipe.threshold <= high <= 2
    assert set(manifest["risk"]["recall"]) == {"scratch", "stain", "hole", "contamination"}
    assert recipe.labelled is not None and recipe.labelled.counts["OK"] == 30
    assert (demo_recipe / "report.png").stat().st_size > 10_000
    frame = read_image(list_images(demo_images / "holdout" / "ok")[0])
    recipe.check_frame(frame)
    with pytest.raises(ValueError, match="mono frame .* calibrated on colour"):
        recipe.check_frame(frame[:, :, 0])
    recipe.check_frame(frame[:, :200])  # another size: the sizing rule handles it (stretch, recorded)
    assert recipe.sizing == Sizing("stretch") and manifest["input"]["sizing"] == {"mode": "stretch"}
    assert manifest["input"]["crop_sizes"] == [[256, 256], [256, 256]] and manifest["scoring"]["mask"] == {"mode": "none"}


def test_recipe_separates_demo_holdout(demo_recipe: Path, demo_images: Path, exported_model: Path, sidecar: ModelSidecar) -> None:
    from edge.backends.onnxruntime_backend import OnnxRuntimeExtractor

    recipe = Recipe.load(demo_recipe, sidecar)
    extractor = OnnxRuntimeExtractor(exported_model)
    try:
        def scores(folder: Path) -> tuple[np.ndarray, list[str]]:
            paths = sorted(folder.rglob("*.png"))
            features = extractor.extract([recipe.crop(read_image(p)) for p in paths])
            assert recipe.labelled is not None
            return recipe.scorer.score(features.patches)[0], recipe.labelled.nearest_labels(features.embedding)

        ok, ok_labels = scores(demo_images / "holdout" / "ok")
        nok, _ = scores(demo_images / "holdout" / "nok")
    finally:
        extractor.close()
    assert np.mean(ok <= recipe.threshold) >= 5 / 6
    assert np.median(nok) > recipe.threshold and np.median(nok) > np.max(ok)
    assert ok_labels.count("OK") >= 5


def test_edited_manifest_is_refused(recipe_copy: Path, sidecar: ModelSidecar) -> None:
    _edit_manifest(recipe_copy, lambda m: m["risk"].update(threshold=m["risk"]["threshold"] * 2))
    with pytest.raises(ConfigError, match=r"manifest.json: content does not match its recipe_id .* edited after calibration"):
        Recipe.load(recipe_copy, sidecar)


def test_forged_manifest_fields_are_checked(recipe_copy: Path, sidecar: ModelSidecar) -> None:
    _edit_manifest(recipe_copy, lambda m: m["scoring"].update(k="1"), keep_id=False)
    with pytest.raises(ConfigError, match=r"manifest.json \[scoring\]: field 'k' must be int, found '1'"):
        Recipe.load(recipe_copy, sidecar)
    _edit_manifest(recipe_copy, lambda m: (m["scoring"].update(k=1), m["bank"].pop("sha256")), keep_id=False)
    with pytest.raises(ConfigError, match=r"manifest.json \[bank\]: missing key\(s\) sha256"):
        Recipe.load(recipe_copy, sidecar)
    (recipe_copy / MANIFEST_FILE).write_text("{ not json")
    with pytest.raises(ConfigError, match="manifest.json: not valid JSON"):
        Recipe.load(recipe_copy, sidecar)


@pytest.mark.parametrize("edit, message", [
    (lambda m: m["risk"].update(threshold=1e6),
     r"field 'risk.threshold' is 1000000.0; allowed \[0\.\d+, 0\.\d+\] \(held-out OK scores at calibration\)"),
    (lambda m: m["risk"].update(threshold=float("nan")), r"field 'risk.threshold' is nan; allowed \[0\.\d+, 0\.\d+\]"),
    (lambda m: m["calibration"].update(ok_score_range=[0, 1e6]),
     r"field 'calibration.ok_score_range' is \[0, 1000000.0\]; allowed \[low, high\] with 0 <= low <= high <= 2"),
    (lambda m: m["risk"].update(target_frr=1.5), r"field 'risk.target_frr' is 1.5; allowed \[0, 1\)"),
    (lambda m: m["risk"].update(confidence=1.0), r"field 'risk.confidence' is 1.0; allowed \(0, 1\)"),
    (lambda m: m["scoring"].update(k=10**6), r"field 'scoring.k' is 1000000; allowed \[1, 770\] \(the bank size\)"),
    (lambda m: m["scoring"].update(decision="NOK if image score < threshold"),
     r"field 'scoring.decision' is 'NOK if image score < threshold'; allowed 'NOK if image score > threshold'"),
    (lambda m: m["input"].update(roi=[200, 0, 100, 100]),
     r"field 'input.roi' is \[200, 0, 100, 100\]; allowed inside the 256x256 px reference images"),
    (lambda m: m["input"].update(image_size=[256, 0]), r"field 'input.image_size' is \[256, 0\]; allowed \[height, width\]"),
    (lambda m: m["bank"].update(size=0), r"field 'bank.size' is 0; allowed \[1, 7680\] \(bank.max_size, bank.patches_seen\)"),
    (lambda m: m["bank"].update(coreset_ratio=0.0), r"field 'bank.coreset_ratio' is 0.0; allowed \(0, 1\]"),
    (lambda m: m["bank"].update(patches_seen=3), r"field 'bank.patches_seen' is 3; allowed \[30, inf\] "
                                                  r"\(at least one per OK image \(30\)\)"),
    (lambda m: m["bank"]["index"].update(ef=1), r"field 'bank.index.ef' is 1; allowed \[64, 64\] \(bank.ef_tuning.ef\)"),
    (lambda m: m["bank"]["ef_tuning"].update(ef=0), r"field 'bank.ef_tuning.ef' is 0; allowed \[1, 2048\]"),
    (lambda m: m["model"].update(embedding_dim=7), r"field 'model.embedding_dim' is 7; allowed \[384, 384\] \(the model's\)"),
    (lambda m: m["labelled"].update(k=0), r"field 'labelled.k' is 0; allowed \[3, 3\] \(as in labelled.npz\)"),
    (lambda m: m["labelled"]["counts"].update(OK=3), r"field 'labelled.counts' is \{'OK': 3, .*; allowed as in labelled.npz: \{'OK': 30, "),
    (lambda m: m["calibration"].update(folds=1), r"field 'calibration.folds' is 1; allowed \[2, 30\] \(calibration.ok_images\)"),
    (lambda m: m["calibration"].update(held_out="in-bank"),
     r"field 'calibration.held_out' is 'in-bank'; allowed 'leave-one-out' or 'k-fold'"),
    (lambda m: m["risk"].update(expected_frr=0.001),
     r"field 'risk.expected_frr' is 0.001; allowed \[0.0322\d+, 0.0322\d+\] \(the target, or 1/\(calibration.ok_images \+ 1\)"),
])
def test_forged_values_out_of_range_are_refused(recipe_copy: Path, sidecar: ModelSidecar, edit, message: str) -> None:
    """A forger who recomputes the recipe id still cannot load values the calibration could not have written."""
    _edit_manifest(recipe_copy, edit, keep_id=False)
    with pytest.raises(ConfigError, match=rf"{recipe_copy / MANIFEST_FILE}: {message}"):
        Recipe.load(recipe_copy, sidecar)


def test_recipe_of_an_older_format_is_refused(recipe_copy: Path, sidecar: ModelSidecar) -> None:
    _edit_manifest(recipe_copy, lambda m: m.update(format_version=1), keep_id=False)
    with pytest.raises(ConfigError, match=r"field 'format_version' is 1, this okcell reads 2; recalibrate with `okcell calibrate`"):
        Recipe.load(recipe_copy, sidecar)


def test_edited_index_file_is_refused(recipe_copy: Path, sidecar: ModelSidecar) -> None:
    bank = recipe_copy / BANK_FILE
    data = bytearray(bank.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bank.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match=r"bank.hnsw: sha256 .* does not match manifest.json field 'bank.sha256'"):
        Recipe.load(recipe_copy, sidecar)


def test_missing_labelled_file_is_refused(recipe_copy: Path, sidecar: ModelSidecar) -> None:
    (recipe_copy / LABELLED_FILE).unlink()
    with pytest.raises(ConfigError, match=r"labelled.npz: missing from the recipe"):
        Recipe.load(recipe_copy, sidecar)


def test_recipe_for_another_model_is_refused(demo_recipe: Path, sidecar: ModelSidecar) -> None:
    other = dataclasses.replace(sidecar, onnx_sha256="f" * 64, onnx_file="other.onnx")
    with pytest.raises(ConfigError, match=r"manifest.json: recipe was calibrated for model sha256 \w{12}… .* but the loaded model is ffffffffffff…"):
        Recipe.load(demo_recipe, other)


def test_missing_recipe_is_a_clear_error(tmp_path: Path, sidecar: ModelSidecar) -> None:
    with pytest.raises(ConfigError, match="recipe directory not found"):
        Recipe.load(tmp_path / "nothing", sidecar)
    with pytest.raises(ConfigError, match="manifest.json: not found"):
        Recipe.load(tmp_path, sidecar)


def test_labelled_embeddings_vote_and_round_trip(demo_recipe: Path, tmp_path: Path, sidecar: ModelSidecar) -> None:
    labelled = Recipe.load(demo_recipe, sidecar).labelled
    assert labelled is not None
    assert labelled.leave_one_out_agreement()["OK"] == 1.0
    labelled.save(tmp_path / "copy.npz")
    again = LabelledEmbeddings.load(tmp_path / "copy.npz", sidecar.embedding_dim)
    assert again.labels == labelled.labels and again.k == labelled.k
    assert np.allclose(again.embeddings, labelled.embeddings, atol=1e-6)
    first_nok = next(i for i, label in enumerate(labelled.labels) if label != "OK")
    assert labelled.nearest_labels(labelled.embeddings[[0, first_nok]])[0] == "OK"
    with pytest.raises(ConfigError, match=rf"copy.npz: expected \(M, {sidecar.embedding_dim + 1}\) embeddings"):
        LabelledEmbeddings.load(tmp_path / "copy.npz", sidecar.embedding_dim + 1)


def test_roi_parsing_and_crop() -> None:
    roi = Roi.parse("10, 20, 30, 40")
    assert (roi.x, roi.y, roi.width, roi.height) == (10, 20, 30, 40) and roi.size == (40, 30)
    assert Roi.from_json(roi.to_json()) == roi
    frame = np.arange(100 * 80, dtype=np.uint32).reshape(100, 80).astype(np.uint8)
    assert np.array_equal(roi.crop(frame), frame[20:60, 10:40])
    with pytest.raises(ValueError, match=r"ROI x=10 y=20 30x40 does not fit in a 35x100 px frame \(needs at least 40x60 px\)"):
        roi.crop(frame[:, :35])
    for text, message in (("1,2,3", "four integers"), ("a,b,c,d", "four integers"), ("-1,0,5,5", "must not be negative"),
                          ("0,0,0,5", "must be positive")):
        with pytest.raises(ConfigError, match=message):
            Roi.parse(text)
    with pytest.raises(ConfigError, match=r"manifest: expected \[x, y, width, height\]"):
        Roi.from_json({"x": 1}, "manifest")
    with pytest.raises(ConfigError, match="manifest: ROI field 'width' must be an integer"):
        Roi.from_json([0, 0, 1.5, 2], "manifest")


def test_recipe_from_before_leave_one_out_still_loads(recipe_copy: Path, sidecar: ModelSidecar) -> None:
    """Recipes written before the held-out method and the expected FRR were recorded (k-fold thresholds) load."""
    _edit_manifest(recipe_copy, lambda m: (m["calibration"].pop("held_out"), m["risk"].pop("expected_frr")), keep_id=False)
    assert Recipe.load(recipe_copy, sidecar).threshold > 0
