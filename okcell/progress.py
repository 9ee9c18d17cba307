"""Progress of long work on stderr, the one way okcell shows it.

On a terminal one line is redrawn with ``\\r`` (a bar, the count, the rate); elsewhere (journald, a pipe, a log
file) plain lines: one per tenth of the total or after ``interval_s`` without a line, so a long loop writes a
dozen lines, not thousands. Every run ends with one summary line, ``label: done/total unit in S s (R unit/s)``.

    with Progress("OK features", len(paths), "images") as progress:
        for batch in batches:
            ...
            progress.advance(len(batch))
"""

from __future__ import annotations

import os
import sys
import threading
import time
from types import TracebackType
from typing import TextIO

BAR_WIDTH = 24
REDRAW_S = 0.1  # a terminal line is redrawn at most this often
LINES = 10  # plain lines per run, besides the time-based ones


class Progress:
    """Counted progress (``total`` items of ``unit``) with free-text notes; thread-safe. Use it as a context manager
    (or call ``close``) so that the summary line is written."""

    def __init__(self, label: str, total: int | None = None, unit: str = "", stream: TextIO | None = None,
                 interval_s: float = 30.0) -> None:
        self.label, self.total, self.unit, self.done = label, total, unit, 0
        self.stream = sys.stderr if stream is None else stream
        self.interactive = bool(getattr(self.stream, "isatty", lambda: False)())
        self.columns = _columns(self.stream) if self.interactive else 0
        self.interval_s = interval_s
        self.started = self._shown_at = time.monotonic()
        self._shown_done = 0
        self._detail = ""
        self._drawn = 0  # width of the line on the terminal, 0 when none is drawn
        self._closed = False
        self._lock = threading.Lock()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close(stopped=error is not None)

    def advance(self, count: int = 1, detail: str = "") -> None:
        """``count`` more items done; ``detail`` (e.g. ``RSS 310 MiB``) is shown after the count until replaced."""
        with self._lock:
            if self._closed:
                return
            self.done += count
            self._detail = detail or self._detail
            now = time.monotonic()
            finished = self.total is not None and self.done >= self.total
            if self.interactive:
                if finished or now - self._shown_at >= REDRAW_S:
                    self._draw(self._status(now, bar=True), now)
            elif not finished and (self._crossed_a_tenth() or now - self._shown_at >= self.interval_s):
                self._line(self._status(now, bar=False), now)  # the summary line reports the end

    def note(self, text: str) -> None:
        """A message of its own line, ``label [elapsed s] text``, above the progress line."""
        with self._lock:
            now = time.monotonic()
            self._line(f"{self.label} [{now - self.started:6.1f} s] {text}", now)

    def close(self, stopped: bool = False) -> None:
        """Write the summary line (once); ``stopped``: the work ended early (an error), say how far it got."""
        with self._lock:
            if not self._closed:
                self._finish(time.monotonic(), stopped)

    def _crossed_a_tenth(self) -> bool:
        if not self.total:
            return False
        step = -(-self.total // LINES)
        return self.done // step != self._shown_done // step

    def _count(self) -> str:
        count = f"{self.done}/{self.total}" if self.total is not None else str(self.done)
        return f"{count} {self.unit}" if self.unit else count

    def _status(self, now: float, bar: bool) -> str:
        elapsed = max(now - self.started, 1e-9)
        parts = [self._count(), f"{self.done / elapsed:.1f} {self.unit or 'items'}/s"]
        if self._detail:
            parts.append(self._detail)
        if not bar or not self.total:
            return f"{self.label}: " + ", ".join(parts)
        filled = min(BAR_WIDTH, BAR_WIDTH * self.done // self.total)
        return f"{self.label} [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] " + ", ".join(parts)

    def _finish(self, now: float, stopped: bool) -> None:
        self._closed = True
        elapsed = now - self.started
        counted = self.done > 0 or self.total is not None
        if stopped:
            text = f"stopped at {self._count()} after {elapsed:.1f} s" if counted else f"stopped after {elapsed:.1f} s"
        elif counted:
            rate = f" ({self.done / max(elapsed, 1e-9):.1f} {self.unit or 'items'}/s)" if self.done else ""
            text = f"{self._count()} in {elapsed:.1f} s{rate}"
        else:
            text = f"done in {elapsed:.1f} s"
        self._line(f"{self.label}: {text}" + (f", {self._detail}" if self._detail else ""), now)

    def _draw(self, text: str, now: float) -> None:
        """Redraw the terminal line, blanking what is left of a longer previous one (a wrapped line cannot be redrawn,
        so text is cut to the terminal's width)."""
        if self.columns:
            text = text[: self.columns - 1]
        self.stream.write("\r" + text.ljust(self._drawn))
        self.stream.flush()
        self._drawn = len(text)
        self._shown_at, self._shown_done = now, self.done

    def _line(self, text: str, now: float) -> None:
        """A finished line; on a terminal it replaces the progress line, which is drawn again below it."""
        if self.interactive:
            text, self._drawn = "\r" + text.ljust(self._drawn), 0
        self.stream.write(text + "\n")
        self.stream.flush()
        self._shown_at, self._shown_done = now, self.done
        if self.interactive and self.done and not self._closed:
            self._draw(self._status(now, bar=True), now)


def _columns(stream: TextIO) -> int:
    """The terminal's width, 0 where unknown."""
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        return 0
