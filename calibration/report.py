"""Calibration report: score histograms (held-out OK vs each NOK folder), threshold line and the stated risk, as PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np

from calibration.thresholds import Risk, references_needed

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
    lines = [f"threshold {risk.threshold:.4f} (NOK if score > threshold)", f"target FRR {_pct(risk.target_frr)}"]
    if risk.expected_frr is not None:
        lines.append(f"expected FRR on new parts {_pct(risk.expected_frr)}")
        if risk.expected_frr > risk.target_frr:
            needed = f"at least {references_needed(risk.target_frr)} OK references" if risk.target_frr > 0 else "a target above 0"
            lines.append(f"  too few OK references to reach the target: use {needed}")
    lines.append(f"FRR (held-out OK) {_pct(frr.rate)} = {frr.events}/{frr.total}, 95 % upper bound {_pct(frr.upper95)}")
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
    positive = every[every > 0]
    floor = float(positive.min()) if len(positive) else 1e-6
    low, high = max(float(every.min()), floor), max(float(every.max()), floor * 1.01)
    # NOK scores often lie orders of magnitude above the OK cluster: then the axis is logarithmic
    log_axis = high / low > 8.0
    forward: Callable[[np.ndarray], np.ndarray] = np.log10 if log_axis else np.asarray
    lo, hi = float(forward(np.array(low))), float(forward(np.array(high)))
    pad = 0.04 * (hi - lo) if hi > lo else 0.01
    lo, hi = lo - pad, hi + pad
    edges = np.linspace(lo, hi, 49)
    fractions = [np.histogram(np.clip(forward(np.maximum(scores, floor)), lo, hi), edges)[0] / max(1, len(scores))
                 for _, scores, _ in groups]
    peak = max(float(f.max()) for f in fractions) or 1.0

    def x_at(position: float) -> int:
        return int(round(left + (position - lo) / (hi - lo) * (right - left)))

    def x_of(value: float) -> int:
        return x_at(float(forward(np.array(max(value, floor)))))

    def y_of(fraction: float) -> int:
        return int(round(bottom - fraction / peak * (bottom - top - 10)))

    for (name, scores, colour), fraction in zip(groups, fractions):
        layer = canvas.copy()
        for i, value in enumerate(fraction):
            if value > 0:
                cv2.rectangle(layer, (x_at(edges[i]) + 1, y_of(value)), (x_at(edges[i + 1]) - 1, bottom), colour, -1)
        cv2.addWeighted(layer, 0.45, canvas, 0.55, 0, canvas)
        for i, value in enumerate(fraction):
            if value > 0:
                cv2.rectangle(canvas, (x_at(edges[i]) + 1, y_of(value)), (x_at(edges[i + 1]) - 1, bottom), colour, 1)
    cv2.rectangle(canvas, (left, top), (right, bottom), (0, 0, 0), 1)
    for position in np.linspace(lo, hi, 7):
        x = x_at(position)
        cv2.line(canvas, (x, bottom), (x, bottom + 5), (0, 0, 0), 1)
        _text(canvas, f"{10 ** position if log_axis else position:.3g}", (x - 20, bottom + 22), 0.45)
    for tick in np.linspace(0, peak, 5):
        y = y_of(tick)
        cv2.line(canvas, (left - 5, y), (left, y), (0, 0, 0), 1)
        _text(canvas, f"{100 * tick:.0f}%", (left - 50, y + 5), 0.45)
    axis_label = "image anomaly score" + (" (log scale)" if log_axis else "")
    _text(canvas, axis_label, (left + 10, bottom + 48), 0.55)
    _text(canvas, "share of folder", (8, top - 15), 0.5)
    tx = x_of(risk.threshold)
    for y in range(top, bottom, 12):
        cv2.line(canvas, (tx, y), (tx, min(y + 7, bottom)), _THRESHOLD_COLOUR, 2)
    label_x = min(tx + 6, right - 150)
    cv2.rectangle(canvas, (label_x - 2, top + 3), (label_x + 140, top + 24), (255, 255, 255), -1)
    _text(canvas, f"threshold {risk.threshold:.4f}", (label_x, top + 18), 0.5, _THRESHOLD_COLOUR)

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
