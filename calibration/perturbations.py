"""Small changes a line sees between calibration and production, applied to good frames to test robustness:
lighting (brightness +-20 %), focus (Gaussian blur), part position (shift of a few pixels) and angle (+-3 deg).
Borders uncovered by a shift or rotation are filled by reflection, so no artificial black edge appears."""

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


def _warp(matrix_of: Callable[[int, int], np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
    def apply(frame: np.ndarray) -> np.ndarray:
        height, width = frame.shape[:2]
        return np.asarray(cv2.warpAffine(frame, matrix_of(height, width), (width, height), flags=cv2.INTER_LINEAR,
                                         borderMode=cv2.BORDER_REFLECT))

    return apply


def _shift(height: int, width: int) -> np.ndarray:
    return np.array([[1.0, 0.0, SHIFT_PX], [0.0, 1.0, SHIFT_PX]])


def _rotation(degrees: float) -> Callable[[int, int], np.ndarray]:
    return lambda height, width: cv2.getRotationMatrix2D(((width - 1) / 2, (height - 1) / 2), degrees, 1.0)


PERTURBATIONS: tuple[Perturbation, ...] = (
    Perturbation("brightness-20%", "pixel values x 0.8", _brightness(0.8)),
    Perturbation("brightness+20%", "pixel values x 1.2 (clipped at 255)", _brightness(1.2)),
    Perturbation("blur", f"Gaussian blur, sigma {BLUR_SIGMA_PX} px", _blur),
    Perturbation("shift", f"shifted {SHIFT_PX} px right and {SHIFT_PX} px down", _warp(_shift)),
    Perturbation("rotate-3deg", f"rotated {ROTATION_DEG:g} deg clockwise about the centre", _warp(_rotation(-ROTATION_DEG))),
    Perturbation("rotate+3deg", f"rotated {ROTATION_DEG:g} deg anticlockwise about the centre", _warp(_rotation(ROTATION_DEG))),
)
