"""The PNG figures of ``okcell evaluate``, drawn with matplotlib's Agg renderer (no display, no pyplot state):
ROC per defect type, score distributions with the thresholds, and a sheet of the worst parts with their heatmaps."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import cv2
import numpy as np
from matplotlib.figure import Figure

from calibration.pixel_metrics import area_under, roc_curve

OK_COLOUR = "tab:green"
NOK_COLOURS = ("tab:red", "tab:blue", "tab:orange", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan",
               "tab:gray")
TILE_MAX_SIDE = 320


@dataclass(frozen=True)
class Tile:
    """One part on the worst-parts sheet: its heatmap overlay (RGB) and a caption."""

    image: np.ndarray
    caption: str


def roc_figure(path: Path, ok_scores: np.ndarray, nok_by_defect: Mapping[str, np.ndarray], threshold: float) -> None:
    """ROC of the test OK images against each defect type, with the recipe's operating point marked."""
    ok = np.asarray(ok_scores, dtype=np.float64)
    figure = Figure(figsize=(6.4, 6.0), dpi=110)
    axes = figure.add_subplot()
    for defect, scores in nok_by_defect.items():
        nok = np.asarray(scores, dtype=np.float64)
        if not len(nok) or not len(ok):
            continue
        fpr, tpr = roc_curve(np.r_[ok, nok], np.r_[np.zeros(len(ok), bool), np.ones(len(nok), bool)])
        line, = axes.plot(fpr, tpr, label=f"{defect}: AUROC {area_under(fpr, tpr):.3f} ({len(nok)} NOK)")
        axes.plot([np.mean(ok > threshold)], [np.mean(nok > threshold)], "o", color=line.get_color())
    axes.plot([0, 1], [0, 1], ":", color="grey", linewidth=1)
    axes.set_xlim(-0.01, 1.01)
    axes.set_ylim(-0.01, 1.01)
    axes.set_xlabel(f"false-reject rate ({len(ok)} test OK images)")
    axes.set_ylabel("recall (share of defective parts rejected)")
    axes.set_title("ROC per defect type (dot: recipe threshold)")
    axes.legend(loc="lower right", fontsize=8)
    axes.grid(alpha=0.3)
    figure.savefig(path)


def score_figure(path: Path, groups: Mapping[str, np.ndarray], thresholds: Mapping[str, float]) -> None:
    """Histograms (share of each group) of the image scores on shared bins, with vertical threshold lines:
    the first threshold solid, the others dashed."""
    present = {name: np.asarray(s, dtype=np.float64) for name, s in groups.items() if len(s)}
    every = np.concatenate(list(present.values()) + [np.array(list(thresholds.values()))])
    low, high = float(every.min()), float(every.max())
    edges = np.linspace(low, high if high > low else low + 1e-6, 41).tolist()
    figure = Figure(figsize=(8.0, 4.8), dpi=110)
    axes = figure.add_subplot()
    others = iter(NOK_COLOURS * len(present))
    for name, scores in present.items():
        colour = OK_COLOUR if name.startswith("OK") else next(others)
        axes.hist(scores, bins=edges, weights=np.full(len(scores), 1.0 / len(scores)), alpha=0.45,
                  label=f"{name} ({len(scores)})", color=colour, histtype="stepfilled", edgecolor="black", linewidth=0.5)
    for number, (name, value) in enumerate(thresholds.items()):
        axes.axvline(value, color="black", linestyle=("-", "--", ":")[min(number, 2)], linewidth=1.2,
                     label=f"{name} {value:.4f}")
    axes.set_xlabel("image anomaly score (NOK if score > threshold)")
    axes.set_ylabel("share of group")
    axes.set_title("Score distributions")
    axes.legend(fontsize=8, loc="upper right")
    figure.savefig(path)


def worst_sheet(path: Path, rows: Mapping[str, Sequence[Tile]]) -> None:
    """A grid with one row per group (e.g. lowest-scoring defective parts, highest-scoring good parts)."""
    columns = max([len(tiles) for tiles in rows.values()] + [1])
    figure = Figure(figsize=(3.0 * columns, 3.4 * len(rows)), dpi=90)
    grid = figure.subplots(len(rows), columns, squeeze=False)
    for row, (title, tiles) in enumerate(rows.items()):
        for column in range(columns):
            axes = grid[row][column]
            axes.set_axis_off()
            if column < len(tiles):
                axes.imshow(_thumbnail(tiles[column].image))
                axes.set_title(tiles[column].caption, fontsize=7)
        if not tiles:
            grid[row][0].text(0.0, 0.5, "none", fontsize=10)
        figure.text(0.005, 1.0 - (row + 0.02) / len(rows), title, fontsize=10, weight="bold", va="top")
    figure.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.92, hspace=0.35, wspace=0.05)
    figure.savefig(path)


def _thumbnail(image: np.ndarray) -> np.ndarray:
    scale = TILE_MAX_SIDE / max(image.shape[:2])
    if scale >= 1.0:
        return image
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    return np.asarray(cv2.resize(image, size, interpolation=cv2.INTER_AREA))
