"""Small real file systems for archive fault tests (need root): a tmpfs of a given size, read-only remounts and
read-only files, and filling a disk up."""

from __future__ import annotations

import os
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest


@contextmanager
def small_disk(path: Path, size_kb: int) -> Iterator[Path]:
    """A tmpfs of ``size_kb`` mounted at ``path`` (skips the test where mounting is not permitted)."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs at {path} (needs root): {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "--lazy", str(path)], check=True)


def remount_read_only(path: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True, capture_output=True)


@contextmanager
def read_only_file(path: Path) -> Iterator[Path]:
    """``path`` bound read-only onto itself: no one, root included, can write that file (its folder stays writable)."""
    subprocess.run(["mount", "--bind", str(path), str(path)], check=True, capture_output=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(path)], check=True, capture_output=True)
        yield path
    finally:
        subprocess.run(["umount", "--lazy", str(path)], check=True)


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


def fill_disk(directory: Path, leave_bytes: int = 0) -> Path:
    """Occupy the file system of ``directory`` until only ``leave_bytes`` are free; returns the filler file."""
    filler = directory / f"filler-{len(list(directory.glob('filler-*')))}.bin"
    with open(filler, "wb", buffering=0) as out:
        size = free_bytes(directory) - leave_bytes
        if size > 0:
            os.posix_fallocate(out.fileno(), 0, size)
        if leave_bytes == 0:  # the last partial pages too
            for chunk in (b"\0" * 4096, b"\0"):
                try:
                    while True:
                        out.write(chunk)
                except OSError:
                    pass
    return filler
