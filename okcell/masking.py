"""Background masking: which grid cells of a crop show the part, so that background cells neither enter the bank
nor score nor dilute the image score.

- ``none``: every cell (except letterbox padding) is inspected.
- ``pca``: the first principal component of the OK reference patches (AnomalyDINO's observation: on DINOv2 patch
  tokens it separates object from background). One direction, its sign and a threshold are fitted at calibration
  (the sign so that the centre of the references is foreground, the threshold halfway between the two groups) and
  stored in the recipe, so every frame is masked the same way; the mask is grown by one cell and closed.
- a mask image (white = inspect) in reference-crop pixels, scaled to each crop.

A frame whose mask keeps no cell is scored whole (a missing part must not pass unscored).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import cv2
import numpy as np

from okcell.images import ImageError, read_image
from okcell.schema import ConfigError
from okcell.sizing import Layout

PCA_SAMPLE = 20_000
CENTRE_MARGIN = 0.2  # the centre box leaves this share of the grid on each side


class Mask(Protocol):
    mode: str

    def foreground(self, frame_features: np.ndarray, layout: Layout) -> np.ndarray:
        """(frames, patches, C) features of one crop -> (rows, cols) bool: cells to inspect."""
        ...


def grow(mask: np.ndarray) -> np.ndarray:
    """Dilate by one cell, then close (3x3), as AnomalyDINO cleans its masks. Worked on a copy padded with
    background, so that closing does not stretch the foreground out to the frame edge (OpenCV's erosion treats
    outside the array as foreground)."""
    kernel = np.ones((3, 3), np.uint8)
    padded = np.pad(mask.astype(np.uint8), 2)
    grown = cv2.morphologyEx(cv2.dilate(padded, kernel), cv2.MORPH_CLOSE, kernel)
    return grown[2:-2, 2:-2].astype(bool)


def centre(grid: np.ndarray) -> np.ndarray:
    """The cells of the centre box (CENTRE_MARGIN of the grid left out on each side)."""
    rows, cols = grid.shape
    return grid[int(rows * CENTRE_MARGIN) : rows - int(rows * CENTRE_MARGIN), int(cols * CENTRE_MARGIN) : cols - int(cols * CENTRE_MARGIN)]


def border(grid: np.ndarray) -> np.ndarray:
    """The cells of the outermost ring."""
    ring = np.ones(grid.shape, bool)
    ring[1:-1, 1:-1] = False
    return grid[ring]


def _share(sides: list[np.ndarray], valid: list[np.ndarray], region: Callable[[np.ndarray], np.ndarray]) -> float:
    """Share of the valid cells in ``region`` that lie on the side, over all references."""
    return float(sum(region(s).sum() for s in sides) / max(1, sum(region(v).sum() for v in valid)))


def two_means_split(values: np.ndarray) -> float:
    """The threshold halfway between the means of the values below and above it (1-D two-means)."""
    threshold = float(np.mean(values))
    for _ in range(100):
        high, low = values[values > threshold], values[values <= threshold]
        if not len(high) or not len(low):
            break
        updated = 0.5 * (float(high.mean()) + float(low.mean()))
        if abs(updated - threshold) < 1e-7:
            break
        threshold = updated
    return threshold


def first_component(centred: np.ndarray) -> np.ndarray:
    """Unit direction of largest variance of (n, C) centred rows (eigenvector of the C x C scatter matrix)."""
    scatter = centred.T.astype(np.float64) @ centred.astype(np.float64)
    return np.linalg.eigh(scatter)[1][:, -1].astype(np.float32)


class NoMask:
    mode = "none"

    def foreground(self, frame_features: np.ndarray, layout: Layout) -> np.ndarray:
        return layout.valid()


@dataclass
class PcaMask:
    """Foreground = projection on one fitted direction above a threshold (see module doc)."""

    mean: np.ndarray  # (C,)
    direction: np.ndarray  # (C,), sign chosen so that the references' centre is foreground
    threshold: float
    mode: str = "pca"

    def projection(self, frame_features: np.ndarray, layout: Layout) -> np.ndarray:
        return layout.stitch((frame_features - self.mean) @ self.direction)

    def foreground(self, frame_features: np.ndarray, layout: Layout) -> np.ndarray:
        return layout.valid() & grow(self.projection(frame_features, layout) > self.threshold)

    @classmethod
    def fit(cls, references: list[tuple[np.ndarray, Layout]], seed: int = 0) -> "PcaMask":
        """Fit on (frame features, layout) of OK references (a random sample of up to PCA_SAMPLE patches)."""
        if not references:
            raise ValueError("the PCA mask needs at least one reference")
        rng = np.random.default_rng(seed)
        sample = np.concatenate([f.reshape(-1, f.shape[-1]) for f, _ in references]).astype(np.float32)
        sample = sample[rng.choice(len(sample), min(len(sample), PCA_SAMPLE), replace=False)]
        mean = sample.mean(axis=0)
        direction = first_component(sample - mean)
        grids = [PcaMask(mean, direction, 0.0).projection(f, layout) for f, layout in references]
        valid = [layout.valid() for _, layout in references]
        threshold = two_means_split(np.concatenate([g[v] for g, v in zip(grids, valid)]))
        above = [(g > threshold) & v for g, v in zip(grids, valid)]
        if _share(above, valid, border) > _share(above, valid, centre):  # the side above is the background
            direction, threshold = -direction, -threshold
        return cls(mean.astype(np.float32), direction.astype(np.float32), float(threshold))

    def save(self, path: Path) -> None:
        with path.open("wb") as handle:
            np.savez(handle, mean=self.mean, direction=self.direction, threshold=np.float32(self.threshold))

    @classmethod
    def load(cls, path: Path, feature_dim: int) -> "PcaMask":
        try:
            with np.load(path, allow_pickle=False) as data:
                mean, direction, threshold = data["mean"], data["direction"], float(data["threshold"])
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigError(f"{path}: not a PCA mask file (mean, direction, threshold): {exc}") from None
        if mean.shape != (feature_dim,) or direction.shape != (feature_dim,) or not np.isfinite(threshold):
            raise ConfigError(f"{path}: PCA mask for {mean.shape} features, the model has {feature_dim}")
        return cls(mean.astype(np.float32), direction.astype(np.float32), threshold)


class ImageMask:
    """Foreground from a mask image in reference-crop pixels (non-zero = inspect), scaled to each crop."""

    mode = "file"

    def __init__(self, mask: np.ndarray) -> None:
        if mask.ndim != 2 or not mask.any():
            raise ValueError("a mask image must be single-channel with at least one non-zero pixel")
        self.mask = (mask > 0).astype(np.float32)

    @classmethod
    def read(cls, path: Path) -> "ImageMask":
        try:
            image = read_image(path)
        except ImageError as exc:
            raise ConfigError(f"--mask {exc}") from None
        if image.ndim != 2:
            raise ConfigError(f"--mask {path}: a colour image; expected a single-channel mask (white = inspect, black = ignore)")
        if not image.any():
            raise ConfigError(f"--mask {path}: all black; nothing would be inspected (white = inspect)")
        return cls(image)

    def foreground(self, frame_features: np.ndarray, layout: Layout) -> np.ndarray:
        """Cells with at least half their area inside the mask (scaled to the crop, then to the grid)."""
        height, width = layout.crop_size
        scaled = cv2.resize(self.mask, (width, height), interpolation=cv2.INTER_AREA)
        extent_h, extent_w = layout.extent
        full = np.zeros((extent_h, extent_w), np.float32)
        full[: min(height, extent_h), : min(width, extent_w)] = scaled[:extent_h, :extent_w]
        rows, cols = layout.grid
        return layout.valid() & (cv2.resize(full, (cols, rows), interpolation=cv2.INTER_AREA) >= 0.5)
