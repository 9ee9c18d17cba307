"""Small changes a line sees between calibration and production, applied to good frames to test robustness:
lighting (brightness +-20 %), focus (Gaussian blur), part position (shift of a few pixels) and angle (+-3 deg).

A frame holds nothing beyond its border, so a shift is made by moving the view: the rows and columns it uncovers
are cropped away and the rest is scaled back to the frame size (a zoom of 2 x 4 px over the frame side, under 2 % at
512 px), which adds no made-up pixels: a filled band (reflection, replication) is a seam that patch features score
as an anomaly (benchmarks/accuracy.md). A rotation uncovers corners that only a large zoom would crop (13 % for a 1:2.5 strip at 3 deg),
so its corners are filled by reflection, up to ``side x sin(3 deg)`` (5 %) from each corner.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

BLUR_SIGMA_PX = 1.5
SHIFT_PX = 4
ROTATION_DEG = 3.0


@dataclass(frozen=True)
class Perturbation:
    name: str
    description: str
    apply: Callable[[np.ndarray], np.ndarray]  # uint8 frame (H, W) or (H, W, 3) -> same shape and dtype


def _brightness(gain: float) -> Callable[[np.ndarray], np.ndarray]:
    return lambda frame: np.clip(frame.astype(np.float32) * gain + 0.5, 0, 255).astype(np.uint8)


def _blur(frame: np.ndarray) -> np.ndarray:
    return np.asarray(cv2.GaussianBlur(frame, (0, 0), BLUR_SIGMA_PX, borderType=cv2.BORDER_REFLECT))


def _rotate(degrees: float) -> Callable[[np.ndarray], np.ndarray]:
    def apply(frame: np.ndarray) -> np.ndarray:
        height, width = frame.shape[:2]
        matrix = cv2.getRotationMatrix2D(((width - 1) / 2, (height - 1) / 2), degrees, 1.0)
        return np.asarray(cv2.warpAffine(frame, matrix, (width, height), flags=cv2.INTER_LINEAR,
                                         borderMode=cv2.BORDER_REFLECT))

    return apply


def _shift(frame: np.ndarray) -> np.ndarray:
    """The view moved SHIFT_PX down and right over the part: the content moves up and left, the uncovered band is
    cropped and the rest scaled back to the frame size."""
    height, width = frame.shape[:2]
    view = frame[SHIFT_PX:, SHIFT_PX:]
    return np.asarray(cv2.resize(view, (width, height), interpolation=cv2.INTER_LINEAR))


PERTURBATIONS: tuple[Perturbation, ...] = (
    Perturbation("brightness-20%", "pixel values x 0.8", _brightness(0.8)),
    Perturbation("brightness+20%", "pixel values x 1.2 (clipped at 255)", _brightness(1.2)),
    Perturbation("blur", f"Gaussian blur, sigma {BLUR_SIGMA_PX} px", _blur),
    Perturbation("shift", f"view moved {SHIFT_PX} px right and down (uncovered band cropped, scaled back)", _shift),
    Perturbation("rotate-3deg", f"rotated {ROTATION_DEG:g} deg clockwise (corners reflected)", _rotate(-ROTATION_DEG)),
    Perturbation("rotate+3deg", f"rotated {ROTATION_DEG:g} deg anticlockwise (corners reflected)", _rotate(ROTATION_DEG)),
)
