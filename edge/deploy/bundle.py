"""The release bundle: one uncompressed tar archive, its manifest, and reading it back with every check.

Inside the archive (and inside an installed release folder ``/var/lib/okcell/releases/<release_id>/``)::

    release.json          the manifest (:class:`ReleaseManifest`): id, name, version, okcell versions, recipes,
                          golden self-test images with their expected decisions and scores, sha256 of every file
    release.json.sig      optional ed25519 signature over release.json (okcell.signing, ``okcell keygen``)
    cell.yaml             the release's cell configuration; model and recipe paths relative to the release folder
    model/model.onnx      the model and its sidecar model/model.json
    recipes/<name>/...    one folder per recipe
    keys/recipe.pub       optional: the key recipes must be signed with (cell.yaml ``recipe_public_key``)
    selftest/<recipe>/... golden images

``release.json`` is the first member, its signature the second; every other member is a plain file listed in the
manifest with its sha256 and size, and every listed file is there. A bundle that breaks any of this is refused
with a ConfigError naming the bundle and the member.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tarfile
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

from edge.runtime.cell_config import RELEASE_CONFIG
from edge.runtime.golden import GoldenImage
from okcell import __version__
from okcell.durable import fsync_tree
from okcell.schema import ConfigError, parse_json, require_keys, typed
from okcell.signing import load_public_key, signer_key_id, verify_signature

BUNDLE_FORMAT = 1
MANIFEST_FILE = "release.json"
SIGNATURE_FILE = MANIFEST_FILE + ".sig"
MODEL_FILE = "model/model.onnx"
MODEL_SIDECAR = "model/model.json"
ENGINE_FILE = "model/model.engine"  # built on the cell; not part of the bundle
RECIPES_DIR = "recipes"
SELFTEST_DIR = "selftest"
RECIPE_KEY_FILE = "keys/recipe.pub"
SUFFIX = ".tar"
_CHUNK = 1 << 20


class InstallError(RuntimeError):
    """An install or rollback step failed; the message says which and why (the cell keeps a whole release)."""


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    size: int


@dataclass(frozen=True)
class ReleaseManifest:
    """``release.json``: what a release holds and what it needs."""

    release_id: str
    name: str
    version: str
    created: str
    okcell_version: str  # the okcell that made the bundle
    requires_okcell: str  # the oldest okcell that may install it
    recipes: dict[str, str]  # name -> folder inside the release
    active_recipe: str
    engine_precision: str  # precision of the TensorRT engine built on the cell
    tolerance: float  # self-test: largest allowed |score - expected score|
    golden: tuple[GoldenImage, ...]
    files: dict[str, FileEntry] = field(default_factory=dict)
    format_version: int = BUNDLE_FORMAT

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["golden"] = [asdict(image) for image in self.golden]
        return data

    @classmethod
    def from_json(cls, data: Any, source: str) -> "ReleaseManifest":
        """Validate a parsed ``release.json``; ConfigError naming ``source`` and the field."""
        fields = {"release_id": str, "name": str, "version": str, "created": str, "okcell_version": str,
                  "requires_okcell": str, "recipes": dict, "active_recipe": str, "engine_precision": str,
                  "tolerance": float, "golden": list, "files": dict, "format_version": int}
        require_keys(data, set(fields), set(), source)
        for key, kind in fields.items():
            typed(data, key, (int, float) if kind is float else kind, source)
        if data["format_version"] != BUNDLE_FORMAT:
            raise ConfigError(f"{source}: field 'format_version' is {data['format_version']}, this okcell reads "
                              f"bundle format {BUNDLE_FORMAT}; install a matching okcell")
        parse_version(data["requires_okcell"], f"{source}: field 'requires_okcell'")
        if data["active_recipe"] not in data["recipes"]:
            raise ConfigError(f"{source}: field 'active_recipe' {data['active_recipe']!r} is not one of the recipes "
                              f"{sorted(data['recipes'])}")
        if not data["tolerance"] >= 0:
            raise ConfigError(f"{source}: field 'tolerance' must be >= 0, found {data['tolerance']!r}")
        files = {}
        for name, entry in data["files"].items():
            where = f"{source} [files.{name}]"
            require_keys(entry, {"sha256", "size"}, set(), where)
            files[check_member_name(name, source)] = FileEntry(typed(entry, "sha256", str, where), typed(entry, "size", int, where))
        golden = []
        for index, entry in enumerate(data["golden"]):
            where = f"{source} [golden[{index}]]"
            image = GoldenImage.from_json(entry, where)
            if image.recipe not in data["recipes"] or image.file not in files:
                raise ConfigError(f"{where}: names recipe {image.recipe!r} / file {image.file!r}, which the "
                                  "manifest does not list")
            golden.append(image)
        for name, folder in data["recipes"].items():
            if f"{folder}/manifest.json" not in files:
                raise ConfigError(f"{source}: recipe {name!r}: {folder}/manifest.json is not in the manifest's files")
        for required in (MODEL_FILE, MODEL_SIDECAR, RELEASE_CONFIG):
            if required not in files:
                raise ConfigError(f"{source}: {required} is not in the manifest's files; every release has one")
        if compute_release_id(data) != data["release_id"]:
            raise ConfigError(f"{source}: field 'release_id' {data['release_id']!r} does not match the manifest's "
                              f"content ({compute_release_id(data)}): release.json was edited")
        return cls(**{**data, "files": files, "golden": tuple(golden), "tolerance": float(data["tolerance"])})


def compute_release_id(data: dict[str, Any]) -> str:
    """12 hex digits of sha256 over the canonical manifest without ``release_id`` and ``created``."""
    content = {key: value for key, value in data.items() if key not in ("release_id", "created")}
    return hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:12]


def parse_version(text: str, where: str) -> tuple[int, ...]:
    """``"0.1.0"`` -> ``(0, 1, 0)``; ConfigError naming ``where`` for anything but dotted numbers."""
    parts = text.split(".")
    if not text or not all(part.isdigit() for part in parts):
        raise ConfigError(f"{where}: version must be dotted numbers such as 0.1.0, found {text!r}")
    return tuple(int(part) for part in parts)


def check_member_name(name: str, source: str) -> str:
    """A relative POSIX path with no ``..``, ``.`` or empty parts (what a bundle may hold)."""
    parts = PurePosixPath(name).parts
    if not parts or name.startswith("/") or "\\" in name or any(p in ("..", ".") for p in parts) or str(PurePosixPath(name)) != name:
        raise ConfigError(f"{source}: {name!r} is not a plain relative path inside the release")
    return name


@dataclass
class Bundle:
    """An opened bundle whose manifest (and signature, when a key was given) has been checked."""

    path: Path
    manifest: ReleaseManifest
    signer: str | None  # key id named by release.json.sig, None if unsigned
    signature_checked: bool
    manifest_bytes: bytes
    signature_bytes: bytes | None

    @property
    def total_bytes(self) -> int:
        return sum(entry.size for entry in self.manifest.files.values())

    def check_okcell_version(self, installed: str = __version__) -> None:
        """Refuse a bundle made for a newer okcell than ``installed``."""
        needed = self.manifest.requires_okcell
        if parse_version(installed, "installed okcell") < parse_version(needed, f"{self.path}: requires_okcell"):
            raise ConfigError(f"{self.path}: release {self.manifest.release_id} needs okcell >= {needed}, this machine "
                              f"has okcell {installed}; upgrade the okcell package first")

    def extract(self, destination: Path) -> None:
        """Write every listed file under ``destination`` (which must not exist yet), checking sha256 and size, and
        fsync them. ConfigError for a changed member; InstallError when the disk is full."""
        destination.mkdir(parents=True)
        try:
            with tarfile.open(self.path, "r:") as archive:
                for info, name, entry in self._members(archive):
                    target = destination / name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with open(target, "wb") as out:
                        digest = _copy(archive, info, out)
                        out.flush()
                        os.fsync(out.fileno())
                    self._check(name, entry, digest)
            (destination / MANIFEST_FILE).write_bytes(self.manifest_bytes)
            if self.signature_bytes is not None:
                (destination / SIGNATURE_FILE).write_bytes(self.signature_bytes)
            fsync_tree(destination)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise InstallError(f"disk full while unpacking {self.path} into {destination} ({exc.strerror}): "
                                   f"the release needs {self.total_bytes / 1e6:.1f} MB; free space and install again") from None
            raise

    def verify_files(self) -> None:
        """Read every listed member and check its sha256 and size (``okcell bundle inspect``)."""
        with tarfile.open(self.path, "r:") as archive:
            for info, name, entry in self._members(archive):
                self._check(name, entry, _copy(archive, info, None))

    def _members(self, archive: tarfile.TarFile) -> Iterator[tuple[tarfile.TarInfo, str, FileEntry]]:
        for info in archive:
            if info.name in (MANIFEST_FILE, SIGNATURE_FILE):
                continue
            if not info.isfile() or info.name not in self.manifest.files:  # the file was replaced since it was opened
                raise ConfigError(f"{self.path}: member {info.name!r} is not a file listed in {MANIFEST_FILE}")
            yield info, info.name, self.manifest.files[info.name]

    def _check(self, name: str, entry: FileEntry, digest: tuple[str, int]) -> None:
        sha256, size = digest
        if (sha256, size) != (entry.sha256, entry.size):
            raise ConfigError(f"{self.path}: {name}: sha256 {sha256[:12]}… ({size} bytes) does not match the manifest "
                              f"({entry.sha256[:12]}…, {entry.size} bytes): the bundle was changed after it was made "
                              "or damaged in transfer")


def open_bundle(path: Path, public_key: Path | None = None) -> Bundle:
    """Open ``path``: read and validate the manifest, check the member list against it, and with ``public_key``
    require a valid signature by that key. File contents are checked by ``extract`` / ``verify_files``."""
    if not path.is_file():
        raise ConfigError(f"{path}: bundle not found (make one with `okcell bundle create`)")
    try:
        archive = tarfile.open(path, "r:")
    except tarfile.TarError as exc:
        raise ConfigError(f"{path}: not a release bundle (an uncompressed tar archive): {exc}") from None
    with archive:
        members = archive.getmembers()
        if not members or members[0].name != MANIFEST_FILE or not members[0].isfile():
            raise ConfigError(f"{path}: not a release bundle: its first member must be {MANIFEST_FILE}")
        manifest_bytes = _read(archive, members[0])
        signature = next((m for m in members[1:2] if m.name == SIGNATURE_FILE), None)
        signature_bytes = _read(archive, signature) if signature is not None and signature.isfile() else None
        manifest = ReleaseManifest.from_json(parse_json(manifest_bytes, Path(f"{path}: {MANIFEST_FILE}")),
                                             f"{path}: {MANIFEST_FILE}")
        _check_members(path, manifest, [m for m in members[1:] if m is not signature])
    signer = signer_key_id(signature_bytes) if signature_bytes is not None else None
    if public_key is not None:
        signer = verify_signature(manifest_bytes, signature_bytes, load_public_key(public_key),
                                  f"{path}: {MANIFEST_FILE}", f"{path}: {SIGNATURE_FILE}", SIGNATURE_FILE)
    return Bundle(path, manifest, signer, public_key is not None, manifest_bytes, signature_bytes)


def _check_members(path: Path, manifest: ReleaseManifest, members: list[tarfile.TarInfo]) -> None:
    seen = set()
    for info in members:
        if not info.isfile():
            raise ConfigError(f"{path}: member {info.name!r} is not a plain file (bundles hold only files)")
        name = check_member_name(info.name, str(path))
        if name not in manifest.files or name in seen:
            raise ConfigError(f"{path}: member {name!r} is not listed in {MANIFEST_FILE} (or listed twice): the "
                              "bundle was changed after it was made")
        if info.size != manifest.files[name].size:
            raise ConfigError(f"{path}: member {name!r} is {info.size} bytes, the manifest says "
                              f"{manifest.files[name].size}: the bundle was changed after it was made")
        seen.add(name)
    missing = sorted(set(manifest.files) - seen)
    if missing:
        raise ConfigError(f"{path}: {', '.join(missing)} listed in {MANIFEST_FILE} but not in the bundle")


def _read(archive: tarfile.TarFile, info: tarfile.TarInfo) -> bytes:
    handle = archive.extractfile(info)
    assert handle is not None  # a regular file
    return handle.read()


def _copy(archive: tarfile.TarFile, info: tarfile.TarInfo, out: Any) -> tuple[str, int]:
    """Stream one member into ``out`` (or nowhere); returns (sha256, size)."""
    handle = archive.extractfile(info)
    assert handle is not None
    digest, size = hashlib.sha256(), 0
    for chunk in iter(lambda: handle.read(_CHUNK), b""):
        digest.update(chunk)
        size += len(chunk)
        if out is not None:
            out.write(chunk)
    return digest.hexdigest(), size


def write_bundle(staging: Path, manifest: ReleaseManifest, out: Path) -> None:
    """Pack ``staging`` (which holds release.json, its optional signature and every listed file) into ``out``:
    written beside it and renamed into place when complete."""
    partial = Path(tempfile.mkstemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent)[1])
    try:
        with tarfile.open(partial, "w:", format=tarfile.PAX_FORMAT) as archive:
            for name in (MANIFEST_FILE, SIGNATURE_FILE, *sorted(manifest.files)):
                if (staging / name).is_file():
                    archive.add(staging / name, arcname=name, recursive=False, filter=_plain)
        os.chmod(partial, 0o644)
        os.replace(partial, out)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def _plain(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """Members carry no owner names or ids from the machine that made the bundle."""
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mode = 0o644
    return info


def remove_tree(path: Path) -> None:
    """Remove a folder (or a stray file or link) if it is there."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)
