"""One frame in, one decision out: ROI crop -> sizing layout -> features -> patch scores (background masked, tiles
stitched) -> image score -> decision -> anomaly map.

``Inspector.inspect`` never raises. A frame it cannot inspect (wrong bit depth, mono vs colour, smaller than the
ROI) and any fault inside (backend, index, a non-finite score) give ``decision="ERROR"`` with the reason, so a
fault can never let a part pass as OK.
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np

from okcell.recipe import Recipe
from okcell.extractor import FeatureExtractor
from okcell.frames import extract_crops
from okcell.images import as_frame
from okcell.heatmap import HEATMAP_SIGMA_PX, anomaly_map, overlay
from okcell.result import InspectionResult
from okcell.scoring import decide

log = logging.getLogger(__name__)

class Inspector:
    """Inspects frames with one feature extractor and one calibrated recipe."""

    def __init__(self, extractor: FeatureExtractor, recipe: Recipe, heatmap: bool = True,
                 heatmap_sigma_px: float = HEATMAP_SIGMA_PX) -> None:
        self.extractor = extractor
        self.recipe = recipe
        self.heatmap = heatmap
        self.heatmap_sigma_px = heatmap_sigma_px

    @property
    def threshold(self) -> float:
        return float(self.recipe.threshold)

    def frame_problem(self, frame: object) -> str | None:
        """Why ``frame`` cannot be inspected with this recipe, or None."""
        if not isinstance(frame, np.ndarray):
            return f"frame must be a numpy array, found {type(frame).__name__}"
        if frame.dtype != np.uint8:
            bits = frame.dtype.itemsize * 8
            return f"{bits}-bit frame ({frame.dtype}); expected 8-bit (uint8) — set the camera to an 8-bit pixel format"
        frame = as_frame(frame)
        if not (frame.ndim == 2 or (frame.ndim == 3 and frame.shape[2] == 3)) or frame.size == 0:
            return f"frame of shape {frame.shape}; expected (H, W) mono or (H, W, 3) RGB"
        try:
            self.recipe.check_frame(frame)
        except ValueError as exc:
            return str(exc)
        return None

    def inspect(self, frame: np.ndarray) -> InspectionResult:
        """Decide OK / NOK / ERROR for one frame (uint8 RGB or mono)."""
        started = time.perf_counter()
        try:
            problem = self.frame_problem(frame)
            if problem is not None:
                return self._error(problem, started)
            return self._inspect(self.recipe.crop(as_frame(frame)), started)
        except Exception as exc:  # a fault must give ERROR, never OK
            log.exception("inspection failed")
            return self._error(f"inspection failed: {type(exc).__name__}: {exc}", started)

    def _inspect(self, crop: np.ndarray, started: float) -> InspectionResult:
        features = extract_crops(self.extractor, [crop], self.recipe.sizing)[0]
        timings: dict[str, float] = {stage: float(features.timings_ms.get(stage, 0.0)) for stage in ("preprocess", "backbone")}
        searched = time.perf_counter()
        scored = self.recipe.score(features)
        if not math.isfinite(scored.score) or not np.all(np.isfinite(scored.grid)):
            raise RuntimeError(f"non-finite anomaly score {scored.score} (backend produced NaN/Inf features)")
        nearest = None
        if self.recipe.labelled is not None:
            nearest = self.recipe.labelled.nearest_label(features.embedding)
        mapped = time.perf_counter()
        timings["search"] = (mapped - searched) * 1e3
        amap = None
        if self.heatmap:
            amap = anomaly_map(scored.grid, crop.shape[:2], self.heatmap_sigma_px, extent=features.layout.extent)
        done = time.perf_counter()
        timings["heatmap"] = (done - mapped) * 1e3
        timings["total"] = (done - started) * 1e3
        return InspectionResult(decision=decide(scored.score, self.threshold), score=scored.score, threshold=self.threshold,
                                nearest_label=nearest, anomaly_map=amap, timings_ms=timings)

    def _error(self, reason: str, started: float) -> InspectionResult:
        return InspectionResult(decision="ERROR", score=None, threshold=self.threshold, error=reason,
                                timings_ms={"total": (time.perf_counter() - started) * 1e3})

    def overlay(self, frame: np.ndarray, result: InspectionResult, colormap: str = "turbo") -> np.ndarray:
        """The colour heatmap overlay of ``result`` on ``frame`` (BGR uint8, for ``cv2.imwrite``)."""
        roi = self.recipe.roi
        box = None if roi is None else (roi.x, roi.y, roi.width, roi.height)
        return overlay(as_frame(frame), result.anomaly_map, result.threshold, result.decision, result.score, roi=box,
                       colormap=colormap, label=result.nearest_label)
