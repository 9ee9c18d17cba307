"""Crops in, scores out, the same way in calibration and in the cell: sizing layout -> model frames -> features ->
foreground cells -> patch scores stitched onto one grid -> image score."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence

import numpy as np

from okcell.extractor import FeatureExtractor
from okcell.masking import Mask
from okcell.scoring import aggregate_valid
from okcell.sizing import Layout, Sizing


@dataclass
class CropFeatures:
    """The features of one crop: every frame's patches, where they lie, and one embedding."""

    layout: Layout
    patches: np.ndarray  # (frames, N, C) float32, L2-normalised
    embedding: np.ndarray  # (D,) float32, L2-normalised mean of the frames' CLS embeddings
    timings_ms: dict[str, float] = field(default_factory=dict)


@dataclass
class CropScore:
    score: float
    grid: np.ndarray  # (rows, cols) patch scores, 0 outside the foreground
    foreground: np.ndarray  # (rows, cols) bool: the cells that were scored


class PatchScoring(Protocol):
    k: int

    def patch_scores(self, patches: np.ndarray) -> np.ndarray: ...


def extract_crops(extractor: FeatureExtractor, crops: Sequence[np.ndarray], sizing: Sizing) -> list[CropFeatures]:
    """Features of ``crops`` in one extractor call (all their frames together)."""
    sidecar = extractor.sidecar
    layouts = [sizing.layout(crop.shape[:2], sidecar.input_size, sidecar.patch_size) for crop in crops]
    frames = [frame for crop, layout in zip(crops, layouts) for frame in layout.frames(crop)]
    features = extractor.extract(frames)
    if features.patches.shape[:2] != (len(frames), sidecar.num_patches):
        raise RuntimeError(f"backend returned patches {features.patches.shape}, expected ({len(frames)}, {sidecar.num_patches}, C)")
    result, start = [], 0
    for layout in layouts:
        count = len(layout.origins)
        embedding = features.embedding[start : start + count].mean(axis=0)
        embedding = embedding / max(float(np.linalg.norm(embedding)), 1e-12)
        result.append(CropFeatures(layout, features.patches[start : start + count], embedding.astype(np.float32), features.timings_ms))
        start += count
    return result


def foreground_patches(crop: CropFeatures, mask: Mask) -> np.ndarray:
    """(M, C) the frame patches that lie on foreground cells (what a reference adds to the bank)."""
    keep = mask.foreground(crop.patches, crop.layout).ravel()[crop.layout.cells()]
    return crop.patches[keep]


def score_crop(crop: CropFeatures, mask: Mask, scorer: PatchScoring, aggregation: str) -> CropScore:
    """Patch scores of every frame, stitched (cells covered by several tiles: their mean), aggregated over the
    foreground cells."""
    foreground = mask.foreground(crop.patches, crop.layout)
    grid = crop.layout.stitch(scorer.patch_scores(crop.patches))
    score = aggregate_valid(grid, foreground, aggregation)
    if not foreground.any():  # scored whole (see aggregate_valid), so shown whole
        foreground = np.ones_like(foreground)
    return CropScore(score, np.where(foreground, grid, 0.0).astype(np.float32), foreground)
