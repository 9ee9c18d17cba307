"""Two checks beside the accuracy figures of ``okcell evaluate``, at the recipe's threshold:

* robustness: false rejects of the test OK images under small lighting, focus, position and angle changes
  (:mod:`calibration.perturbations`), one extra inspection per image and change;
* synthetic stand-in: recall of ``okcell synthesize`` defects drawn on the test OK images next to the real defects'
  recall, at the same thresholds, so a calibration without real NOK parts knows how far to trust synthetic recall.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from okcell.images import list_images
from okcell.progress import Progress
from okcell.schema import ConfigError
from calibration.eval_data import EvalSet
from calibration.eval_inspect import FrameInspector, inspect_path, read_or_error, say
from calibration.evaluation import auroc
from calibration.perturbations import PERTURBATIONS
from calibration.synthetic import DEFECT_KINDS, synthesize_folder
from calibration.thresholds import RateEstimate, Risk, risk_at


def robustness(inspector: FrameInspector, data: EvalSet, ok: np.ndarray) -> dict[str, Any]:
    """False rejects of the test OK images under each perturbation, at the recipe's threshold."""
    images = [image for image in data.test if image.defect is None]
    scores: dict[str, list[float]] = {p.name: [] for p in PERTURBATIONS}
    errors = {p.name: 0 for p in PERTURBATIONS}
    started = time.perf_counter()
    with Progress("evaluate: robustness", len(images) * len(PERTURBATIONS), "inspections") as progress:
        for image in images:
            frame, _ = read_or_error(image.path)
            for perturbation in PERTURBATIONS:
                result = None if frame is None else inspector.inspect(perturbation.apply(frame))
                if result is None or result.score is None:
                    errors[perturbation.name] += 1
                else:
                    scores[perturbation.name].append(float(result.score))
                progress.advance()
    threshold = inspector.threshold
    rows = [{"name": "none", "description": "test OK images as they are", "errors": 0,
             "frr": RateEstimate(int(np.sum(ok > threshold)), len(ok)).to_json(), "median_score": float(np.median(ok))}]
    for perturbation in PERTURBATIONS:
        values = np.asarray(scores[perturbation.name])
        rows.append({"name": perturbation.name, "description": perturbation.description,
                     "errors": errors[perturbation.name],
                     "frr": RateEstimate(int(np.sum(values > threshold)), len(values)).to_json() if len(values) else None,
                     "median_score": float(np.median(values)) if len(values) else None})
    return {"threshold": threshold, "rows": rows, "inspections": len(images) * len(PERTURBATIONS),
            "seconds": round(time.perf_counter() - started, 1)}


def synthetic_recall(inspector: FrameInspector, data: EvalSet, folder: Path, per_kind: int, seed: int,
                     ok: np.ndarray, nok: dict[str, np.ndarray], at_test: list[Risk]) -> dict[str, Any]:
    """Recall of synthetic defects on the test OK images, next to the real defects' recall, at the same thresholds."""
    say(f"synthesizing {per_kind} defects of each kind ({', '.join(DEFECT_KINDS)}) on the test OK images")
    try:
        synthesize_folder(data.test_ok, folder, DEFECT_KINDS, per_kind, seed)
    except ConfigError as exc:
        return {"per_kind": per_kind, "error": str(exc)}
    scores: dict[str, list[float]] = {}
    errors = 0
    paths = [(kind, path) for kind in DEFECT_KINDS for path in list_images(folder / "nok" / kind)]
    with Progress("evaluate: synthetic images", len(paths), "images") as progress:
        for kind, path in paths:
            result, _ = inspect_path(inspector, path)
            if result.score is None:
                errors += 1
            else:
                scores.setdefault(kind, []).append(float(result.score))
            progress.advance()
    synthetic = {kind: np.asarray(values) for kind, values in scores.items()}
    real_all = {"real": np.concatenate(list(nok.values()))} if nok else {}
    synthetic_all = {"synthetic": np.concatenate(list(synthetic.values()))} if synthetic else {}
    thresholds = [("recipe", inspector.threshold)] + [(f"test FRR {100 * r.target_frr:g} %", r.threshold) for r in at_test]
    rows = []
    for name, threshold in thresholds:
        recall = risk_at(threshold, ok, {**real_all, **synthetic_all, **synthetic}, 0.0).to_json()["recall"]
        rows.append({"threshold_name": name, "threshold": threshold, "recall": recall})
    return {"per_kind": per_kind, "folder": str(folder), "errors": errors,
            "auroc": {"real": auroc(ok, real_all["real"]) if real_all else None,
                      **{kind: auroc(ok, values) for kind, values in {**synthetic_all, **synthetic}.items()}},
            "rows": rows, "scores": {kind: values.tolist() for kind, values in synthetic.items()}}
