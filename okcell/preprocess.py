"""CPU reference preprocessing: uint8 frame -> normalised float32 CHW tensor for the backbone.

Resize is bilinear with OpenCV's half-pixel centres (``cv2.INTER_LINEAR``); GPU kernels must match it.
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from okcell.sidecar import ModelSidecar


class Preprocessor:
    """Turns RGB or mono uint8 frames into the model's input batch (B, 3, H, W) float32."""

    def __init__(self, sidecar: ModelSidecar) -> None:
        self.height, self.width = sidecar.input_size
        self.bgr_input = sidecar.colour_order == "BGR"
        self.mean = np.asarray(sidecar.mean, dtype=np.float32) * 255.0
        self.inv_std = 1.0 / (np.asarray(sidecar.std, dtype=np.float32) * 255.0)

    def frame(self, image: np.ndarray) -> np.ndarray:
        """One frame -> (3, H, W) float32."""
        if image.dtype != np.uint8:
            raise ValueError(f"frame must be 8-bit (uint8), found {image.dtype}")
        if image.ndim == 2:
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
        elif image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"frame must be (H, W) mono or (H, W, 3) RGB, found shape {image.shape}")
        if image.shape[:2] != (self.height, self.width):
            image = cv2.resize(image, (self.width, self.height), interpolation=cv2.INTER_LINEAR)
        if self.bgr_input:
            image = image[:, :, ::-1]
        normalised = (image.astype(np.float32) - self.mean) * self.inv_std
        return np.ascontiguousarray(normalised.transpose(2, 0, 1))

    def batch(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        """Frames -> (B, 3, H, W) float32."""
        return np.stack([self.frame(image) for image in frames])
