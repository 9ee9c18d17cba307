"""``okcell evaluate`` end to end: calibrate on ``train/ok`` with the real calibration, inspect every test image
with the cell's own inspector, and measure what the line would see.

* image level: AUROC (all defects and per type); false rejects and escapes at the recipe's threshold with their
  95 % Clopper–Pearson bounds, and whether the false-reject bound the calibration stated holds on the test OK;
  recall per defect type at 1 % and 0.1 % false rejects, with those thresholds set on the test OK images;
* pixel level (where masks exist): AUROC and AUPRO up to 30 % FPR, on maps and masks scaled so the longer side is
  at most ``PIXEL_MAX_SIDE`` (as anomalib evaluates at the model resolution; a mask pixel is defect if any part of
  the pixels it covers is);
* cycle time p50/p99 of the inspections (per stage and total, as the inspector reports them);
* robustness and the synthetic stand-in: :mod:`calibration.eval_checks`.

A bad image (or mask) never stops the run: it is an ERROR, counted and listed.
"""

from __future__ import annotations

import datetime
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

from okcell import __version__
from okcell.extractor import FeatureExtractor
from okcell.images import list_images
from okcell.names import INSPECTION_TIMINGS
from okcell.progress import Progress
from okcell.result import InspectionResult
from okcell.roi import Roi
from okcell.schema import ConfigError
from calibration.build import CalibrationSettings, calibrate
from calibration.eval_checks import robustness, synthetic_recall
from calibration.eval_data import EvalSet, TestImage
from calibration.eval_figures import Tile, roc_figure, score_figure, worst_sheet
from calibration.eval_inspect import FrameInspector, inspect_path, read_or_error, say
from calibration.evaluation import Tally, auroc
from calibration.pixel_metrics import AUPRO_FPR_LIMIT, aupro, pixel_auroc
from calibration.thresholds import Risk, chance_of_at_least, measured_threshold, risk_at

RESULT_FILE = "evaluation.json"
RECIPE_DIR = "recipe"
SYNTHETIC_DIR = "synthetic"
OWNED = (RECIPE_DIR, SYNTHETIC_DIR)
PIXEL_MAX_SIDE = 512
TEST_FRR_TARGETS = (0.01, 0.001)
FIGURES = {"roc": "roc.png", "scores": "scores.png", "worst": "worst.png"}


@dataclass(frozen=True)
class EvalOptions:
    label: str
    robustness: bool = True
    synthetic_per_kind: int = 0
    worst: int = 6

    def validate(self) -> None:
        if self.synthetic_per_kind < 0:
            raise ConfigError(f"--synthetic {self.synthetic_per_kind}: expected a number of defects per kind, 0 or more")
        if self.worst < 0:
            raise ConfigError(f"--worst {self.worst}: expected a number of parts per row, 0 or more")


@dataclass
class Record:
    """One inspected test image."""

    image: TestImage
    result: InspectionResult

    def to_json(self) -> dict[str, Any]:
        result = self.result
        return {"path": str(self.image.path), "truth": self.image.truth, "defect": self.image.defect,
                "decision": result.decision, "score": None if result.score is None else round(float(result.score), 6),
                "total_ms": round(result.timings_ms["total"], 2) if "total" in result.timings_ms else None,
                "error": result.error}


def evaluate(extractor: FeatureExtractor, model_path: Path, settings: CalibrationSettings, data: EvalSet, out: Path,
             options: EvalOptions, open_inspector: Callable[[Path], FrameInspector]) -> dict[str, Any]:
    """Run the evaluation into ``out`` (``evaluation.json``, the recipe, figures; the Markdown is the caller's)
    and return the result written to ``evaluation.json``."""
    options.validate()
    started = time.perf_counter()
    durations: dict[str, float] = {}
    nok_count = len(data.test) - sum(image.defect is None for image in data.test)
    say(f"{data.root}: {len(list_images(data.train_ok))} train OK, {len(data.test) - nok_count} test OK, "
        f"{nok_count} test NOK ({', '.join(data.defects) or 'none'}), {data.masked} masks")
    say(f"calibrating on {data.train_ok}")
    summary = calibrate(extractor, model_path, settings, out / RECIPE_DIR)
    durations["calibrate"] = time.perf_counter() - started
    inspector = open_inspector(out / RECIPE_DIR)
    roi = None if summary.manifest["input"]["roi"] is None else Roi.from_json(summary.manifest["input"]["roi"])

    mark = time.perf_counter()
    records, pixels, errors = _inspect_test(inspector, data, roi)
    durations["inspect"] = time.perf_counter() - mark
    tally = Tally()
    for record in records:
        tally.add(record.image.path, record.result.decision, record.result.score)
    ok = np.asarray(tally.ok_scores)
    nok = {name: np.asarray(scores) for name, scores in tally.nok_by_defect.items()}
    if not len(ok):
        raise ConfigError(f"--data {data.root}: no test OK image could be inspected (see the errors above)")
    at_test = [risk_at(measured_threshold(ok, target), ok, nok, target) for target in TEST_FRR_TARGETS]

    result: dict[str, Any] = {
        "status": "complete",
        "label": options.label,
        "okcell_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "data": {"root": str(data.root), "train_ok": summary.manifest["calibration"]["ok_images"],
                 "test_ok": sum(image.defect is None for image in data.test),
                 "test_nok": {d: sum(image.defect == d for image in data.test) for d in data.defects},
                 "masks": data.masked},
        "machine": machine(),
        "model": _model(extractor, model_path),
        "recipe": _recipe(summary.manifest, out / RECIPE_DIR),
        "image": {"auroc": tally.image_auroc,
                  "auroc_per_defect": {name: auroc(ok, scores) for name, scores in nok.items()}},
        "at_recipe_threshold": _at_recipe(summary.manifest["risk"], inspector.threshold, ok, nok),
        "at_test_frr": [risk.to_json() for risk in at_test],
        "pixel": _pixel_metrics(*pixels),
        "cycle_ms": _cycle(records),
        "confusion": tally.table(),
        "inspections": [record.to_json() for record in records],
    }
    if options.robustness:
        mark = time.perf_counter()
        result["robustness"] = robustness(inspector, data, ok)
        durations["robustness"] = time.perf_counter() - mark
    if options.synthetic_per_kind:
        mark = time.perf_counter()
        result["synthetic"] = synthetic_recall(inspector, data, out / SYNTHETIC_DIR, options.synthetic_per_kind,
                                         settings.seed, ok, nok, at_test)
        durations["synthetic"] = time.perf_counter() - mark
    mark = time.perf_counter()
    result["figures"] = _figures(out, inspector, records, ok, nok, at_test, result.get("synthetic"), options.worst)
    durations["figures"] = time.perf_counter() - mark
    durations["total"] = time.perf_counter() - started
    result["durations_s"] = {name: round(value, 1) for name, value in durations.items()}
    result["errors"] = errors
    return result


def _inspect_test(inspector: FrameInspector, data: EvalSet, roi: Roi | None
                  ) -> tuple[list[Record], tuple[list[np.ndarray], list[np.ndarray]], list[dict[str, str]]]:
    """Inspect every test image; keep (map, mask) pairs for the pixel metrics when the set has masks."""
    records: list[Record] = []
    maps: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    errors: list[dict[str, str]] = []
    with Progress("evaluate: test images", len(data.test), "images") as progress:
        for image in data.test:
            result, frame = inspect_path(inspector, image.path)
            records.append(Record(image, result))
            if result.decision == "ERROR":
                errors.append({"path": str(image.path), "error": str(result.error)})
            elif data.masked and result.anomaly_map is not None and frame is not None and (image.defect is None or image.mask):
                pair = _pixel_pair(image, frame, result.anomaly_map, roi)
                if isinstance(pair, str):
                    errors.append({"path": str(image.mask), "error": pair})
                else:
                    maps.append(pair[0])
                    masks.append(pair[1])
            progress.advance()
    return records, (maps, masks), errors


def _pixel_pair(image: TestImage, frame: np.ndarray, amap: np.ndarray, roi: Roi | None
                ) -> tuple[np.ndarray, np.ndarray] | str:
    """(map, mask) at the pixel-metric resolution, or why the mask cannot be used."""
    if image.mask is None:
        defect: np.ndarray = np.zeros(frame.shape[:2], np.float32)
    else:
        mask, error = read_or_error(image.mask)
        if mask is None:
            return str(error)
        if mask.shape[:2] != frame.shape[:2]:
            return (f"mask of {mask.shape[1]}x{mask.shape[0]} px, but its image {image.path.name} is "
                    f"{frame.shape[1]}x{frame.shape[0]} px")
        defect = ((mask if mask.ndim == 2 else mask.max(axis=2)) > 0).astype(np.float32)
    if roi is not None:
        defect = roi.crop(defect)
    height, width = defect.shape[:2]
    scale = min(1.0, PIXEL_MAX_SIDE / max(height, width))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small_mask = cv2.resize(defect, size, interpolation=cv2.INTER_AREA) > 0
    small_map = cv2.resize(amap.astype(np.float32), size, interpolation=cv2.INTER_AREA)
    return np.asarray(small_map, np.float32), small_mask


def _pixel_metrics(maps: list[np.ndarray], masks: list[np.ndarray]) -> dict[str, Any] | None:
    if not any(mask.any() for mask in masks):
        return None
    return {"auroc": pixel_auroc(maps, masks), "aupro": aupro(maps, masks), "aupro_fpr_limit": AUPRO_FPR_LIMIT,
            "images": len(maps), "defect_images": sum(bool(mask.any()) for mask in masks),
            "max_side_px": PIXEL_MAX_SIDE}


def _at_recipe(calibration_risk: dict[str, Any], threshold: float, ok: np.ndarray,
               nok: dict[str, np.ndarray]) -> dict[str, Any]:
    """Rates at the recipe's threshold, and whether the false-reject bound stated at calibration holds."""
    risk = risk_at(threshold, ok, nok, float(calibration_risk["target_frr"])).to_json()
    stated = float(calibration_risk["frr"]["upper95"])
    risk["calibration_frr"] = calibration_risk["frr"]
    risk["expected_frr"] = calibration_risk.get("expected_frr")  # on new parts, as the recipe states it
    risk["frr_bound_holds"] = risk["frr"]["rate"] <= stated
    # how likely this many test false rejects would be if the true rate were the stated bound
    risk["frr_chance_at_bound"] = chance_of_at_least(risk["frr"]["events"], risk["frr"]["total"], stated)
    return risk


def _cycle(records: list[Record]) -> dict[str, dict[str, float]]:
    timings: dict[str, list[float]] = {}
    for record in records:
        if record.result.decision != "ERROR":
            for stage, value in record.result.timings_ms.items():
                timings.setdefault(stage, []).append(value)
    return {stage: {"p50": round(float(np.percentile(timings[stage], 50)), 2),
                    "p99": round(float(np.percentile(timings[stage], 99)), 2), "count": len(timings[stage])}
            for stage in INSPECTION_TIMINGS if stage in timings}


def _figures(out: Path, inspector: FrameInspector, records: list[Record], ok: np.ndarray,
             nok: dict[str, np.ndarray], at_test: list[Risk], synthetic: dict[str, Any] | None, worst: int) -> dict[str, str]:
    written = {}
    threshold = inspector.threshold
    if nok:
        roc_figure(out / FIGURES["roc"], ok, nok, threshold)
        written["roc"] = FIGURES["roc"]
    groups: dict[str, Any] = {"OK (test)": ok, **{f"NOK {name}": scores for name, scores in nok.items()}}
    if synthetic and synthetic.get("scores"):
        groups["synthetic (all kinds)"] = np.concatenate([np.asarray(s) for s in synthetic["scores"].values()])
    lines = {"recipe threshold": threshold, **{f"test FRR {100 * r.target_frr:g} %": r.threshold for r in at_test}}
    score_figure(out / FIGURES["scores"], groups, lines)
    written["scores"] = FIGURES["scores"]
    if worst:
        say("drawing the worst parts")
        worst_sheet(out / FIGURES["worst"], _worst_rows(inspector, records, worst))
        written["worst"] = FIGURES["worst"]
    return written


def _worst_rows(inspector: FrameInspector, records: list[Record], count: int) -> dict[str, list[Tile]]:
    """Defective parts with the lowest scores (escapes first) and good parts with the highest (false rejects)."""
    scored = [r for r in records if r.result.score is not None]
    nok = sorted((r for r in scored if r.image.defect is not None), key=lambda r: float(r.result.score or 0.0))[:count]
    ok = sorted((r for r in scored if r.image.defect is None), key=lambda r: -float(r.result.score or 0.0))[:count]
    rows = {"Defective parts with the lowest scores (ESCAPE = passed as OK)": [_tile(inspector, r) for r in nok],
            "Good parts with the highest scores (FALSE REJECT = rejected)": [_tile(inspector, r) for r in ok]}
    return {title: [tile for tile in tiles if tile is not None] for title, tiles in rows.items()}


def _tile(inspector: FrameInspector, record: Record) -> Tile | None:
    result, frame = inspect_path(inspector, record.image.path)
    if frame is None or result.decision == "ERROR":
        return None
    image = cv2.cvtColor(inspector.overlay(frame, result), cv2.COLOR_BGR2RGB)
    if record.image.mask is not None:
        mask, _ = read_or_error(record.image.mask)
        if mask is not None:  # the overlay may be scaled down from the frame
            outline = ((mask if mask.ndim == 2 else mask.max(axis=2)) > 0).astype(np.uint8)
            outline = cv2.resize(outline, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_NEAREST)
            contours, _ = cv2.findContours(outline, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(image, contours, -1, (255, 255, 255), max(1, min(image.shape[:2]) // 200), cv2.LINE_AA)
    if record.image.defect is None:
        verdict = "FALSE REJECT" if result.decision == "NOK" else "ok"
    else:
        verdict = ("ESCAPE" if result.decision == "OK" else "caught") + f" ({record.image.defect})"
    return Tile(image, f"{verdict}  score {float(result.score or 0.0):.4f}\n{record.image.path.name}")


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "load_average_1min": round(os.getloadavg()[0], 2),
            "platform": platform.platform(), "python": platform.python_version()}


def _model(extractor: FeatureExtractor, model_path: Path) -> dict[str, Any]:
    sidecar = extractor.sidecar
    return {"file": Path(model_path).name, "sha256": sidecar.sha256, "input_size": list(sidecar.input_size),
            "layers": list(sidecar.layers), "layer_fusion": sidecar.layer_fusion, "backend": extractor.backend_name}


NOT_SETTINGS = ("format_version", "recipe_id", "okcell_version", "created", "model", "labelled", "risk")
MEASURED = {"bank": ("file", "sha256", "ef_tuning"), "calibration": ("peak_rss_mb",)}  # outcomes, not settings


def _recipe(manifest: dict[str, Any], directory: Path) -> dict[str, Any]:
    """The recipe's identity, threshold and its settings: every manifest section that shapes the scores (new
    sections included), without identities, hashes and measured outcomes."""
    settings = {}
    for section, value in manifest.items():
        if section in NOT_SETTINGS:
            continue
        if isinstance(value, dict):
            value = {key: item for key, item in value.items() if key not in MEASURED.get(section, ())}
        settings[section] = value
    return {"id": manifest["recipe_id"], "dir": str(directory), "threshold": manifest["risk"]["threshold"],
            "target_frr": manifest["risk"]["target_frr"], "settings": settings}
