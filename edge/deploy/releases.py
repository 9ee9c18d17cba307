"""The releases on one cell, under ``ROOT/var/lib/okcell/releases/``.

``<release_id>/`` holds an unpacked bundle (plus the engine built for this GPU and ``installed.json``); ``current``
and ``previous`` are relative symbolic links to release folders. A link is switched by making a new link under a
temporary name and renaming it over the old one, then fsyncing the folder: at any instant, and after a power cut,
``current`` names one whole release (or none before the first install). Folders are renamed into place only when
complete; leftovers of a killed installer (``.staging-*``, ``.link-*``) are never named by a link and are removed by
the next install. ``ROOT/var/lib/okcell/models`` and ``recipes`` are links through ``current``
(``releases/current/model``, ``releases/current/recipes``), the paths systemd/okcell-engine.service uses.
"""

from __future__ import annotations

import fcntl
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from edge.deploy.bundle import MANIFEST_FILE, ReleaseManifest, remove_tree
from okcell.durable import fsync_dir, point_link
from okcell.schema import ConfigError, read_json, sha256_file

STATE_DIR = Path("var/lib/okcell")
CONFIG_FILE = Path("etc/okcell/cell.yaml")
PUBLIC_KEY_FILE = Path("etc/okcell/okcell.pub")
CURRENT, PREVIOUS = "current", "previous"
INSTALL_RECORD = "installed.json"
STATE_LINKS = {"models": f"releases/{CURRENT}/model", "recipes": f"releases/{CURRENT}/recipes"}
_LEFTOVER_PREFIXES = (".staging-", ".link-", ".retired-")


@dataclass(frozen=True)
class InstalledRelease:
    release_id: str
    path: Path
    manifest: ReleaseManifest
    record: dict[str, Any]  # installed.json: installed_at, engine, selftest ({} until the self-test passed)


class ReleaseStore:
    """The release folders and links under ``root`` (``/`` on a cell, a temporary folder in tests)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.state = root / STATE_DIR
        self.folder = self.state / "releases"

    def path(self, release_id: str) -> Path:
        return self.folder / release_id

    def target(self, link: str) -> str | None:
        """The release id ``link`` (current / previous) names, or None."""
        path = self.folder / link
        return os.readlink(path) if path.is_symlink() else None

    @property
    def current(self) -> str | None:
        return self.target(CURRENT)

    @property
    def previous(self) -> str | None:
        return self.target(PREVIOUS)

    def point(self, link: str, release_id: str | None) -> None:
        """Make ``link`` name ``release_id`` (None: remove it), atomically and durably."""
        if release_id is not None and not self.path(release_id).is_dir():
            raise ConfigError(f"{self.path(release_id)}: release not installed")
        point_link(self.folder / link, release_id)

    @contextmanager
    def lock(self) -> Iterator[None]:
        """One installer or rollback at a time (released by the kernel if the holder dies)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / ".lock", "w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ConfigError(f"{self.folder}: another okcell bundle install, rollback or recipe push is running") from None
            yield

    def staging(self, release_id: str) -> Path:
        return self.folder / f".staging-{release_id}-{os.getpid()}"

    def clean_leftovers(self) -> list[str]:
        """Remove what killed installers left behind (never a release a link names); returns their names."""
        removed = []
        for path in sorted(self.folder.iterdir()) if self.folder.is_dir() else []:
            if path.name.startswith(_LEFTOVER_PREFIXES):
                remove_tree(path)
                removed.append(path.name)
        return removed

    def releases(self) -> list[InstalledRelease]:
        """Installed releases, oldest install first (folders without a readable manifest are skipped)."""
        found = []
        for path in self.folder.iterdir() if self.folder.is_dir() else []:
            if path.is_symlink() or not path.is_dir() or path.name.startswith("."):
                continue
            try:
                manifest = load_manifest(path)
            except ConfigError:
                continue
            record = read_json(path / INSTALL_RECORD) if (path / INSTALL_RECORD).is_file() else {}
            found.append(InstalledRelease(path.name, path, manifest, record if isinstance(record, dict) else {}))
        return sorted(found, key=lambda r: (str(r.record.get("installed_at", "")), r.release_id))

    def write_record(self, release_id: str, record: dict[str, Any]) -> None:
        """``installed.json`` of a release, written whole (temporary file + rename)."""
        path = self.path(release_id) / INSTALL_RECORD
        temporary = path.with_name(f".{INSTALL_RECORD}.{os.getpid()}")
        temporary.write_text(json.dumps({"installed_at": now(), **record}, indent=2) + "\n")
        os.replace(temporary, path)
        fsync_dir(path.parent)

    def prune(self, keep: int) -> list[str]:
        """Remove the oldest releases beyond ``keep``, never the current or previous one; returns their ids."""
        linked = {self.current, self.previous}
        releases = self.releases()
        removable = [r for r in releases if r.release_id not in linked]
        excess = max(0, len(releases) - keep)
        removed = []
        for release in removable[:excess]:
            retired = self.folder / f".retired-{release.release_id}"
            os.replace(release.path, retired)  # a release folder is whole or gone
            remove_tree(retired)
            removed.append(release.release_id)
        if removed:
            fsync_dir(self.folder)
        return removed

    def link_state_folders(self) -> list[str]:
        """Make ``models`` and ``recipes`` in the state folder links through ``current`` where they are missing or
        empty folders (as the package makes them); returns a note for each one left alone because it holds files."""
        notes = []
        for name, target in STATE_LINKS.items():
            path = self.state / name
            if path.is_symlink() and os.readlink(path) == target:
                continue
            if path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
                path.rmdir()
            if path.exists() or path.is_symlink():
                notes.append(f"{path} is not a link to {target}; left as it is (the engine unit builds from "
                             f"{path}/model.onnx)")
                continue
            os.symlink(target, path)
        fsync_dir(self.state)
        return notes


def load_manifest(release: Path) -> ReleaseManifest:
    return ReleaseManifest.from_json(read_json(release / MANIFEST_FILE), str(release / MANIFEST_FILE))


def verify_installed(release: Path) -> ReleaseManifest:
    """Check every file of an installed release against its manifest; ConfigError naming the first that differs."""
    manifest = load_manifest(release)
    for name, entry in sorted(manifest.files.items()):
        path = release / name
        if not path.is_file():
            raise ConfigError(f"{path}: missing from release {manifest.release_id}")
        if path.stat().st_size != entry.size or sha256_file(path) != entry.sha256:
            raise ConfigError(f"{path}: changed since release {manifest.release_id} was installed")
    return manifest


def chown_like(tree: Path, reference: Path) -> None:
    """Give every file under ``tree`` the owner of ``reference`` (the state folder: user okcell, so that the engine
    unit can write the engine beside the model); only when running as root and the owners differ."""
    info = reference.stat()
    if os.geteuid() != 0 or (info.st_uid, info.st_gid) == (0, 0):
        return
    for path in [tree, *tree.rglob("*")]:
        os.chown(path, info.st_uid, info.st_gid, follow_symlinks=False)


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
