"""Resident memory in MiB (Linux reports kB) of this process, or of another one by pid: the one place okcell reads it."""

from __future__ import annotations

import resource
from pathlib import Path

STATUS = Path("/proc/self/status")


def _status_path(pid: int | None) -> Path:
    return STATUS if pid is None else Path(f"/proc/{pid}/status")


def _status_mb(field: str, pid: int | None = None) -> float | None:
    """A ``/proc/<pid>/status`` field in MiB (this process without ``pid``), None where it cannot be read."""
    try:
        for line in _status_path(pid).read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def rss_mb(pid: int | None = None) -> float:
    """Resident set size now (VmRSS) of this process, or of process ``pid`` (RuntimeError if it is gone)."""
    value = _status_mb("VmRSS", pid)
    if value is None:
        raise RuntimeError(f"no VmRSS in {_status_path(pid)}")
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
