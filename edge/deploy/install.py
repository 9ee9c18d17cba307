"""``okcell bundle install`` and ``rollback``: the steps that take a cell from one whole release to another.

Install, one line ``step NAME: ...`` per step on stdout:

1. ``verify``   manifest, member list, signature (required when a public key is configured), okcell version
2. ``unpack``   into ``releases/.staging-<id>-<pid>``, every file hash-checked and fsynced, renamed to ``<id>``
3. ``config``   the device's cell.yaml must load with the new release (``release:``)
4. ``engine``   build or reuse the TensorRT engine, or skip with the reason (:mod:`edge.deploy.engine`)
5. ``selftest`` golden images reproduce their decisions and scores (:mod:`edge.deploy.selftest`)
6. ``switch``   ``previous`` -> the old release, then ``current`` -> the new one (each an atomic rename)
7. ``restart``  the cell service (:mod:`edge.deploy.service`)
8. ``ready``    wait for READY=1; if it does not come, ``current`` goes back to the old release, which is
   restarted, and the install fails saying why
9. ``prune``    keep the newest ``keep`` releases (never the current or previous one)

A failure before ``switch`` leaves the old release active and removes the new folder. Killed at any point, the cell
has ``current`` on the old or the new release, each whole; the next install removes the leftovers.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from edge.deploy.bundle import ENGINE_FILE, Bundle, InstallError, ReleaseManifest, open_bundle, remove_tree
from edge.deploy.engine import prepare_engine
from edge.deploy.releases import (CONFIG_FILE, CURRENT, PREVIOUS, PUBLIC_KEY_FILE, ReleaseStore, chown_like,
                                  verify_installed)
from edge.deploy.selftest import run_selftest
from edge.deploy.service import NoService, ServiceManager
from edge.runtime.cell_config import RELEASE_CONFIG, load_cell_config
from okcell.names import BACKENDS
from okcell.schema import ConfigError, read_yaml

STEPS = ("verify", "unpack", "config", "engine", "selftest", "switch", "restart", "ready", "prune")


@dataclass
class InstallOptions:
    root: Path = Path("/")
    public_key: Path | None = None  # default: ROOT/etc/okcell/okcell.pub where it exists
    config: Path | None = None  # the device's cell.yaml; default ROOT/etc/okcell/cell.yaml
    service: ServiceManager = field(default_factory=NoService)
    ready_timeout_s: float = 300.0
    keep: int = 3

    @property
    def key(self) -> Path | None:
        default = self.root / PUBLIC_KEY_FILE
        return self.public_key or (default if default.is_file() else None)

    @property
    def device_config(self) -> Path:
        return self.config or self.root / CONFIG_FILE


class Installer:
    """Installs and rolls back releases under ``options.root``; ``say`` gets one line per step."""

    def __init__(self, options: InstallOptions, say: Callable[[str], None] = print) -> None:
        self.options = options
        self.store = ReleaseStore(options.root)
        self.say = say

    def step(self, name: str, text: str) -> None:
        self.say(f"step {name}: {text}")

    def install(self, bundle_path: Path) -> str:
        """Install ``bundle_path`` and make it the running release; returns its id. InstallError (the cell keeps or
        returns to its previous release) or ConfigError (a bad bundle, key or config) say why not."""
        self.options.service.check()
        with self.store.lock():
            for name in self.store.clean_leftovers():
                self.say(f"removed {name}, left by an installer that did not finish")
            self.step("verify", str(bundle_path))
            bundle = open_bundle(bundle_path, self.options.key)
            bundle.check_okcell_version()
            manifest = bundle.manifest
            release_id = manifest.release_id
            self.say(f"  release {release_id}: {manifest.name} {manifest.version}, {self._signature(bundle)}")
            if self.store.current == release_id:
                self.say(f"release {release_id} is already the current release; nothing to do")
                return release_id
            self.step("unpack", str(self.store.path(release_id)))
            self._unpack(bundle)
            try:
                self._check(release_id, manifest)
            except (InstallError, ConfigError):
                self._discard(release_id)
                raise
            for note in self.store.link_state_folders():
                self.say(f"  note: {note}")
            old_current, old_previous = self.store.current, self.store.previous
            reason = self._switch(release_id, old_current)
            if reason is not None:
                self._return_to(old_current, old_previous, release_id, reason)
            self.step("prune", f"keep {self.options.keep} release(s)")
            for removed in self.store.prune(self.options.keep):
                self.say(f"  removed release {removed}")
            self.say(f"installed release {release_id} ({manifest.name} {manifest.version}); it is the current release")
            return release_id

    def rollback(self, to: str | None = None) -> str:
        """Switch ``current`` to ``to`` (default: the previous release), restart and wait for READY; if that fails,
        switch back. Returns the id now current."""
        self.options.service.check()
        with self.store.lock():
            current = self.store.current
            target = to or self.store.previous
            if target is None:
                raise ConfigError(f"{self.store.folder}: no previous release to roll back to")
            if target == current:
                raise ConfigError(f"release {target} is already the current release")
            if not self.store.path(target).is_dir():
                raise ConfigError(f"release {target} is not installed in {self.store.folder} (`okcell bundle list` "
                                  "shows what is)")
            verify_installed(self.store.path(target))
            reason = self._switch(target, current)
            if reason is not None:
                self.store.point(CURRENT, current)
                self.store.point(PREVIOUS, target)
                again = self._restart() if current is not None else None
                raise InstallError(f"rollback to {target} failed: {reason}; switched back to {current or 'no release'}"
                                   + (f", which is not READY either: {again}" if again else ""))
            self.say(f"release {target} is the current release")
            return target

    def _signature(self, bundle: Bundle) -> str:
        if bundle.signature_checked:
            return f"signature by key {bundle.signer} verified"
        if bundle.signer is not None:
            return f"signed by key {bundle.signer}, not checked (no public key configured)"
        return "unsigned (no public key configured, so unsigned bundles are accepted)"

    def _unpack(self, bundle: Bundle) -> None:
        target = self.store.path(bundle.manifest.release_id)
        if target.is_dir():
            try:
                verify_installed(target)
                self.say(f"  {target} already holds this release, intact: reused")
                return
            except ConfigError as exc:
                self.say(f"  {target} is damaged ({exc}): unpacked again")
                remove_tree(target)
        free = shutil.disk_usage(self.store.folder).free
        if free < bundle.total_bytes:
            raise InstallError(f"disk full: release {bundle.manifest.release_id} needs {bundle.total_bytes / 1e6:.1f} MB "
                               f"in {self.store.folder}, {free / 1e6:.1f} MB are free; free space and install again")
        staging = self.store.staging(bundle.manifest.release_id)
        try:
            bundle.extract(staging)
            chown_like(staging, self.store.state)
            staging.rename(target)
        except BaseException:
            remove_tree(staging)
            raise

    def _check(self, release_id: str, manifest: ReleaseManifest) -> None:
        """config, engine and selftest steps; the release is complete and not yet switched on."""
        release = self.store.path(release_id)
        device = self.options.device_config
        if device.is_file():
            self.step("config", f"{device} with release {release_id}")
            try:
                load_cell_config(device, release=release)
            except ConfigError as exc:
                raise InstallError(f"the cell configuration does not accept release {release_id}: {exc}") from None
        else:
            self.step("config", f"skipped: no device configuration at {device}")
        backend, recipe_key = release_settings(release)
        self.step("engine", f"backend {backend}")
        others = [r.path for r in self.store.releases() if r.release_id != release_id]
        engine = prepare_engine(release, manifest, backend, others, self.store.state / "timing.cache")
        self.say(f"  engine: {engine.note}")
        self.step("selftest", f"{len(manifest.golden)} golden image(s), tolerance {manifest.tolerance:g}")
        outcomes = run_selftest(release, manifest, backend, release / ENGINE_FILE, recipe_key)
        for outcome in outcomes:
            self.say(f"  {outcome.image.file}: {outcome.decision} {outcome.score:.4f} "
                     f"(expected {outcome.image.decision} {outcome.image.score:.4f})")
        self.store.write_record(release_id, {"engine": engine.note, "selftest": f"{len(outcomes)} golden image(s) passed"})

    def _switch(self, target: str, current: str | None) -> str | None:
        """Make ``target`` current (``current`` becomes previous) and restart; the reason it is not READY, or None."""
        self.step("switch", f"current -> {target} (was {current or 'none'})")
        if current is not None:
            self.store.point(PREVIOUS, current)
        self.store.point(CURRENT, target)
        return self._restart()

    def _restart(self) -> str | None:
        """restart and ready steps; None when READY=1 came (or no service is managed), else why not."""
        service = self.options.service
        if isinstance(service, NoService):
            self.step("restart", "skipped (--service none): the cell runs the new release from its next start")
            self.step("ready", "skipped (--service none): no READY check")
            return None
        self.step("restart", service.name)
        try:
            service.restart()
            self.step("ready", f"waiting up to {self.options.ready_timeout_s:g} s for READY=1")
            return service.wait_ready(self.options.ready_timeout_s)
        except (InstallError, OSError, subprocess.SubprocessError) as exc:  # counts as not READY: switch back
            return f"{service.name} restart failed: {exc}"

    def _return_to(self, old_current: str | None, old_previous: str | None, failed: str, reason: str) -> None:
        """The new release did not become READY: switch back, restart the old one, remove the new one, fail."""
        self.step("rollback", f"current -> {old_current or 'none'}: {reason}")
        self.store.point(CURRENT, old_current)
        self.store.point(PREVIOUS, old_previous)
        again = self._restart() if old_current is not None else None
        self._discard(failed)
        if old_current is None:
            raise InstallError(f"release {failed} not READY: {reason}; there was no previous release, so no release "
                               "is active")
        raise InstallError(f"release {failed} not READY: {reason}; switched back to release {old_current}"
                           + (f", which is not READY either: {again}" if again else ", which is READY"))

    def _discard(self, release_id: str) -> None:
        """Remove a release that failed, unless a link still names it (a re-installed previous release)."""
        if release_id not in (self.store.current, self.store.previous):
            remove_tree(self.store.path(release_id))


def release_settings(release: Path) -> tuple[str, Path | None]:
    """The backend and the recipe key a release's cell.yaml names (what the cell will use)."""
    path = release / RELEASE_CONFIG
    data = read_yaml(path)
    model = data.get("model", {}) if isinstance(data, dict) else None
    if not isinstance(model, dict) or model.get("backend", "auto") not in BACKENDS:
        raise ConfigError(f"{path}: model.backend must be one of {', '.join(BACKENDS)}, found {model!r}")
    key = data.get("recipe_public_key")
    return str(model.get("backend", "auto")), (release / key if isinstance(key, str) else None)
