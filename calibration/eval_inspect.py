"""How ``okcell evaluate`` inspects: through the cell's own inspector, seen as the :class:`FrameInspector` protocol
(``edge.runtime.inspector.Inspector`` fits it; ``calibration`` never imports ``edge``)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Protocol

import numpy as np

from okcell.images import ImageError, read_image
from okcell.result import InspectionResult


class FrameInspector(Protocol):
    """What the evaluation needs of the cell's inspector."""

    @property
    def threshold(self) -> float: ...

    def inspect(self, frame: np.ndarray) -> InspectionResult: ...

    def overlay(self, frame: np.ndarray, result: InspectionResult, colormap: str = "turbo") -> np.ndarray: ...


def say(message: str) -> None:
    """A progress line on stderr."""
    print(f"evaluate: {message}", file=sys.stderr, flush=True)


def read_or_error(path: Path) -> tuple[np.ndarray | None, str | None]:
    """(frame, None), or (None, why the file cannot be read): a bad file is reported, never raised."""
    try:
        return read_image(path), None
    except ImageError as exc:
        return None, exc.reason
    except Exception as exc:  # e.g. out of memory decoding a huge file
        return None, f"cannot read ({type(exc).__name__}: {exc})"


def inspect_path(inspector: FrameInspector, path: Path) -> tuple[InspectionResult, np.ndarray | None]:
    """Read and inspect ``path``: (result, frame), or an ERROR result saying why and no frame."""
    frame, error = read_or_error(path)
    if frame is None:
        return InspectionResult(decision="ERROR", score=None, threshold=inspector.threshold, error=error), None
    return inspector.inspect(frame), frame
