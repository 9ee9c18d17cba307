"""A recipe directory: reference bank (hnswlib), labelled embeddings, report and a manifest binding them to one model.

``manifest.json`` holds the okcell version, the model's ONNX sha256 and input, ROI, channels and sizing rule,
scoring (k, aggregation, background mask) and index parameters, file hashes, how the OK references were held out, the
threshold, the held-out OK score range and the stated risk. ``recipe_id`` is a short hash of the manifest content
(without the creation date), so any edit to the manifest, the bank or the labelled embeddings is detected on load —
unless the editor recomputes the id.
Against that, every loaded value is checked against what a calibration can write (the threshold lies within the
held-out OK scores, the ROI inside the images, k within the bank, ...), and a recipe can be signed
(``manifest.json.sig``, :mod:`okcell.signing`): loaded with a public key, an unsigned or wrongly signed recipe is
refused.
Recipes are written into a staging directory beside the destination and renamed into place only when complete.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from okcell.bank_index import MAX_EF, IndexParams, load_index
from okcell.frames import CropFeatures, CropScore, score_crop
from okcell.images import ImageError, read_image
from okcell.labelled import LabelledEmbeddings
from okcell.masking import ImageMask, Mask, NoMask, PcaMask
from okcell.names import HELD_OUT
from okcell.roi import Roi
from okcell.schema import ConfigError, parse_json, read_bytes, require_keys, sha256_file, typed
from okcell.scoring import DECISION_RULE, SCORE_RANGE, PatchScorer, check_aggregation, expected_frr
from okcell.sidecar import ModelSidecar
from okcell.signing import load_public_key, verify_file
from okcell.sizing import Sizing

RECIPE_FORMAT = 2
MIN_CROP_SIDE = 14  # px: one DINOv2 patch; a smaller region holds nothing to compare with the references
MANIFEST_FILE = "manifest.json"
BANK_FILE = "bank.hnsw"
LABELLED_FILE = "labelled.npz"
REPORT_FILE = "report.png"
PCA_MASK_FILE = "mask.npz"
IMAGE_MASK_FILE = "mask.png"

_TOP_KEYS = {"format_version", "recipe_id", "okcell_version", "created", "model", "input", "scoring", "bank", "labelled", "risk", "calibration"}
_SECTIONS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "model": {"onnx_file": str, "sha256": str, "input_size": list, "feature_dim": int, "embedding_dim": int},
    "input": {"roi": (list, type(None)), "channels": str, "image_size": list},
    "scoring": {"k": int, "aggregation": str, "decision": str},
    "bank": {"file": str, "sha256": str, "size": int, "coreset_ratio": float, "max_size": int, "patches_seen": int, "index": dict, "ef_tuning": dict},
    "risk": {"threshold": float, "target_frr": float, "confidence": float, "frr": dict, "escape": (dict, type(None)), "recall": dict},
    "calibration": {"ok_images": int, "folds": int, "ok_score_range": list, "backend": str, "nok_images": dict, "synthetic_images": dict, "peak_rss_mb": float},
}
# added after format 1 was released: recipes written before them load with the old behaviour (stretch, no mask,
# a k-fold threshold with no expected FRR stated)
_OPTIONAL: dict[str, dict[str, type | tuple[type, ...]]] = {
    "input": {"sizing": dict, "crop_sizes": list},
    "scoring": {"mask": dict},
    "risk": {"expected_frr": float},
    "calibration": {"augment": list, "held_out": str},
}
_LABELLED_KEYS: dict[str, type | tuple[type, ...]] = {"file": str, "sha256": str, "k": int, "counts": dict}
_MASK_KEYS: dict[str, type | tuple[type, ...]] = {"mode": str, "file": str, "sha256": str}


def compute_recipe_id(manifest: dict[str, Any]) -> str:
    """12 hex digits of sha256 over the canonical manifest without ``recipe_id`` and ``created``."""
    content = {key: value for key, value in manifest.items() if key not in ("recipe_id", "created")}
    return hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:12]


def write_manifest(directory: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Set ``recipe_id`` and write ``manifest.json`` into ``directory``; returns the manifest written."""
    manifest = {**manifest, "format_version": RECIPE_FORMAT}
    manifest["recipe_id"] = compute_recipe_id(manifest)
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def check_destination(out: Path, force: bool) -> None:
    """Refuse to replace anything without ``force``, and never replace a directory that is not a recipe."""
    if not out.exists():
        if not out.parent.is_dir():
            raise ConfigError(f"{out}: parent folder {out.parent} does not exist")
        return
    if not out.is_dir():
        raise ConfigError(f"{out}: exists and is not a recipe directory; choose another --out")
    if not force:
        raise ConfigError(f"{out}: a recipe already exists there; pass --force to replace it (the old one is kept until the new one is complete)")
    if any(out.iterdir()) and not (out / MANIFEST_FILE).is_file():
        raise ConfigError(f"{out}: not empty and holds no {MANIFEST_FILE}, so it is not a recipe; refusing to replace it even with --force")


def staging_directory(out: Path) -> Path:
    """A fresh directory beside ``out`` to write the new recipe into."""
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    return staging


def publish(staging: Path, out: Path, force: bool) -> None:
    """Move a complete recipe from ``staging`` to ``out``; an old recipe there is removed only after the move."""
    check_destination(out, force)
    retired = out.parent / f".{out.name}.replaced-{os.getpid()}"
    if out.exists():
        out.rename(retired)
    try:
        staging.rename(out)
    except OSError:
        if retired.exists():
            retired.rename(out)
        raise
    if retired.exists():
        shutil.rmtree(retired)


def _section(manifest: dict[str, Any], name: str, fields: dict[str, type | tuple[type, ...]], source: str,
             optional: dict[str, type | tuple[type, ...]] | None = None) -> dict[str, Any]:
    data = typed(manifest, name, dict, source)
    where = f"{source} [{name}]"
    optional = optional or {}
    require_keys(data, set(fields), set(optional), where)
    for key, kind in {**fields, **{k: v for k, v in optional.items() if k in data}}.items():
        typed(data, key, (int, float) if kind is float else kind, where)
    return data


def _verify_file(directory: Path, entry: dict[str, Any], field: str) -> Path:
    path = directory / entry["file"]
    if Path(entry["file"]).name != entry["file"]:
        raise ConfigError(f"{directory / MANIFEST_FILE}: field '{field}.file' must be a file name in the recipe, found {entry['file']!r}")
    if not path.is_file():
        raise ConfigError(f"{path}: missing from the recipe (listed in {MANIFEST_FILE} field '{field}.file')")
    actual = sha256_file(path)
    if actual != entry["sha256"]:
        raise ConfigError(
            f"{path}: sha256 {actual[:12]}… does not match {MANIFEST_FILE} field '{field}.sha256' ({entry['sha256'][:12]}…); "
            "the file was changed after calibration — recalibrate with `okcell calibrate`"
        )
    return path


def _allowed(source: str, field: str, value: Any, ok: bool, allowed: str) -> None:
    """ConfigError naming the file, the field, its value and what is allowed, unless ``ok``."""
    if not ok:
        raise ConfigError(f"{source}: field '{field}' is {value!r}; allowed {allowed}")


def _within(source: str, field: str, value: Any, low: Any, high: Any, why: str) -> None:
    _allowed(source, field, value, low <= value <= high, f"[{low}, {high}] ({why})")


def _check_values(sections: dict[str, dict[str, Any]], roi: Roi | None, sidecar: ModelSidecar, source: str) -> None:
    """Every value a calibration writes must lie in the range it can write (see the module doc)."""
    model, inputs, scoring, bank, risk, calibration = (
        sections[k] for k in ("model", "input", "scoring", "bank", "risk", "calibration"))
    _within(source, "model.embedding_dim", model["embedding_dim"], sidecar.embedding_dim, sidecar.embedding_dim, "the model's")
    ok_images = calibration["ok_images"]
    _within(source, "calibration.folds", calibration["folds"], 2, ok_images, "calibration.ok_images")
    held_out = calibration.get("held_out", "k-fold")
    _allowed(source, "calibration.held_out", held_out, held_out in HELD_OUT, " or ".join(map(repr, HELD_OUT)))
    scores = calibration["ok_score_range"]
    _allowed(source, "calibration.ok_score_range", scores,
             len(scores) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in scores)
             and SCORE_RANGE[0] <= scores[0] <= scores[1] <= SCORE_RANGE[1],
             f"[low, high] with {SCORE_RANGE[0]:g} <= low <= high <= {SCORE_RANGE[1]:g}")
    _within(source, "risk.threshold", risk["threshold"], scores[0], scores[1], "held-out OK scores at calibration")
    _allowed(source, "risk.target_frr", risk["target_frr"], 0 <= risk["target_frr"] < 1, "[0, 1)")
    if "expected_frr" in risk:
        expected = expected_frr(ok_images, risk["target_frr"])
        _within(source, "risk.expected_frr", risk["expected_frr"], expected, expected,
                "the target, or 1/(calibration.ok_images + 1) if that is higher")
    _allowed(source, "risk.confidence", risk["confidence"], 0 < risk["confidence"] < 1, "(0, 1)")
    size = inputs["image_size"]
    _allowed(source, "input.image_size", size, len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size),
             "[height, width] in pixels")
    if roi is not None:
        _allowed(source, "input.roi", inputs["roi"], roi.fits((size[0], size[1])),
                 f"inside the {size[1]}x{size[0]} px reference images")
    # masks drop background patches, tiles and augmented copies add patches: at least one per OK image is seen
    patches = bank["patches_seen"]
    _within(source, "bank.patches_seen", patches, ok_images, math.inf, f"at least one per OK image ({ok_images})")
    _allowed(source, "bank.coreset_ratio", bank["coreset_ratio"], 0 < bank["coreset_ratio"] <= 1, "(0, 1]")
    _within(source, "bank.max_size", bank["max_size"], calibration["folds"], math.inf, "calibration.folds and up")
    _within(source, "bank.size", bank["size"], 1, min(bank["max_size"], patches), "bank.max_size, bank.patches_seen")
    k = scoring["k"]
    _within(source, "scoring.k", k, 1, bank["size"], "the bank size")
    try:
        check_aggregation(scoring["aggregation"])
    except ValueError:
        _allowed(source, "scoring.aggregation", scoring["aggregation"], False, "'top1pct', 'max' or 'topN' (N patches)")
    _allowed(source, "scoring.decision", scoring["decision"], scoring["decision"] == DECISION_RULE, repr(DECISION_RULE))
    tuned = typed(bank["ef_tuning"], "ef", int, f"{source} [bank.ef_tuning]")
    _within(source, "bank.ef_tuning.ef", tuned, k, max(k, MAX_EF), "scoring.k up to the tuning limit")
    _within(source, "bank.index.ef", bank["index"]["ef"], tuned, tuned, "bank.ef_tuning.ef")


@dataclass
class Recipe:
    """A loaded, verified recipe bound to the model it was calibrated with."""

    directory: Path
    manifest: dict[str, Any]
    recipe_id: str
    roi: Roi | None
    channels: str  # "mono" or "colour"
    image_size: tuple[int, int]  # (height, width) of the first reference image (frames may differ)
    threshold: float
    scorer: PatchScorer
    labelled: LabelledEmbeddings | None
    sizing: Sizing = dataclasses.field(default_factory=Sizing)
    mask: Mask = dataclasses.field(default_factory=NoMask)

    def check_frame(self, frame: np.ndarray) -> None:
        """ValueError with a clear message if ``frame`` cannot be inspected with this recipe (any size is fine: the
        sizing rule handles it; a ROI must fit)."""
        channels = "mono" if frame.ndim == 2 else "colour"
        if channels != self.channels:
            raise ValueError(f"{channels} frame {frame.shape}, but recipe {self.recipe_id} was calibrated on {self.channels} images")
        if self.roi is not None:
            self.roi.check_fits(frame.shape)
        height, width = frame.shape[:2] if self.roi is None else (self.roi.height, self.roi.width)
        if min(height, width) < MIN_CROP_SIDE:
            raise ValueError(f"frame of {width}x{height} px: the inspected region must be at least "
                             f"{MIN_CROP_SIDE} px on each side (one DINOv2 patch)")

    def score(self, crop: CropFeatures) -> CropScore:
        """Image score and patch-score grid of a crop's features, with this recipe's mask and scoring."""
        return score_crop(crop, self.mask, self.scorer, self.scorer.aggregation)

    def crop(self, frame: np.ndarray) -> np.ndarray:
        """The inspected region of ``frame`` after :meth:`check_frame`."""
        self.check_frame(frame)
        return frame if self.roi is None else self.roi.crop(frame)

    @classmethod
    def load(cls, directory: Path | str, sidecar: ModelSidecar, threads: int = -1,
             public_key: Path | None = None) -> "Recipe":
        """Load and verify the recipe in ``directory`` for the model of ``sidecar``; with ``public_key`` (an
        ``okcell keygen`` public key file) only a recipe signed with the matching private key loads."""
        directory = Path(directory)
        path = directory / MANIFEST_FILE
        source = str(path)
        if not directory.is_dir():
            raise ConfigError(f"{directory}: recipe directory not found (build one with `okcell calibrate`)")
        content = read_bytes(path, missing=f"not found; {directory} is not a complete recipe")
        if public_key is not None:
            verify_file(path, load_public_key(public_key), content)
        manifest = parse_json(content, path)
        require_keys(manifest, _TOP_KEYS, set(), source)
        if typed(manifest, "format_version", int, source) != RECIPE_FORMAT:
            raise ConfigError(f"{source}: field 'format_version' is {manifest['format_version']}, this okcell reads "
                              f"{RECIPE_FORMAT}; recalibrate with `okcell calibrate`")
        for key in ("recipe_id", "okcell_version", "created"):
            typed(manifest, key, str, source)
        expected_id = compute_recipe_id(manifest)
        if manifest["recipe_id"] != expected_id:
            raise ConfigError(
                f"{source}: content does not match its recipe_id {manifest['recipe_id']} (now {expected_id}); "
                "the manifest was edited after calibration — recalibrate with `okcell calibrate`"
            )
        sections = {name: _section(manifest, name, fields, source, _OPTIONAL.get(name)) for name, fields in _SECTIONS.items()}
        model, inputs, scoring, bank, risk = (sections[k] for k in ("model", "input", "scoring", "bank", "risk"))
        if model["sha256"] != sidecar.sha256:
            raise ConfigError(
                f"{source}: recipe was calibrated for model sha256 {model['sha256'][:12]}… ({model['onnx_file']}) "
                f"but the loaded model is {sidecar.sha256[:12]}… ({sidecar.onnx_file}); use the recipe's model or recalibrate"
            )
        if model["input_size"] != list(sidecar.input_size) or model["feature_dim"] != sidecar.feature_dim:
            raise ConfigError(f"{source}: field 'model' describes input {model['input_size']} / {model['feature_dim']} features, the model has {list(sidecar.input_size)} / {sidecar.feature_dim}")
        if inputs["channels"] not in ("mono", "colour"):
            raise ConfigError(f"{source}: field 'input.channels' must be 'mono' or 'colour', found {inputs['channels']!r}")
        sizing = Sizing.from_json(inputs.get("sizing", {"mode": "stretch"}), f"{source} field 'input.sizing'")
        if sizing.mode == "tile" and sizing.tile_scale is None:
            raise ConfigError(f"{source}: field 'input.sizing' has no tile_scale")
        params = IndexParams.from_json(bank["index"], f"{source} [bank.index]")
        roi = None if inputs["roi"] is None else Roi.from_json(inputs["roi"], f"{source} field 'input.roi'")
        _check_values(sections, roi, sidecar, source)
        size = inputs["image_size"]
        index = load_index(_verify_file(directory, bank, "bank"), sidecar.feature_dim, bank["size"], params)
        mask = _load_mask(directory, scoring.get("mask", {"mode": "none"}), sidecar.feature_dim, source)
        labelled = None
        if manifest["labelled"] is not None:
            entry = _section(manifest, "labelled", _LABELLED_KEYS, source)
            labelled = LabelledEmbeddings.load(_verify_file(directory, entry, "labelled"), sidecar.embedding_dim)
            _within(source, "labelled.k", entry["k"], labelled.k, labelled.k, f"as in {entry['file']}")
            _allowed(source, "labelled.counts", entry["counts"], entry["counts"] == labelled.counts,
                     f"as in {entry['file']}: {labelled.counts}")
            ok_images = sections["calibration"]["ok_images"]
            _within(source, "labelled.counts.OK", labelled.counts.get("OK", 0), ok_images, ok_images, "calibration.ok_images")
        return cls(
            directory=directory,
            manifest=manifest,
            recipe_id=manifest["recipe_id"],
            roi=roi,
            channels=inputs["channels"],
            image_size=(size[0], size[1]),
            threshold=float(risk["threshold"]),
            scorer=PatchScorer(index, k=scoring["k"], aggregation=scoring["aggregation"], threads=threads),
            labelled=labelled,
            sizing=sizing,
            mask=mask,
        )


def _load_mask(directory: Path, entry: object, feature_dim: int, source: str) -> Mask:
    """The background mask named by the manifest's ``scoring.mask`` entry, its file verified."""
    if entry == {"mode": "none"}:
        return NoMask()
    if not isinstance(entry, dict) or entry.get("mode") not in ("pca", "file"):
        raise ConfigError(f"{source}: field 'scoring.mask' must be {{\"mode\": \"none\"}} or name a pca/file mask, found {entry!r}")
    where = f"{source} [scoring.mask]"
    require_keys(entry, set(_MASK_KEYS), set(), where)
    for key, kind in _MASK_KEYS.items():
        typed(entry, key, kind, where)
    path = _verify_file(directory, entry, "scoring.mask")
    if entry["mode"] == "pca":
        return PcaMask.load(path, feature_dim)
    try:
        return ImageMask(read_image(path))
    except (ImageError, ValueError) as exc:
        raise ConfigError(f"{path}: not a usable mask image ({exc})") from None
