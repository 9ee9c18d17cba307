"""How a crop of any size becomes model frames, and how their patches map back onto one grid over the crop.

Three rules (the recipe records which, ``input.sizing``), the same code in calibration and in the cell:

- ``stretch``: the crop is resized to the model input (aspect not kept; a model exported at the crop's aspect,
  ``okcell export --size HxW``, keeps it). One frame; the grid is the model's patch grid.
- ``letterbox``: the crop is scaled to fit the model input with its aspect kept and placed at the top left; the
  rest is padded with the ImageNet mean colour. Patches of the padding are not scored and not in the bank.
- ``tile``: the crop is scaled by a factor fixed at calibration (default: its short side fills one model input)
  to a canvas whose sides are multiples of the patch size, and cut into overlapping model-size tiles whose
  origins lie on the patch grid. Every tile patch is one cell of the canvas grid; a cell covered by several tiles
  gets the mean of their patch scores, so each spot of the part is scored once.

Frames of other sizes than the references follow the same rule (a stretch to the model size, a fit, or the
recorded scale with as many tiles as the new size needs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from okcell.schema import ConfigError
from okcell.sidecar import IMAGENET_MEAN

SIZING_MODES = ("stretch", "letterbox", "tile")
DEFAULT_TILE_OVERLAP = 0.25
PAD_COLOUR = tuple(int(round(255 * v)) for v in IMAGENET_MEAN)  # normalises to zero in the model input


def _resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize to (height, width), like the runtime preprocessing; a no-op at the same size."""
    if image.shape[:2] == size:
        return image
    return cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)


def tile_origins(length: int, tile: int, overlap: float, patch: int) -> list[int]:
    """Origins (multiples of ``patch``) of the fewest tiles of ``tile`` px that cover ``length`` px (a multiple of
    ``patch``, at least ``tile``) with neighbours overlapping by at least ``overlap`` of a tile, spread evenly."""
    if length <= tile:
        return [0]
    stride = max(patch, int(tile * (1.0 - overlap)) // patch * patch)
    count = math.ceil((length - tile) / stride) + 1
    steps = (length - tile) // patch
    return [round(i * steps / (count - 1)) * patch for i in range(count)]


@dataclass(frozen=True)
class Layout:
    """The frames of one crop size and where their patches lie on the grid over the crop."""

    crop_size: tuple[int, int]  # (height, width) in crop pixels
    canvas_size: tuple[int, int]  # the crop resized, in model pixels (stretch: the model input size)
    tile_size: tuple[int, int]  # model input (height, width)
    origins: tuple[tuple[int, int], ...]  # (y, x) of each frame on the canvas, model pixels
    patch: int
    letterbox: bool = False

    @property
    def grid(self) -> tuple[int, int]:
        """(rows, cols) of the grid over the crop (letterbox: over the whole model input, padding included)."""
        size = self.tile_size if self.letterbox else self.canvas_size
        return size[0] // self.patch, size[1] // self.patch

    @property
    def tile_grid(self) -> tuple[int, int]:
        return self.tile_size[0] // self.patch, self.tile_size[1] // self.patch

    @property
    def extent(self) -> tuple[int, int]:
        """(height, width) in crop pixels that the grid covers from the crop's top left (the crop size, or more
        where the grid includes letterbox padding)."""
        rows, cols = self.grid
        height, width = self.crop_size
        return (round(rows * self.patch * height / self.canvas_size[0]),
                round(cols * self.patch * width / self.canvas_size[1]))

    def frames(self, crop: np.ndarray) -> list[np.ndarray]:
        """The model frames of ``crop`` (stretch: the crop itself; the backend resizes it to the model input)."""
        if crop.shape[:2] != self.crop_size:
            raise ValueError(f"crop of {crop.shape[1]}x{crop.shape[0]} px, layout made for {self.crop_size[1]}x{self.crop_size[0]} px")
        if self.letterbox:
            height, width = self.tile_size
            canvas = np.empty((height, width, *crop.shape[2:]), dtype=crop.dtype)
            canvas[...] = PAD_COLOUR if crop.ndim == 3 else round(float(np.mean(PAD_COLOUR)))
            canvas[: self.canvas_size[0], : self.canvas_size[1]] = _resize(crop, self.canvas_size)
            return [canvas]
        if len(self.origins) == 1 and self.canvas_size == self.tile_size:
            return [crop]
        canvas = _resize(crop, self.canvas_size)
        height, width = self.tile_size
        return [np.ascontiguousarray(canvas[y : y + height, x : x + width]) for y, x in self.origins]

    def cells(self) -> np.ndarray:
        """(frames, patches per frame) index of each frame patch into the flattened grid."""
        rows, cols = self.tile_grid
        local_r, local_c = np.divmod(np.arange(rows * cols), cols)
        grid_cols = self.grid[1]
        return np.stack([(y // self.patch + local_r) * grid_cols + x // self.patch + local_c for y, x in self.origins])

    def valid(self) -> np.ndarray:
        """(rows, cols) bool: cells that show the crop (False only on letterbox padding: a cell whose centre is
        outside the resized crop)."""
        rows, cols = self.grid
        centres_y = (np.arange(rows) + 0.5) * self.patch
        centres_x = (np.arange(cols) + 0.5) * self.patch
        return (centres_y[:, None] < self.canvas_size[0]) & (centres_x[None, :] < self.canvas_size[1])

    def stitch(self, frame_values: np.ndarray) -> np.ndarray:
        """(frames, patches per frame) values -> (rows, cols) float32 grid: each cell the mean of the frame patches
        that cover it."""
        rows, cols = self.grid
        cells = self.cells()
        if frame_values.shape != cells.shape:
            raise ValueError(f"values of shape {frame_values.shape}, layout has {cells.shape} frame patches")
        total = np.bincount(cells.ravel(), weights=np.asarray(frame_values, np.float64).ravel(), minlength=rows * cols)
        count = np.bincount(cells.ravel(), minlength=rows * cols)
        return (total / np.maximum(count, 1)).astype(np.float32).reshape(rows, cols)


def aspect_preserving_size(crop_size: tuple[int, int], model_size: tuple[int, int], patch: int) -> tuple[int, int]:
    """A model input size with the crop's aspect and about as many patches as ``model_size`` (for ``okcell export
    --size HxW``)."""
    height, width = crop_size
    area = model_size[0] * model_size[1]
    rows = max(1, round(math.sqrt(area * height / width) / patch))
    cols = max(1, round(math.sqrt(area * width / height) / patch))
    return rows * patch, cols * patch


def stretch_warning(crop_size: tuple[int, int], model_size: tuple[int, int], patch: int, tolerance: float = 0.1) -> str | None:
    """Advice when stretching ``crop_size`` to ``model_size`` distorts the aspect by more than ``tolerance``."""
    distortion = (crop_size[1] / crop_size[0]) / (model_size[1] / model_size[0])
    if abs(math.log(distortion)) <= math.log1p(tolerance):
        return None
    height, width = aspect_preserving_size(crop_size, model_size, patch)
    return (f"stretching {crop_size[1]}x{crop_size[0]} px references to the {model_size[1]}x{model_size[0]} px model input "
            f"distorts their aspect {max(distortion, 1 / distortion):.1f}x; to keep it, export the model with "
            f"--size {height}x{width} (about as many patches) or calibrate with --sizing tile")


@dataclass(frozen=True)
class Sizing:
    """The sizing rule of a recipe: ``mode`` and, for ``tile``, the scale (model px per crop px) and overlap."""

    mode: str = "stretch"
    tile_scale: float | None = None  # tile: fixed at calibration (None until then: fit the short side)
    tile_overlap: float = DEFAULT_TILE_OVERLAP

    def __post_init__(self) -> None:
        if self.mode not in SIZING_MODES:
            raise ConfigError(f"sizing {self.mode!r}: expected one of {', '.join(SIZING_MODES)}")
        if self.tile_scale is not None and not (math.isfinite(self.tile_scale) and 0.0 < self.tile_scale <= 8.0):
            raise ConfigError(f"tile scale {self.tile_scale}: expected model pixels per image pixel in (0, 8], e.g. 1.0")
        if not 0.0 <= self.tile_overlap < 0.9:
            raise ConfigError(f"tile overlap {self.tile_overlap}: expected a share of a tile in [0, 0.9), e.g. 0.25")

    def resolved(self, crop_size: tuple[int, int], model_size: tuple[int, int]) -> "Sizing":
        """This rule with the tile scale fixed for references of ``crop_size`` (the short side fills one tile)."""
        if self.mode != "tile" or self.tile_scale is not None:
            return self
        scale = max(model_size[0] / crop_size[0], model_size[1] / crop_size[1])
        return Sizing(self.mode, round(scale, 6), self.tile_overlap)

    def layout(self, crop_size: tuple[int, int], model_size: tuple[int, int], patch: int) -> Layout:
        """The layout of a crop of ``crop_size`` (height, width) for a model input of ``model_size``."""
        height, width = crop_size
        if height < 1 or width < 1:
            raise ValueError(f"crop size must be positive, found {width}x{height} px")
        if self.mode == "stretch":
            return Layout(crop_size, model_size, model_size, ((0, 0),), patch)
        if self.mode == "letterbox":
            fit = min(model_size[0] / height, model_size[1] / width)
            canvas = (max(1, min(model_size[0], round(height * fit))), max(1, min(model_size[1], round(width * fit))))
            return Layout(crop_size, canvas, model_size, ((0, 0),), patch, letterbox=True)
        scale = self.resolved(crop_size, model_size).tile_scale
        assert scale is not None
        canvas = (max(model_size[0], round(height * scale / patch) * patch),
                  max(model_size[1], round(width * scale / patch) * patch))
        ys = tile_origins(canvas[0], model_size[0], self.tile_overlap, patch)
        xs = tile_origins(canvas[1], model_size[1], self.tile_overlap, patch)
        return Layout(crop_size, canvas, model_size, tuple((y, x) for y in ys for x in xs), patch)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"mode": self.mode}
        if self.mode == "tile":
            data.update(tile_scale=self.tile_scale, tile_overlap=self.tile_overlap)
        return data

    @classmethod
    def from_json(cls, data: object, source: str) -> "Sizing":
        """``{"mode": ..., ["tile_scale": s, "tile_overlap": o]}`` -> Sizing; ConfigError naming ``source``."""
        if not isinstance(data, dict) or not isinstance(data.get("mode"), str):
            raise ConfigError(f"{source}: expected {{\"mode\": one of {', '.join(SIZING_MODES)}, ...}}, found {data!r}")
        expected = {"mode", "tile_scale", "tile_overlap"} if data["mode"] == "tile" else {"mode"}
        if set(data) != expected:
            raise ConfigError(f"{source}: sizing {data['mode']!r} takes the fields {sorted(expected)}, found {sorted(data)}")
        try:
            if data["mode"] != "tile":
                return cls(data["mode"])
            scale, overlap = data["tile_scale"], data["tile_overlap"]
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (scale, overlap)):
                raise ConfigError(f"tile_scale and tile_overlap must be numbers, found {scale!r}, {overlap!r}")
            return cls("tile", float(scale), float(overlap))
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None
