"""The archive's own small disk (a tmpfs), filled with a ballast file or bound read-only over itself (needs root)."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Callable


def mount_tmpfs(path: Path, size_mb: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"faults: cannot mount a {size_mb} MB tmpfs at {path} for the archive (needs root): "
                         f"{done.stderr.strip()}")


def unmount(path: Path) -> None:
    subprocess.run(["umount", "--lazy", str(path)], check=True, capture_output=True)


def bind_read_only(path: Path) -> None:
    """``path`` bound read-only over itself: new opens there fail for everyone, root too (chmod does not stop root);
    files already open keep working, as after a ``chmod`` for an unprivileged process."""
    subprocess.run(["mount", "--bind", str(path), str(path)], check=True, capture_output=True)
    subprocess.run(["mount", "-o", "remount,bind,ro", str(path)], check=True, capture_output=True)


class Ballast:
    """Files that take every free byte of a disk, topped up as the cell frees space (it deletes its images to make
    room for results): another program that keeps the disk full."""

    def __init__(self, disk: Path) -> None:
        self.disk = disk
        self.files: list[Path] = []

    def top_up(self) -> None:
        """One more ballast file with whatever space is free now."""
        path = self.disk / f"ballast-{len(self.files)}.bin"
        self.files.append(path)
        with open(path, "wb", buffering=0) as out:
            free = shutil.disk_usage(self.disk).free
            try:
                if free > 0:
                    os.posix_fallocate(out.fileno(), 0, free)
            except OSError as exc:  # the cell took some of it meanwhile: the writes below take the rest
                if exc.errno != errno.ENOSPC:
                    raise
            out.seek(0, os.SEEK_END)
            for chunk in (b"\0" * 65536, b"\0" * 4096, b"\0"):  # what fallocate's rounding left
                try:
                    while True:
                        out.write(chunk)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise

    def hold(self, done: Callable[[], bool], timeout_s: float) -> None:
        """Keep the disk full until ``done()`` (TimeoutError after ``timeout_s``)."""
        deadline = time.monotonic() + timeout_s
        while not done():
            if time.monotonic() > deadline:
                raise TimeoutError(f"still waiting after {timeout_s:.0f} s with the disk full")
            if shutil.disk_usage(self.disk).free > 0:
                self.top_up()
            time.sleep(0.05)

    def remove(self) -> None:
        for path in self.files:
            path.unlink(missing_ok=True)
        self.files = []
