"""The feature-extractor protocol every inference backend implements (ONNX Runtime, TensorRT)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence

import numpy as np

from okcell.sidecar import ModelSidecar


@dataclass
class Features:
    """Backbone output for a batch of frames."""

    patches: np.ndarray  # (B, N, C) float32, each patch L2-normalised
    embedding: np.ndarray  # (B, D) float32, L2-normalised CLS embedding
    grid: tuple[int, int]  # (rows, cols) with rows * cols == N
    timings_ms: dict[str, float] = field(default_factory=dict)  # "preprocess", "backbone"


class FeatureExtractor(Protocol):
    """Frames in, patch features + embedding out. Preprocessing is the backend's own job
    (CPU reference in :mod:`okcell.preprocess`; the TensorRT backend runs it on the GPU)."""

    backend_name: str
    sidecar: ModelSidecar

    def extract(self, frames: Sequence[np.ndarray]) -> Features:
        """``frames``: uint8 RGB (H, W, 3) or mono (H, W) images, already cropped to the ROI."""
        ...

    def close(self) -> None:
        """Release sessions, contexts and device buffers."""
        ...
