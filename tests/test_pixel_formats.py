"""Pixel-format conversion on a real photo (scikit-image astronaut) packed into each GenICam layout."""

import cv2
import numpy as np
import pytest
from skimage import data

from edge.acquisition.pixel_formats import SUPPORTED_PIXEL_FORMATS, PixelFormatError, to_frame


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    return cv2.resize(data.astronaut(), (64, 48), interpolation=cv2.INTER_AREA)


def test_mono_bit_depths_scale_to_8_bit(rgb):
    mono = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    h, w = mono.shape
    assert np.array_equal(to_frame(mono.ravel(), w, h, "Mono8"), mono)
    for fmt, bits in (("Mono10", 10), ("Mono12", 12), ("Mono16", 16)):
        wide = (mono.astype(np.uint16) << (bits - 8)) | ((1 << (bits - 8)) - 1)
        out = to_frame(wide.ravel(), w, h, fmt)
        assert out.dtype == np.uint8 and np.array_equal(out, mono), fmt


def test_interleaved_colour_formats_give_rgb(rgb):
    h, w, _ = rgb.shape
    packed = {
        "RGB8": rgb,
        "BGR8": rgb[:, :, ::-1],
        "RGBa8": np.dstack([rgb, np.full((h, w), 255, np.uint8)]),
        "BGRa8": np.dstack([rgb[:, :, ::-1], np.full((h, w), 255, np.uint8)]),
    }
    for fmt, layout in packed.items():
        out = to_frame(np.ascontiguousarray(layout).ravel(), w, h, fmt)
        assert out.shape == (h, w, 3) and np.array_equal(out, rgb), fmt


@pytest.mark.parametrize("fmt,origin", [("BayerRG8", (0, 0)), ("BayerGB8", (1, 0)), ("BayerGR8", (0, 1)), ("BayerBG8", (1, 1))])
def test_bayer_patterns_demosaic_to_the_right_colours(rgb, fmt, origin):
    """Build the mosaic the camera would send (origin: where R sits in the 2x2 cell) and check colours come back."""
    h, w, _ = rgb.shape
    ry, rx = origin
    mosaic = np.empty((h, w), np.uint8)
    mosaic[ry::2, rx::2] = rgb[ry::2, rx::2, 0]
    mosaic[1 - ry::2, 1 - rx::2] = rgb[1 - ry::2, 1 - rx::2, 2]
    mosaic[ry::2, 1 - rx::2] = rgb[ry::2, 1 - rx::2, 1]
    mosaic[1 - ry::2, rx::2] = rgb[1 - ry::2, rx::2, 1]
    out = to_frame(mosaic.ravel(), w, h, fmt)
    inner = (slice(2, -2), slice(2, -2))
    error = np.abs(out[inner].astype(int) - rgb[inner].astype(int)).mean(axis=(0, 1))
    swapped = np.abs(out[inner][..., ::-1].astype(int) - rgb[inner].astype(int)).mean(axis=(0, 1))
    assert error.max() < 20 and error.sum() < swapped.sum(), (fmt, error, swapped)


def test_unsupported_format_and_wrong_size_are_named():
    with pytest.raises(PixelFormatError, match="YUV422_8.*Mono8"):
        to_frame(np.zeros(16, np.uint8), 4, 4, "YUV422_8")
    with pytest.raises(PixelFormatError, match="RGB8 buffer holds 16 values, expected 48"):
        to_frame(np.zeros(16, np.uint8), 4, 4, "RGB8")
    assert len(SUPPORTED_PIXEL_FORMATS) == 12
