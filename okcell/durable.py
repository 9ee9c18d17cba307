"""Changes that survive a power cut: fsync of folders, symbolic links switched by an atomic rename."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(directory: Path) -> None:
    """fsync one folder, so that entries created, renamed or removed in it are on disk."""
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def fsync_tree(directory: Path) -> None:
    """fsync every folder under ``directory`` (and it), so that renames and new entries survive a power cut."""
    for folder in [directory, *(p for p in directory.rglob("*") if p.is_dir() and not p.is_symlink())]:
        fsync_dir(folder)


def point_link(path: Path, target: str | None) -> None:
    """Make the symbolic link ``path`` name ``target`` (None: remove it), atomically (a new link under a temporary
    name renamed over the old one) and durably. At any instant ``path`` names the old or the new target."""
    if target is None:
        path.unlink(missing_ok=True)
    else:
        temporary = path.with_name(f".link-{path.name}-{os.getpid()}")
        temporary.unlink(missing_ok=True)
        os.symlink(target, temporary)
        os.replace(temporary, path)
    fsync_dir(path.parent)


def copy_tree_durably(source: Path, destination: Path) -> None:
    """Copy the files of ``source`` into the existing folder ``destination`` and fsync every file and folder."""
    for path in sorted(source.rglob("*")):
        target = destination / path.relative_to(source)
        if path.is_dir():
            target.mkdir(exist_ok=True)
            continue
        with open(path, "rb") as reader, open(target, "wb") as writer:
            for chunk in iter(lambda: reader.read(1 << 20), b""):
                writer.write(chunk)
            writer.flush()
            os.fsync(writer.fileno())
    fsync_tree(destination)
