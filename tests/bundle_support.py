"""Release-bundle tests: variants of the staged release (fixture_bundle) packed into bundles, a cell root with a
device cell.yaml, and the real `okcell bundle` command run as a child process (killed at a given step)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any, Callable

import yaml

from edge.deploy.bundle import MANIFEST_FILE, RELEASE_CONFIG
from edge.deploy.create import pack
from edge.deploy.releases import CONFIG_FILE, CURRENT, STATE_DIR, ReleaseStore, verify_installed

from fixture_bundle import Staged

REPO = Path(__file__).resolve().parent.parent


def make_bundle(staged: Staged, out: Path, version: str, sign_key: Path | None = None,
                edit_config: Callable[[dict[str, Any]], None] | None = None,
                edit_draft: Callable[[dict[str, Any]], None] | None = None) -> Path:
    """Pack a variant of ``staged`` into ``out`` (files hard-linked; edited files are replaced, never changed)."""
    folder = out.with_suffix(".staging")
    shutil.copytree(staged.folder, folder, copy_function=os.link)
    draft = json.loads(json.dumps(staged.draft))
    draft["version"] = version
    if edit_config is not None:
        config = yaml.safe_load((folder / RELEASE_CONFIG).read_text())
        edit_config(config)
        (folder / RELEASE_CONFIG).unlink()
        (folder / RELEASE_CONFIG).write_text(yaml.safe_dump(config))
    if edit_draft is not None:
        edit_draft(draft)
    pack(folder, draft, out, sign_key)
    shutil.rmtree(folder)
    return out


def make_root(root: Path) -> Path:
    """A cell's file system root with a device cell.yaml that runs the current release."""
    config = root / CONFIG_FILE
    config.parent.mkdir(parents=True, exist_ok=True)
    state = root / STATE_DIR
    config.write_text(yaml.safe_dump({"release": str(state / "releases" / CURRENT), "name": "test-cell",
                                      "state_dir": str(state)}))
    return root


def copy_root(installed: Path, copy: Path) -> Path:
    """Another cell: a copy of the cell root ``installed`` (its releases and links) with a cell.yaml of its own."""
    shutil.copytree(installed, copy, symlinks=True)
    (copy / CONFIG_FILE).unlink()
    return make_root(copy)  # its cell.yaml names this copy's releases


def release_id(bundle: Path) -> str:
    """The release id in a bundle's manifest."""
    with tarfile.open(bundle) as archive:
        handle = archive.extractfile(MANIFEST_FILE)
        assert handle is not None
        return str(json.loads(handle.read())["release_id"])


def okcell(*args: str) -> list[str]:
    return [sys.executable, "-m", "edge.cli.main", *args]


def child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


def bundle_command(*args: str, timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
    """``okcell bundle ARGS`` to completion (stdout and stderr captured)."""
    return subprocess.run(okcell("bundle", *args), capture_output=True, text=True, env=child_env(), timeout=timeout_s)


def install(root: Path, bundle: Path, *extra: str, service: str = "trial") -> subprocess.CompletedProcess[str]:
    return bundle_command("install", str(bundle), "--root", str(root), "--service", service, "--ready-timeout", "120",
                          *extra)


def install_killed_at(root: Path, bundle: Path, step: str) -> list[str]:
    """Run an install and SIGKILL it as soon as it announces ``step``; returns the lines it printed."""
    return killed_at(okcell("bundle", "install", str(bundle), "--root", str(root), "--service", "trial",
                            "--ready-timeout", "120"), step)


def killed_at(command: list[str], step: str) -> list[str]:
    """Run ``command`` (an okcell command that prints ``step NAME: ...`` lines) and SIGKILL it as soon as it
    announces ``step``; returns the lines it printed."""
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=child_env())
    assert child.stdout is not None
    lines = []
    for line in child.stdout:
        lines.append(line.rstrip("\n"))
        if line.startswith(f"step {step}:"):
            child.send_signal(signal.SIGKILL)
            break
    child.wait(timeout=60)
    child.stdout.close()
    assert child.returncode == -signal.SIGKILL, f"the command finished before step {step}:\n" + "\n".join(lines)
    return lines


def active_release(root: Path) -> str | None:
    """The release ``current`` names, after checking that it is whole (every file matches its manifest)."""
    store = ReleaseStore(root)
    current = store.current
    if current is not None:
        manifest = verify_installed(store.path(current))
        assert manifest.release_id == current and (store.path(current) / MANIFEST_FILE).is_file()
    return current
