"""Resident memory of this process in MiB (Linux reports kB), the one place okcell reads it."""

from __future__ import annotations

import resource
from pathlib import Path

STATUS = Path("/proc/self/status")


def _status_mb(field: str) -> float | None:
    """A ``/proc/self/status`` field in MiB, None where it cannot be read."""
    try:
        for line in STATUS.read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def rss_mb() -> float:
    """Resident set size now (VmRSS)."""
    value = _status_mb("VmRSS")
    if value is None:
        raise RuntimeError(f"no VmRSS in {STATUS}")
    return value


def peak_rss_mb() -> float:
    """Peak resident set size since the last ``reset_peak_rss`` (VmHWM), else since the process started."""
    value = _status_mb("VmHWM")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0 if value is None else value


def reset_peak_rss() -> bool:
    """Reset the kernel's resident-set high-water mark to the current RSS (Linux >= 4.0); False if not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False
