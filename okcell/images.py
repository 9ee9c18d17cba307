"""Reading image files into okcell frames (uint8 RGB or mono), with errors that name the file.

A file that does not decode completely is refused: OpenCV's ``imread`` fills a truncated JPEG with grey and only
warns, so JPEG files must also carry the end-of-image marker after their last scan."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import cv2
import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


JPEG_START = b"\xff\xd8\xff"
JPEG_SCAN = b"\xff\xda"  # start of scan: entropy-coded data follows, in which 0xFF is always stuffed (FF 00)
JPEG_END = b"\xff\xd9"


class ImageError(ValueError):
    """An image file cannot be used: ``path`` and ``reason`` (what was expected); the message is ``path: reason``."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason


def _read_file(path: Path) -> bytes:
    """The content of the regular file ``path``; ImageError for a missing file, a broken or looping symbolic link,
    a folder or device, or a read error."""
    try:
        info = path.stat()
    except FileNotFoundError:
        if path.is_symlink():
            raise ImageError(path, f"broken symbolic link (to {os.readlink(path)})") from None
        raise ImageError(path, "no such file") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ImageError(path, "symbolic link loop") from None
        raise ImageError(path, f"cannot read ({exc.strerror})") from None
    if not stat.S_ISREG(info.st_mode):
        raise ImageError(path, "not a file")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ImageError(path, f"cannot read ({exc.strerror})") from None


def _truncated_jpeg(data: bytes) -> bool:
    """Whether ``data`` is a JPEG without an end-of-image marker after its last scan (the file was cut short)."""
    if not data.startswith(JPEG_START):
        return False
    last_scan = data.rfind(JPEG_SCAN)
    return last_scan < 0 or data.find(JPEG_END, last_scan) < 0


def read_image(path: Path | str, min_size: tuple[int, int] | None = None) -> np.ndarray:
    """Read ``path`` as uint8 RGB (H, W, 3) or mono (H, W).

    ``min_size`` (height, width): refuse images smaller than this (e.g. the ROI or model input)."""
    path = Path(path)
    data = _read_file(path)
    if _truncated_jpeg(data):
        raise ImageError(path, "truncated JPEG (no end-of-image marker after the last scan); the file is incomplete")
    raw = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise ImageError(path, "not a readable image (corrupt or unsupported format)")
    if raw.dtype != np.uint8:
        bits = raw.dtype.itemsize * 8
        raise ImageError(path, f"{bits}-bit image ({raw.dtype}); expected 8-bit (uint8) — convert it to 8-bit first")
    if raw.ndim == 3 and raw.shape[2] == 1:
        raw = raw[:, :, 0]
    if raw.ndim == 2:
        image = raw
    elif raw.shape[2] == 3:
        image = cv2.cvtColor(raw, cv2.COLOR_BGR2RGB)
    elif raw.shape[2] == 4:
        image = cv2.cvtColor(raw, cv2.COLOR_BGRA2RGB)
    else:
        raise ImageError(path, f"{raw.shape[2]} channels; expected 1 (mono), 3 (colour) or 4 (colour + alpha)")
    if min_size is not None and (image.shape[0] < min_size[0] or image.shape[1] < min_size[1]):
        raise ImageError(
            path, f"{image.shape[1]}x{image.shape[0]} px is smaller than the required {min_size[1]}x{min_size[0]} px"
        )
    return image


def list_images(folder: Path | str) -> list[Path]:
    """Image files directly in ``folder``, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageError(folder, "not a folder of images")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def as_frame(array: np.ndarray) -> np.ndarray:
    """A single-channel (H, W, 1) array as the mono frame (H, W) it is; any other array unchanged."""
    return array[:, :, 0] if array.ndim == 3 and array.shape[2] == 1 else array
