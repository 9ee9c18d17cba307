"""Anomaly maps and overlays on a real texture photo."""

from __future__ import annotations

import numpy as np
import pytest

from calibration.demo_data import make_part, texture
from okcell.heatmap import anomaly_map, overlay


def _peaked(rows: int = 16, cols: int = 16, at: tuple[int, int] = (5, 11)) -> np.ndarray:
    scores = np.full((rows, cols), 0.1, np.float32)
    scores[at] = 0.9
    return scores


def test_map_has_roi_shape_float32_and_peak_at_the_patch() -> None:
    amap = anomaly_map(_peaked(), (240, 320))
    assert amap.shape == (240, 320) and amap.dtype == np.float32
    row, col = np.unravel_index(int(np.argmax(amap)), amap.shape)
    # patch (5, 11) of a 16 x 16 grid covers rows 75..90 and cols 220..240 of a 240 x 320 map
    assert 75 <= row < 90 and 220 <= col < 240


def test_blur_spreads_and_lowers_the_peak() -> None:
    sharp = anomaly_map(_peaked(), (224, 224), sigma_px=0)
    blurred = anomaly_map(_peaked(), (224, 224))
    assert blurred.max() < sharp.max()
    assert np.abs(np.diff(blurred, axis=1)).max() < np.abs(np.diff(sharp, axis=1)).max()
    # mass is kept: blurring does not change the mean noticeably
    assert abs(float(blurred.mean()) - float(sharp.mean())) < 1e-3


def test_constant_scores_give_a_constant_map() -> None:
    amap = anomaly_map(np.full((4, 6), 0.3, np.float32), (50, 70))
    assert np.allclose(amap, 0.3, atol=1e-6)


def test_bad_scores_are_refused() -> None:
    with pytest.raises(ValueError, match="rows, cols"):
        anomaly_map(np.zeros(10, np.float32), (10, 10))


def test_overlay_marks_the_hot_region_inside_the_roi() -> None:
    frame = make_part(texture("brick"), 256, np.random.default_rng(0))
    roi = (32, 48, 192, 160)
    amap = anomaly_map(_peaked(10, 12, at=(5, 6)), (160, 192))
    image = overlay(frame, amap, threshold=0.4, decision="NOK", score=0.9, roi=roi)
    assert image.shape == (256, 256, 3) and image.dtype == np.uint8
    peak_y, peak_x = np.unravel_index(int(np.argmax(amap)), amap.shape)
    hot = image[48 + peak_y, 32 + peak_x].astype(int)  # BGR
    calm = image[48 + 5, 32 + 5].astype(int)
    assert hot[2] - hot[0] > calm[2] - calm[0]  # redder where the anomaly is
    # outside the ROI, away from the banner and the colour bar, the frame is unchanged (RGB -> BGR)
    assert np.array_equal(image[200:230, 5:25], frame[200:230, 5:25, ::-1])


def test_overlay_of_mono_frame_and_error_without_map() -> None:
    frame = texture("gravel")[:, :, 0]
    image = overlay(frame, None, threshold=0.4, decision="ERROR", score=None)
    assert image.shape == frame.shape + (3,)
    assert not np.array_equal(image[:5, :5, 0], image[:5, :5, 1])  # coloured banner


def test_overlay_refuses_a_map_of_the_wrong_size() -> None:
    frame = np.zeros((100, 100, 3), np.uint8)
    with pytest.raises(ValueError, match="does not match the ROI"):
        overlay(frame, np.zeros((50, 50), np.float32), 0.4, "OK", 0.1)


@pytest.mark.parametrize("shape", [(1, 1), (1, 1, 3), (1, 9, 3), (7, 1, 3), (3, 3, 3)])
def test_overlay_of_a_tiny_frame(shape: tuple[int, ...]) -> None:
    frame = np.full(shape, 128, np.uint8)
    image = overlay(frame, None, threshold=0.4, decision="ERROR", score=None)
    assert image.shape == shape[:2] + (3,) and image.dtype == np.uint8
    amap = np.full(shape[:2], 0.9, np.float32)
    assert overlay(frame, amap, threshold=0.4, decision="NOK", score=0.9).shape == shape[:2] + (3,)


def test_large_overlay_is_capped_with_the_map_in_place() -> None:
    frame = np.zeros((3000, 5000, 3), np.uint8)
    roi = (1000, 500, 2000, 1000)
    amap = anomaly_map(_peaked(10, 20, at=(5, 10)), (1000, 2000))
    image = overlay(frame, amap, threshold=0.4, decision="NOK", score=0.9, roi=roi)
    assert image.shape == (1229, 2048, 3)  # longest side capped at 2048 px, aspect kept
    peak_y, peak_x = np.unravel_index(int(np.argmax(amap)), amap.shape)
    scale = 2048 / 5000
    hot = image[round((500 + peak_y) * scale), round((1000 + peak_x) * scale)].astype(int)  # BGR
    calm = image[round(520 * scale), round(1020 * scale)].astype(int)
    assert hot[2] - hot[0] > calm[2] - calm[0]  # redder where the anomaly is, after scaling
    assert image[round(300 * scale), round(300 * scale)].tolist() == [0, 0, 0]  # untouched outside the ROI
    mono = np.zeros((10000, 600), np.uint8)
    assert overlay(mono, None, 0.4, "ERROR", None).shape == (2048, 123, 3)
