"""Reading image files into okcell frames (uint8 RGB or mono), with errors that name the file."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


class ImageError(ValueError):
    """An image file cannot be used; the message names the file and what was expected."""


def read_image(path: Path | str, min_size: tuple[int, int] | None = None) -> np.ndarray:
    """Read ``path`` as uint8 RGB (H, W, 3) or mono (H, W).

    ``min_size`` (height, width): refuse images smaller than this (e.g. the ROI or model input)."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such file")
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise ImageError(f"{path}: not a readable image (corrupt or unsupported format)")
    if raw.dtype != np.uint8:
        bits = raw.dtype.itemsize * 8
        raise ImageError(f"{path}: {bits}-bit image ({raw.dtype}); expected 8-bit (uint8) — convert it to 8-bit first")
    if raw.ndim == 3 and raw.shape[2] == 1:
        raw = raw[:, :, 0]
    if raw.ndim == 2:
        image = raw
    elif raw.shape[2] == 3:
        image = cv2.cvtColor(raw, cv2.COLOR_BGR2RGB)
    elif raw.shape[2] == 4:
        image = cv2.cvtColor(raw, cv2.COLOR_BGRA2RGB)
    else:
        raise ImageError(f"{path}: {raw.shape[2]} channels; expected 1 (mono), 3 (colour) or 4 (colour + alpha)")
    if min_size is not None and (image.shape[0] < min_size[0] or image.shape[1] < min_size[1]):
        raise ImageError(
            f"{path}: {image.shape[1]}x{image.shape[0]} px is smaller than the required {min_size[1]}x{min_size[0]} px"
        )
    return image


def list_images(folder: Path | str) -> list[Path]:
    """Image files directly in ``folder``, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageError(f"{folder}: not a folder of images")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def as_frame(array: np.ndarray) -> np.ndarray:
    """A single-channel (H, W, 1) array as the mono frame (H, W) it is; any other array unchanged."""
    return array[:, :, 0] if array.ndim == 3 and array.shape[2] == 1 else array
