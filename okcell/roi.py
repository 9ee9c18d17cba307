"""Region of interest: the part of a camera frame that is inspected, in frame pixels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from okcell.schema import ConfigError


@dataclass(frozen=True)
class Roi:
    """Axis-aligned rectangle in frame pixels: top-left corner (x, y), size (width, height)."""

    x: int
    y: int
    width: int
    height: int

    def __post_init__(self) -> None:
        for name in ("x", "y", "width", "height"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ConfigError(f"ROI field '{name}' must be an integer number of pixels, found {value!r}")
        if self.x < 0 or self.y < 0:
            raise ConfigError(f"ROI corner ({self.x}, {self.y}) must not be negative")
        if self.width <= 0 or self.height <= 0:
            raise ConfigError(f"ROI size {self.width}x{self.height} must be positive")

    @classmethod
    def parse(cls, text: str) -> "Roi":
        """``"x,y,w,h"`` (pixels) -> Roi; raises ConfigError naming the value."""
        parts = [p.strip() for p in text.split(",")]
        if len(parts) != 4 or not all(p.lstrip("-").isdigit() for p in parts):
            raise ConfigError(f"ROI {text!r}: expected four integers x,y,width,height (pixels)")
        x, y, width, height = (int(p) for p in parts)
        return cls(x, y, width, height)

    @classmethod
    def from_json(cls, data: object, source: str = "ROI") -> "Roi":
        """``[x, y, width, height]`` -> Roi; raises ConfigError naming ``source``."""
        if not isinstance(data, list) or len(data) != 4:
            raise ConfigError(f"{source}: expected [x, y, width, height], found {data!r}")
        try:
            return cls(*data)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None

    def to_json(self) -> list[int]:
        return [int(self.x), int(self.y), int(self.width), int(self.height)]

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the crop."""
        return self.height, self.width

    def fits(self, frame_shape: tuple[int, ...]) -> bool:
        """Whether the ROI lies inside a frame of ``frame_shape`` (H, W[, C])."""
        return self.x + self.width <= frame_shape[1] and self.y + self.height <= frame_shape[0]

    def check_fits(self, frame_shape: tuple[int, ...]) -> None:
        """Raise ValueError naming both sizes if the ROI does not lie inside the frame."""
        if not self.fits(frame_shape):
            raise ValueError(
                f"ROI x={self.x} y={self.y} {self.width}x{self.height} does not fit in a "
                f"{frame_shape[1]}x{frame_shape[0]} px frame (needs at least "
                f"{self.x + self.width}x{self.y + self.height} px)"
            )

    def crop(self, frame: np.ndarray) -> np.ndarray:
        """The ROI of ``frame`` (a view, no copy); ValueError if it does not fit."""
        self.check_fits(frame.shape)
        return frame[self.y : self.y + self.height, self.x : self.x + self.width]

    def __str__(self) -> str:
        return f"{self.x},{self.y},{self.width},{self.height}"
