"""`okcell bundle install` / `rollback` on a cell root in a temporary folder: the real command in a child process,
the real model and recipe in the self-test, and a real `okcell run` child that must send READY=1 on its notify
socket (--service trial). Failures leave the previous release active; an installer killed at any step leaves a
whole old or new release active."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from bundle_support import active_release, bundle_command, copy_root, install, install_killed_at, make_bundle, make_root
from disk_support import small_disk
from edge.deploy.bundle import MANIFEST_FILE
from edge.deploy.install import STEPS
from edge.deploy.releases import CONFIG_FILE, STATE_DIR, ReleaseStore
from fixture_bundle import Staged
from okcell.gpu import gpu_extra_missing


def release_id(bundle: Path) -> str:
    import tarfile

    with tarfile.open(bundle) as archive:
        handle = archive.extractfile(MANIFEST_FILE)
        assert handle is not None
        return str(json.loads(handle.read())["release_id"])


@pytest.fixture(scope="module")
def bundles(staged: Staged, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bundles")
    return {version: make_bundle(staged, folder / f"line1-{version}.tar", version) for version in ("1", "2", "3")}


@pytest.fixture(scope="module")
def first_installed(bundles: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cell root with release 1 installed (to copy: each test gets its own)."""
    root = make_root(tmp_path_factory.mktemp("installed") / "root")
    done = install(root, bundles["1"])
    assert done.returncode == 0, done.stdout + done.stderr
    return root


@pytest.fixture()
def root(first_installed: Path, tmp_path: Path) -> Path:
    return copy_root(first_installed, tmp_path / "root")


def variant(staged: Staged, tmp_path: Path, **config: object) -> Path:
    """Release 9: release 1's files with other cell.yaml settings."""
    return make_bundle(staged, tmp_path / "variant.tar", "9", edit_config=lambda data: data.update(config))


def test_install_upgrade_prune_and_rollback(bundles: dict[str, Path], root: Path):
    store = ReleaseStore(root)
    one, two, three = (release_id(bundles[v]) for v in ("1", "2", "3"))
    assert active_release(root) == one
    done = install(root, bundles["2"])
    assert done.returncode == 0, done.stdout + done.stderr
    assert [line.split(":")[0] for line in done.stdout.splitlines() if line.startswith("step ")] == [
        f"step {step}" for step in STEPS]
    assert "engine: skipped: no TensorRT on this machine" in done.stdout or gpu_extra_missing() is None
    assert (active_release(root), store.previous) == (two, one)
    assert (root / STATE_DIR / "models" / "model.onnx").resolve() == store.path(two) / "model" / "model.onnx"

    done = install(root, bundles["3"], "--keep", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"removed release {one}" in done.stdout
    assert (active_release(root), store.previous) == (three, two)
    assert sorted(r.release_id for r in store.releases()) == sorted([two, three])

    listing = bundle_command("list", "--root", str(root))
    assert listing.returncode == 0
    assert f"{three}  current" in listing.stdout and f"{two}  previous" in listing.stdout

    done = bundle_command("rollback", "--root", str(root), "--service", "trial", "--ready-timeout", "120")
    assert done.returncode == 0, done.stdout + done.stderr
    assert (active_release(root), store.previous) == (two, three)


def test_selftest_mismatch_keeps_the_old_release(staged: Staged, root: Path, tmp_path: Path):
    def shift(draft: dict) -> None:
        draft["golden"][0]["score"] += 0.1  # what a different numeric path on the cell would look like

    bundle = make_bundle(staged, tmp_path / "shifted.tar", "9", edit_draft=shift)
    golden = json.loads(json.dumps(staged.draft["golden"][0]))
    old = active_release(root)
    done = install(root, bundle)
    assert done.returncode == 1
    assert (f"self-test failed: 1 of 4 golden image(s) differ: {golden['file']}: OK {golden['score']:.4f}, "
            f"expected OK {golden['score'] + 0.1:.4f} ± 0.01") in done.stderr, done.stderr
    assert "step switch" not in done.stdout
    assert active_release(root) == old and not ReleaseStore(root).path(release_id(bundle)).exists()


def test_release_not_ready_in_time_is_switched_back(staged: Staged, root: Path, tmp_path: Path):
    """The new release's cell hangs at start: its cell.yaml names a recipe whose manifest is a FIFO nobody writes,
    so opening it blocks for ever (the self-test checks the release's own recipes, which are fine)."""
    stuck = tmp_path / "stuck-recipe"
    stuck.mkdir()
    os.mkfifo(stuck / "manifest.json")
    bundle = variant(staged, tmp_path, recipe=str(stuck))
    old = active_release(root)
    done = install(root, bundle, "--ready-timeout", "30")
    assert done.returncode == 1
    assert (f"release {release_id(bundle)} not READY: `" in done.stderr and "not READY within 30 s; switched back to "
            f"release {old}, which is READY" in done.stderr), done.stderr
    assert "step rollback:" in done.stdout
    assert active_release(root) == old and not ReleaseStore(root).path(release_id(bundle)).exists()


def test_release_whose_cell_exits_before_ready_is_switched_back(staged: Staged, root: Path, tmp_path: Path):
    empty = tmp_path / "no-images"
    empty.mkdir()
    bundle = variant(staged, tmp_path, replay={"images": str(empty)})
    old = active_release(root)
    done = install(root, bundle)
    assert done.returncode == 1
    assert "exited with status 2 before READY=1" in done.stderr and "no image files" in done.stderr, done.stderr
    assert f"switched back to release {old}, which is READY" in done.stderr
    assert active_release(root) == old


def test_failed_reinstall_of_the_previous_release_keeps_it(bundles: dict[str, Path], root: Path, tmp_path: Path):
    """Release 1 is previous; the device breaks (its replay folder is empty), so re-installing release 1 does not get
    READY and neither does release 2 after the switch back: release 1's folder must survive as the previous one."""
    one, two = release_id(bundles["1"]), release_id(bundles["2"])
    assert install(root, bundles["2"]).returncode == 0
    empty = tmp_path / "no-images"
    empty.mkdir()
    config = root / CONFIG_FILE
    config.write_text(config.read_text() + f"replay: {{images: {empty}}}\n")
    done = install(root, bundles["1"])
    assert done.returncode == 1
    assert f"switched back to release {two}, which is not READY either" in done.stderr, done.stderr
    store = ReleaseStore(root)
    assert (active_release(root), store.previous) == (two, one)
    assert store.path(one).is_dir()


@pytest.mark.skipif(gpu_extra_missing() is None, reason="TensorRT is usable here, so backend tensorrt builds an engine")
def test_engine_build_failure_keeps_the_old_release(staged: Staged, root: Path, tmp_path: Path):
    bundle = variant(staged, tmp_path, model={"onnx": "model/model.onnx", "engine": "model/model.engine",
                                              "backend": "tensorrt"})
    old = active_release(root)
    done = install(root, bundle)
    assert done.returncode == 1
    assert ("engine build failed: the release's cell.yaml selects backend tensorrt, but TensorRT cannot run on this "
            "machine: missing tensorrt") in done.stderr, done.stderr
    assert active_release(root) == old and not ReleaseStore(root).path(release_id(bundle)).exists()


def test_systemd_service_is_refused_under_another_root(bundles: dict[str, Path], root: Path):
    done = bundle_command("install", str(bundles["2"]), "--root", str(root), "--service", "systemd")
    assert done.returncode == 2
    assert f"--service systemd restarts this machine's okcell.service, not one under --root {root}" in done.stderr


def test_device_config_without_release_key_refuses_the_install(bundles: dict[str, Path], root: Path):
    config = root / CONFIG_FILE
    config.write_text(config.read_text().replace("release:", "# release:") + "model: {onnx: /nowhere.onnx}\nrecipe: /nowhere\n")
    done = install(root, bundles["2"], service="none")
    assert done.returncode == 1
    assert "the cell configuration does not accept release" in done.stderr and "has no 'release:' key" in done.stderr


def test_disk_too_small_for_the_release(bundles: dict[str, Path], first_installed: Path, tmp_path: Path):
    """The state folder on a small disk that holds release 1 but has no room for release 2."""
    root = make_root(tmp_path / "root")
    state = root / STATE_DIR
    size_kb = (sum(p.stat().st_size for p in (first_installed / STATE_DIR).rglob("*") if p.is_file()) // 1024) + 20_000
    with small_disk(state, size_kb):
        shutil.copytree(first_installed / STATE_DIR, state, symlinks=True, dirs_exist_ok=True)
        old = active_release(root)
        done = install(root, bundles["2"], service="none")
        assert done.returncode == 1
        assert f"disk full: release {release_id(bundles['2'])} needs" in done.stderr and "free space and install again" in done.stderr
        assert active_release(root) == old


def test_disk_full_during_unpack(bundles: dict[str, Path], first_installed: Path, tmp_path: Path):
    """Room for the bytes but not for the files (a tmpfs with few inodes): the unpack itself hits ENOSPC."""
    root = make_root(tmp_path / "root")
    state = root / STATE_DIR
    inodes = sum(1 for _ in (first_installed / STATE_DIR).rglob("*")) + 8
    with small_disk(state, 1024 * 1024, inodes=inodes):
        shutil.copytree(first_installed / STATE_DIR, state, symlinks=True, dirs_exist_ok=True)
        old = active_release(root)
        done = install(root, bundles["2"], service="none")
        assert done.returncode == 1
        assert "disk full while unpacking" in done.stderr and "No space left on device" in done.stderr, done.stderr
        assert active_release(root) == old
        assert not any(p.name.startswith(".staging-") for p in ReleaseStore(root).folder.iterdir())


@pytest.mark.parametrize("step", STEPS)
def test_installer_killed_at_each_step_leaves_a_whole_release_active(bundles: dict[str, Path], root: Path, step: str):
    old, new = release_id(bundles["1"]), release_id(bundles["2"])
    install_killed_at(root, bundles["2"], step)
    assert active_release(root) in (old, new)  # and that release's files all match its manifest
    if step in ("verify", "unpack", "config", "engine", "selftest"):
        assert active_release(root) == old
    if step == "unpack":  # the next install clears what the killed one left and completes
        done = install(root, bundles["2"], service="none")
        assert done.returncode == 0, done.stdout + done.stderr
        assert active_release(root) == new
        assert not [p for p in ReleaseStore(root).folder.iterdir() if p.name.startswith(".") and p.name != ".lock"]


def test_state_folders_become_links_through_current_unless_they_hold_files(tmp_path: Path):
    """The package makes models/ and recipes/ as empty folders; a first release turns them into links through
    releases/current (what okcell-engine.service reads), but a folder someone filled by hand is left alone."""
    store = ReleaseStore(tmp_path)
    (store.state / "models").mkdir(parents=True)
    (store.state / "recipes" / "part-a").mkdir(parents=True)
    notes = store.link_state_folders()
    assert os.readlink(store.state / "models") == "releases/current/model"
    assert (store.state / "recipes" / "part-a").is_dir() and len(notes) == 1 and "recipes is not a link" in notes[0]
