"""GenICam pixel formats -> okcell frames (uint8 RGB (H, W, 3) or mono (H, W)) with OpenCV."""

from __future__ import annotations

import cv2
import numpy as np

# Mono formats: bits of the significant data in each (unpacked) pixel.
_MONO_BITS = {"Mono8": 8, "Mono10": 10, "Mono12": 12, "Mono16": 16}
# Colour formats with 3 or 4 interleaved channels -> OpenCV conversion to RGB (None: already RGB).
_COLOUR = {
    "RGB8": (3, None),
    "BGR8": (3, cv2.COLOR_BGR2RGB),
    "RGBa8": (4, cv2.COLOR_RGBA2RGB),
    "BGRa8": (4, cv2.COLOR_BGRA2RGB),
}
# GenICam names a Bayer pattern by its top-left 2x2 cell; OpenCV by the cell one pixel further in,
# so GenICam BayerRG8 (R at 0,0) is OpenCV's BayerBG.
_BAYER = {
    "BayerRG8": cv2.COLOR_BayerBG2RGB,
    "BayerGB8": cv2.COLOR_BayerGR2RGB,
    "BayerGR8": cv2.COLOR_BayerGB2RGB,
    "BayerBG8": cv2.COLOR_BayerRG2RGB,
}
SUPPORTED_PIXEL_FORMATS: tuple[str, ...] = (*_MONO_BITS, *_COLOUR, *_BAYER)


class PixelFormatError(ValueError):
    """A buffer's pixel format is unsupported or its size does not match."""


def to_frame(data: np.ndarray, width: int, height: int, pixel_format: str) -> np.ndarray:
    """Convert a producer buffer (flat or shaped) to a new uint8 RGB or mono array (never a view of ``data``)."""
    if pixel_format in _MONO_BITS:
        mono = _reshape(data, height, width, 1, pixel_format)
        bits = _MONO_BITS[pixel_format]
        if bits == 8:
            return mono.astype(np.uint8, copy=True)
        return (mono.astype(np.uint16) >> (bits - 8)).astype(np.uint8)
    if pixel_format in _COLOUR:
        channels, code = _COLOUR[pixel_format]
        pixels = _reshape(data, height, width, channels, pixel_format).astype(np.uint8, copy=False)
        return pixels.copy() if code is None else cv2.cvtColor(pixels, code)
    if pixel_format in _BAYER:
        mosaic = _reshape(data, height, width, 1, pixel_format).astype(np.uint8, copy=False)
        return cv2.cvtColor(np.ascontiguousarray(mosaic), _BAYER[pixel_format])
    raise PixelFormatError(
        f"pixel format {pixel_format!r} is not supported; use one of {', '.join(SUPPORTED_PIXEL_FORMATS)}"
    )


def _reshape(data: np.ndarray, height: int, width: int, channels: int, pixel_format: str) -> np.ndarray:
    expected = height * width * channels
    if data.size != expected:
        raise PixelFormatError(
            f"{pixel_format} buffer holds {data.size} values, expected {expected} for {width}x{height}x{channels}"
        )
    shape = (height, width) if channels == 1 else (height, width, channels)
    return data.reshape(shape)
