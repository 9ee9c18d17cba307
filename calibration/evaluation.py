"""Scoring decisions against known truth: truth from folder names, confusion table, rates, image AUROC."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

OK_FOLDER, NOK_FOLDER = "ok", "nok"


def truth_from_path(path: Path) -> tuple[str | None, str | None]:
    """``.../ok/x.png`` -> ("OK", None); ``.../nok/<defect>/x.png`` -> ("NOK", defect); ``.../nok/x.png`` ->
    ("NOK", "nok"); otherwise (None, None). The nearest ``ok``/``nok`` folder (case-insensitive) decides."""
    parents = [p.name for p in Path(path).parents][:-1]  # nearest first, without the root
    for depth, name in enumerate(parents):
        lowered = name.lower()
        if lowered == NOK_FOLDER:
            return "NOK", parents[depth - 1] if depth > 0 else name
        if lowered == OK_FOLDER:
            return "OK", None
    return None, None


def auroc(ok_scores: np.ndarray, nok_scores: np.ndarray) -> float | None:
    """Probability that a NOK image scores above an OK image (ties count half); None without both classes."""
    ok, nok = np.asarray(ok_scores, np.float64), np.asarray(nok_scores, np.float64)
    if not len(ok) or not len(nok):
        return None
    greater = (nok[:, None] > ok[None, :]).sum()
    ties = (nok[:, None] == ok[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(ok) * len(nok)))


@dataclass
class Tally:
    """Decisions per truth row (``OK``, ``NOK:<defect>``, ``unknown``) and the scores of completed inspections."""

    rows: dict[str, dict[str, int]] = field(default_factory=dict)
    scores: dict[str, list[float]] = field(default_factory=dict)  # per truth row, inspections without error

    def add(self, path: Path, decision: str, score: float | None) -> None:
        truth, defect = truth_from_path(path)
        row = "unknown" if truth is None else ("OK" if truth == "OK" else f"NOK:{defect}")
        counts = self.rows.setdefault(row, {"OK": 0, "NOK": 0, "ERROR": 0})
        counts[decision] += 1
        if score is not None and decision != "ERROR":
            self.scores.setdefault(row, []).append(float(score))

    @property
    def ok_scores(self) -> list[float]:
        return self.scores.get("OK", [])

    @property
    def nok_by_defect(self) -> dict[str, list[float]]:
        return {row[4:]: s for row, s in sorted(self.scores.items()) if row.startswith("NOK:")}

    @property
    def nok_scores(self) -> list[float]:
        return [v for s in self.nok_by_defect.values() for v in s]

    def _sum(self, prefix: str, decision: str) -> int:
        return sum(c[decision] for name, c in self.rows.items() if name.startswith(prefix))

    @property
    def false_rejects(self) -> tuple[int, int]:
        """(OK parts decided NOK, OK parts inspected without error)."""
        return self._sum("OK", "NOK"), self._sum("OK", "NOK") + self._sum("OK", "OK")

    @property
    def escapes(self) -> tuple[int, int]:
        """(NOK parts decided OK, NOK parts inspected without error)."""
        return self._sum("NOK:", "OK"), self._sum("NOK:", "NOK") + self._sum("NOK:", "OK")

    @property
    def image_auroc(self) -> float | None:
        return auroc(np.array(self.ok_scores), np.array(self.nok_scores))

    def table(self) -> list[str]:
        """The confusion table as text lines (truth rows, decision columns)."""
        order = sorted(self.rows, key=lambda r: (r != "OK", r == "unknown", r))
        width = max([len("truth")] + [len(r) for r in order]) + 2
        lines = [f"{'truth':<{width}}{'OK':>7}{'NOK':>7}{'ERROR':>7}"]
        for name in order:
            c = self.rows[name]
            lines.append(f"{name:<{width}}{c['OK']:>7}{c['NOK']:>7}{c['ERROR']:>7}")
        return lines
