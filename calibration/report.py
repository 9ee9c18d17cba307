"""Calibration report: score histograms (held-out OK vs each NOK folder), threshold line and the stated risk, as PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from okcell.calibration.thresholds import Risk

_WIDTH, _HEIGHT = 1200, 720
_PLOT = (80, 60, 760, 620)  # left, top, right, bottom of the plot area
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_OK_COLOUR = (60, 160, 60)  # BGR
_NOK_COLOURS = [(40, 40, 210), (200, 110, 30), (30, 140, 220), (150, 50, 150), (120, 120, 20), (90, 90, 90)]
_THRESHOLD_COLOUR = (0, 0, 0)


def _text(canvas: np.ndarray, text: str, origin: tuple[int, int], scale: float = 0.5, colour: tuple[int, int, int] = (20, 20, 20), thickness: int = 1) -> None:
    cv2.putText(canvas, text, origin, _FONT, scale, colour, thickness, cv2.LINE_AA)


def _pct(value: float) -> str:
    return f"{100 * value:.2f} %"


def risk_lines(risk: Risk) -> list[str]:
    """The risk figures as printed by ``okcell calibrate`` and written on the report."""
    frr = risk.false_rejects
    lines = [
        f"threshold {risk.threshold:.4f} (NOK if score > threshold)",
        f"target FRR {_pct(risk.target_frr)}",
        f"FRR (held-out OK) {_pct(frr.rate)} = {frr.events}/{frr.total}, 95 % upper bound {_pct(frr.upper95)}",
    ]
    if risk.escapes is not None:
        esc = risk.escapes
        lines.append(f"escape rate (NOK) {_pct(esc.rate)} = {esc.events}/{esc.total}, 95 % upper bound {_pct(esc.upper95)}")
        for name, det in risk.detected_per_defect.items():
            lines.append(f"  recall {name}: {_pct(det.rate)} = {det.events}/{det.total}")
    else:
        lines.append("escape rate: no NOK folders given")
    return lines


def render_report(ok_scores: np.ndarray, nok_scores: dict[str, np.ndarray], risk: Risk, header: Sequence[str]) -> np.ndarray:
    """BGR uint8 image of the report."""
    canvas = np.full((_HEIGHT, _WIDTH, 3), 255, np.uint8)
    left, top, right, bottom = _PLOT
    groups = [("OK (held out)", np.asarray(ok_scores, float), _OK_COLOUR)] + [
        (name, np.asarray(s, float), _NOK_COLOURS[i % len(_NOK_COLOURS)]) for i, (name, s) in enumerate(nok_scores.items()) if len(s)
    ]
    every = np.concatenate([g[1] for g in groups] + [np.array([risk.threshold])])
    low, high = float(every.min()), float(every.max())
    # far-out NOK scores would squash the OK histogram: the axis ends at 3x the OK range, the rest goes to the last bin
    limit = 3.0 * max(risk.threshold, float(groups[0][1].max()))
    overflow = high > limit
    high = min(high, limit)
    pad = 0.05 * (high - low) if high > low else 0.01
    low, high = max(0.0, low - pad), high + pad
    edges = np.linspace(low, high, 41)
    fractions = [np.histogram(np.minimum(scores, edges[-1]), edges)[0] / max(1, len(scores)) for _, scores, _ in groups]
    peak = max(float(f.max()) for f in fractions) or 1.0

    def x_of(value: float) -> int:
        return int(round(left + (value - low) / (high - low) * (right - left)))

    def y_of(fraction: float) -> int:
        return int(round(bottom - fraction / peak * (bottom - top - 10)))

    for (name, scores, colour), fraction in zip(groups, fractions):
        layer = canvas.copy()
        for i, value in enumerate(fraction):
            if value > 0:
                cv2.rectangle(layer, (x_of(edges[i]) + 1, y_of(value)), (x_of(edges[i + 1]) - 1, bottom), colour, -1)
        cv2.addWeighted(layer, 0.45, canvas, 0.55, 0, canvas)
        for i, value in enumerate(fraction):
            if value > 0:
                cv2.rectangle(canvas, (x_of(edges[i]) + 1, y_of(value)), (x_of(edges[i + 1]) - 1, bottom), colour, 1)
    cv2.rectangle(canvas, (left, top), (right, bottom), (0, 0, 0), 1)
    for tick in np.linspace(low, high, 6):
        x = x_of(tick)
        cv2.line(canvas, (x, bottom), (x, bottom + 5), (0, 0, 0), 1)
        _text(canvas, f"{tick:.3f}", (x - 22, bottom + 22), 0.45)
    for tick in np.linspace(0, peak, 5):
        y = y_of(tick)
        cv2.line(canvas, (left - 5, y), (left, y), (0, 0, 0), 1)
        _text(canvas, f"{100 * tick:.0f}%", (left - 50, y + 5), 0.45)
    axis_label = "image anomaly score" + (f" (last bin: {edges[-2]:.3f} and above)" if overflow else "")
    _text(canvas, axis_label, (left + 10, bottom + 48), 0.55)
    _text(canvas, "share of folder", (8, top - 15), 0.5)
    tx = x_of(risk.threshold)
    for y in range(top, bottom, 12):
        cv2.line(canvas, (tx, y), (tx, min(y + 7, bottom)), _THRESHOLD_COLOUR, 2)
    _text(canvas, f"threshold {risk.threshold:.4f}", (min(tx + 6, right - 150), top + 18), 0.5, _THRESHOLD_COLOUR)

    x0, y = right + 30, top + 5
    for line in header:
        _text(canvas, line, (x0, y), 0.5, thickness=1)
        y += 24
    y += 10
    for name, scores, colour in groups:
        cv2.rectangle(canvas, (x0, y - 12), (x0 + 18, y + 2), colour, -1)
        _text(canvas, f"{name} ({len(scores)})", (x0 + 26, y), 0.5)
        y += 24
    y += 14
    for line in risk_lines(risk):
        for i, part in enumerate(_wrap(line, 46)):
            _text(canvas, ("    " if i else "") + part, (x0, y), 0.45)
            y += 22
    return canvas


def _wrap(line: str, width: int) -> list[str]:
    words, rows, current = line.split(" "), [], ""
    for word in words:
        if current and len(current) + 1 + len(word) > width:
            rows.append(current)
            current = word
        else:
            current = f"{current} {word}" if current else word
    return rows + [current]


def write_report(path: Path, ok_scores: np.ndarray, nok_scores: dict[str, np.ndarray], risk: Risk, header: Sequence[str]) -> None:
    if not cv2.imwrite(str(path), render_report(ok_scores, nok_scores, risk, header)):
        raise OSError(f"{path}: could not write the report PNG")
