"""Fleet rollout with Ansible (deploy/ansible): the real `ansible-playbook` rolls signed bundles out to three cells on
this machine — cell roots in temporary folders, reached with ``ansible_connection: local``, each restarted by
``--service trial`` (a real `okcell run` that must send READY=1). A good release reaches every cell batch by batch;
a cell that fails its health gate stays on (or is switched back to) its previous release and no later batch is
touched. `ansible-lint` checks deploy/ansible."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bundle_support import REPO, active_release, copy_root, install, make_bundle, make_root, release_id
from edge.deploy.releases import CONFIG_FILE, STATE_DIR, ReleaseStore
from fixture_bundle import Staged
from okcell import __version__
from okcell.signing import generate_keys

PLAYBOOK_DIR = REPO / "deploy" / "ansible"
CELLS = ("cell-a", "cell-b", "cell-c")  # the inventory's order: the order of the batches
INSTALL_TASK = "TASK [okcell : Install the bundle (okcell bundle install)]"


def ansible_tool(name: str) -> str:
    """An Ansible command of this Python's environment (the `deploy` extra of setup.cfg)."""
    path = Path(sys.executable).parent / name
    if not path.is_file():
        pytest.fail(f"{path} not found: install the deploy extra (pip install -e '.[deploy]', as `make venv` does)")
    return str(path)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return generate_keys(tmp_path_factory.mktemp("keys") / "line1")


@pytest.fixture(scope="module")
def bundles(staged: Staged, keys: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Release 1 (on the cells), release 2 (rolled out), and release 3 whose first golden score is off by 0.1."""
    def shift(draft: dict) -> None:
        draft["golden"][0]["score"] += 0.1  # what another numeric path on a cell would give

    folder = tmp_path_factory.mktemp("bundles")
    made = {version: make_bundle(staged, folder / f"line1-{version}.tar", version, sign_key=keys[0])
            for version in ("1", "2")}
    made["3"] = make_bundle(staged, folder / "line1-3.tar", "3", sign_key=keys[0], edit_draft=shift)
    return made


@pytest.fixture(scope="module")
def installed(bundles: dict[str, Path], keys: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cell root running release 1 (each test copies it once per cell)."""
    root = make_root(tmp_path_factory.mktemp("installed") / "root")
    done = install(root, bundles["1"], "--public-key", str(keys[1]))
    assert done.returncode == 0, done.stdout + done.stderr
    return root


@pytest.fixture()
def cells(installed: Path, keys: tuple[Path, Path], tmp_path: Path) -> dict[str, Path]:
    """Three cells on release 1, and the inventory naming them (tmp_path/inventory.yml)."""
    roots = {name: copy_root(installed, tmp_path / name) for name in CELLS}
    inventory = {"okcell_cells": {
        "hosts": {name: {"okcell_root": str(root)} for name, root in roots.items()},
        "vars": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable,
                 "okcell_command": [sys.executable, "-m", "edge.cli.main"], "okcell_python": sys.executable,
                 "okcell_environment": {"PYTHONPATH": str(REPO)}, "okcell_service": "trial",
                 "okcell_ready_timeout": 120, "okcell_public_key": str(keys[1]),
                 "okcell_report_dir": str(tmp_path / "reports")}}}
    (tmp_path / "inventory.yml").write_text(yaml.safe_dump(inventory))
    return roots


def rollout(tmp_path: Path, bundle: Path, batch_size: int) -> subprocess.CompletedProcess[str]:
    """`ansible-playbook rollout.yml` from deploy/ansible (its ansible.cfg) over the cells' inventory."""
    env = {**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-local"),
           "ANSIBLE_REMOTE_TEMP": str(tmp_path / "ansible-remote")}
    return subprocess.run([ansible_tool("ansible-playbook"), "-i", str(tmp_path / "inventory.yml"), "rollout.yml",
                           "-e", f"okcell_bundle={bundle}", "-e", f"okcell_batch_size={batch_size}"],
                          cwd=PLAYBOOK_DIR, env=env, capture_output=True, text=True, timeout=900)


def report(tmp_path: Path, cell: str) -> dict:
    return json.loads((tmp_path / "reports" / f"{cell}.json").read_text())


def tensorrt_version() -> str:
    """What the role reports for TensorRT here: its version, or none (not installed, or only its type stubs)."""
    try:
        import tensorrt
    except ImportError:
        return "none"
    return str(getattr(tensorrt, "__version__", "none"))


def bundle_copy(root: Path, bundle: Path) -> Path:
    return root / STATE_DIR / "bundles" / bundle.name


def test_release_reaches_every_cell_in_batches_and_facts_are_reported(bundles: dict[str, Path], cells: dict[str, Path],
                                                                      tmp_path: Path):
    one, two = release_id(bundles["1"]), release_id(bundles["2"])
    done = rollout(tmp_path, bundles["2"], batch_size=2)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count(INSTALL_TASK) == 2  # batches: cell-a and cell-b, then cell-c
    no_gpu = shutil.which("nvidia-smi") is None and not Path("/proc/device-tree/model").exists()
    for name, root in cells.items():
        assert (active_release(root), ReleaseStore(root).previous) == (two, one)
        assert not bundle_copy(root, bundles["2"]).exists()
        facts = report(tmp_path, name)
        assert (facts["host"], facts["outcome"], facts["release"], facts["release_before"], facts["previous"]) == (
            name, "installed", two, one, one)
        assert facts["okcell"] == __version__ and facts["release_name"] == "line1 2"
        assert facts["tensorrt"] == tensorrt_version()
        assert facts["gpu"] == "none" if no_gpu else facts["gpu"] != ""
        assert "step ready: waiting up to 120 s for READY=1" in facts["installer"]
        assert f"installed release {two} (line1 2); it is the current release" in facts["installer"]
        assert f"{name}: installed; okcell {__version__}, release {two} (line1 2, before {one})" in done.stdout

    again = rollout(tmp_path, bundles["2"], batch_size=3)
    assert again.returncode == 0, again.stdout + again.stderr
    for name, root in cells.items():
        assert active_release(root) == two
        assert report(tmp_path, name)["outcome"] == "unchanged: already the current release"


def test_selftest_failure_stops_the_rollout_at_the_first_batch(bundles: dict[str, Path], cells: dict[str, Path],
                                                                tmp_path: Path):
    one, bad = release_id(bundles["1"]), release_id(bundles["3"])
    done = rollout(tmp_path, bundles["3"], batch_size=1)
    assert done.returncode != 0
    reason = "okcell bundle install: failed: self-test failed: 1 of 4 golden image(s) differ: "
    assert reason in done.stdout, done.stdout + done.stderr
    assert f"cell-a: {reason}" in done.stdout and f"the cell is on release {one} (before: {one})" in done.stdout
    assert done.stdout.count(INSTALL_TASK) == 1
    facts = report(tmp_path, "cell-a")
    assert facts["outcome"].startswith(f"failed: {reason}") and facts["release"] == one
    assert active_release(cells["cell-a"]) == one and not ReleaseStore(cells["cell-a"]).path(bad).exists()
    for name in ("cell-b", "cell-c"):  # later batches: not touched at all
        assert active_release(cells[name]) == one and not (cells[name] / STATE_DIR / "bundles").exists()
        assert not (tmp_path / "reports" / f"{name}.json").exists() and f"[{name}]" not in done.stdout


def test_cell_not_ready_is_switched_back_and_stops_the_rollout(bundles: dict[str, Path], cells: dict[str, Path],
                                                               tmp_path: Path):
    """cell-b's camera delivers nothing (its cell.yaml replays an empty folder): release 2 is not READY there, the
    installer switches it back to release 1; cell-a (same batch) finishes with release 2, cell-c is not touched."""
    one, two = release_id(bundles["1"]), release_id(bundles["2"])
    empty = tmp_path / "no-images"
    empty.mkdir()
    config = cells["cell-b"] / CONFIG_FILE
    config.write_text(config.read_text() + f"replay: {{images: {empty}}}\n")
    done = rollout(tmp_path, bundles["2"], batch_size=2)
    assert done.returncode != 0
    assert (f"okcell bundle install: failed: release {two} not READY: " in done.stdout
            and f"switched back to release {one}" in done.stdout), done.stdout + done.stderr
    assert done.stdout.count(INSTALL_TASK) == 1
    assert (active_release(cells["cell-a"]), report(tmp_path, "cell-a")["outcome"]) == (two, "installed")
    store = ReleaseStore(cells["cell-b"])
    assert active_release(cells["cell-b"]) == one and not store.path(two).exists()
    facts = report(tmp_path, "cell-b")
    assert facts["release"] == one and facts["outcome"].startswith(f"failed: okcell bundle install: failed: release {two}")
    assert "step rollback: current -> " + one in "\n".join(facts["installer"])
    assert active_release(cells["cell-c"]) == one and not (cells["cell-c"] / STATE_DIR / "bundles").exists()
    assert "[cell-c]" not in done.stdout


def test_playbook_and_role_pass_ansible_lint():
    done = subprocess.run([ansible_tool("ansible-lint"), "--offline", "--nocolor"], cwd=PLAYBOOK_DIR,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Passed: 0 failure(s), 0 warning(s)" in done.stdout + done.stderr
