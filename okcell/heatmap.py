"""Anomaly maps from patch scores, and the colour overlay people look at.

The colour scale is fixed relative to the recipe's threshold (not stretched per image), so an OK part
looks calm and a NOK part shows warm colours where it is defective: 0 -> blue, threshold -> orange-yellow
(2/3 of the scale), 1.5 x threshold and above -> red. Overlays are drawn at most ``OVERLAY_MAX_SIDE`` px on the
longest side (larger frames are scaled down first), so a huge frame never gives a huge file.
"""

from __future__ import annotations

import cv2
import numpy as np

HEATMAP_SIGMA_PX = 4.0
SCALE_TOP = 1.5  # the colour scale ends at SCALE_TOP x threshold
OVERLAY_MAX_SIDE = 2048  # px: longest side of an overlay image
COLORMAPS = {"turbo": cv2.COLORMAP_TURBO, "jet": cv2.COLORMAP_JET}
DECISION_COLOURS_BGR = {"OK": (60, 160, 40), "NOK": (40, 40, 210), "ERROR": (160, 40, 200)}


def anomaly_map(patch_scores: np.ndarray, size: tuple[int, int], sigma_px: float = HEATMAP_SIGMA_PX,
                extent: tuple[int, int] | None = None) -> np.ndarray:
    """Patch scores (rows, cols) -> float32 (height, width) map: bilinear upsample, then Gaussian blur.

    ``extent``: (height, width) in map pixels that the grid covers from the top left, when more than ``size``
    (letterbox padding); the map is the top-left ``size`` of it."""
    scores = np.asarray(patch_scores, dtype=np.float32)
    if scores.ndim != 2 or scores.size == 0:
        raise ValueError(f"patch scores must be a non-empty (rows, cols) array, found shape {scores.shape}")
    height, width = size
    if height < 1 or width < 1:
        raise ValueError(f"map size must be positive (height, width), found {size}")
    full_height, full_width = extent if extent is not None else size
    if full_height < height or full_width < width:
        raise ValueError(f"grid extent {extent} is smaller than the map size {size}")
    upsampled = cv2.resize(scores, (full_width, full_height), interpolation=cv2.INTER_LINEAR)
    upsampled = np.ascontiguousarray(upsampled[:height, :width])
    if sigma_px > 0:
        upsampled = cv2.GaussianBlur(upsampled, (0, 0), sigma_px, borderType=cv2.BORDER_REFLECT)
    return upsampled.astype(np.float32, copy=False)


def colourise(amap: np.ndarray, threshold: float, colormap: str = "turbo") -> tuple[np.ndarray, np.ndarray]:
    """Map -> (BGR uint8 colours, blend weight in [0, 1] per pixel) on the threshold-relative scale."""
    if colormap not in COLORMAPS:
        raise ValueError(f"unknown colormap {colormap!r}; expected one of {', '.join(COLORMAPS)}")
    top = SCALE_TOP * threshold if threshold > 0 else max(float(amap.max()), 1e-6)
    level = np.clip(amap / top, 0.0, 1.0)
    colours = cv2.applyColorMap((level * 255).astype(np.uint8), COLORMAPS[colormap])
    weight = 0.25 + 0.45 * level  # calm regions stay readable, hot regions dominate
    return colours, weight.astype(np.float32)


def overlay(
    frame: np.ndarray,
    amap: np.ndarray | None,
    threshold: float,
    decision: str,
    score: float | None,
    roi: tuple[int, int, int, int] | None = None,
    colormap: str = "turbo",
    label: str | None = None,
) -> np.ndarray:
    """The frame (RGB or mono uint8) with the anomaly map blended into ``roi`` (x, y, width, height; whole
    frame when None), the ROI outlined, a colour bar with the threshold tick, and the decision text.
    Frames longer than ``OVERLAY_MAX_SIDE`` are scaled down (map and ROI with them). Returns BGR uint8, ready for
    ``cv2.imwrite``."""
    height, width = frame.shape[:2]
    x, y, w, h = roi if roi is not None else (0, 0, width, height)
    if amap is not None and amap.shape != (h, w):
        raise ValueError(f"anomaly map shape {amap.shape} does not match the ROI ({h}, {w})")
    scale = OVERLAY_MAX_SIDE / max(height, width)
    if scale < 1:
        frame = cv2.resize(frame, (max(1, round(width * scale)), max(1, round(height * scale))), interpolation=cv2.INTER_AREA)
        x, y, right, bottom = (round(v * scale) for v in (x, y, x + w, y + h))
        w, h = max(1, right - x), max(1, bottom - y)
        if amap is not None:
            amap = cv2.resize(amap, (w, h), interpolation=cv2.INTER_AREA)
    canvas = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR if frame.ndim == 2 else cv2.COLOR_RGB2BGR)
    if amap is not None:
        colours, weight = colourise(amap, threshold, colormap)
        region = canvas[y:y + h, x:x + w].astype(np.float32)
        blended = region * (1 - weight[:, :, None]) + colours.astype(np.float32) * weight[:, :, None]
        canvas[y:y + h, x:x + w] = np.clip(blended + 0.5, 0, 255).astype(np.uint8)
    if roi is not None:
        cv2.rectangle(canvas, (x, y), (x + w - 1, y + h - 1), (255, 255, 255), 1, cv2.LINE_AA)
    _colour_bar(canvas, threshold, colormap)
    _banner(canvas, decision, score, threshold, label)
    return canvas


def _banner(canvas: np.ndarray, decision: str, score: float | None, threshold: float, label: str | None) -> None:
    """Decision and score on a coloured bar at the top (scaled to the frame width)."""
    scale = max(0.4, canvas.shape[1] / 640)
    score_text = "-" if score is None else f"{score:.3f}"
    text = f"{decision}  score {score_text} / thr {threshold:.3f}" + (f"  nearest: {label}" if label else "")
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, max(1, int(2 * scale)))
    bar_h = th + base + int(8 * scale)
    colour = DECISION_COLOURS_BGR.get(decision, (90, 90, 90))
    cv2.rectangle(canvas, (0, 0), (min(canvas.shape[1], tw + int(12 * scale)), bar_h), colour, -1)
    cv2.putText(canvas, text, (int(6 * scale), th + int(4 * scale)), cv2.FONT_HERSHEY_SIMPLEX, scale,
                (255, 255, 255), max(1, int(2 * scale)), cv2.LINE_AA)


def _colour_bar(canvas: np.ndarray, threshold: float, colormap: str) -> None:
    """A strip along the bottom showing the scale, with a white tick at the threshold."""
    height, width = canvas.shape[:2]
    bar_h = min(height, max(4, height // 60))
    ramp = np.linspace(0, 255, width, dtype=np.float32).astype(np.uint8)[None, :].repeat(bar_h, axis=0)
    canvas[height - bar_h:] = cv2.applyColorMap(ramp, COLORMAPS[colormap])
    tick = int(round(width / SCALE_TOP)) if threshold > 0 else None
    if tick is not None:
        cv2.line(canvas, (tick, height - 2 * bar_h), (tick, height - 1), (255, 255, 255), 2)
