"""deploy/jetson: okcell installed into a real arm64 Debian 12 root file system (debootstrap, the stand-in for a
Jetson's L4T rootfs) on this x86 machine under qemu-user-static. The arm64 package is built from the checkout and
the arm64 wheelhouse in a throwaway copy of that root, okcell_rootfs.py installs it with a device's cell.yaml, and
then, in the root: `okcell --version` runs, its compiled dependencies import, systemd-analyze accepts the units, the
units are enabled and the manifest records what was done. Refused before the root changes: a root of another
architecture or Python, a folder that is no root, a bad cell.yaml. target_chroot.py leaves nothing mounted, also on
SIGTERM, and refuses a root with something still mounted in it.
Prerequisites (`make test-prerequisites`): jetson-testroot, jetson-wheelhouse (the first build takes minutes)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
import shutil
import signal
import subprocess
import sys
import time

import pytest

from okcell import __version__

REPO = Path(__file__).resolve().parent.parent
JETSON = REPO / "deploy" / "jetson"
TESTROOTS = REPO / "build" / "testroot"
ARM64_ROOT = TESTROOTS / "bookworm-arm64.tar"
WHEELHOUSE = REPO / "build" / "wheelhouse" / "arm64"
DEVICE_CONFIG = "release: /var/lib/okcell/releases/current\nname: press-7\nopcua: {endpoint: 'opc.tcp://0.0.0.0:4840'}\n"
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


def _prerequisites() -> str | None:
    """Why these tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (mounts and chroot)"
    if shutil.which("qemu-aarch64-static") is None and os.uname().machine != "aarch64":
        return "qemu-user-static not installed: make deb-tools (part of make test)"
    if not ARM64_ROOT.is_file():
        return f"no arm64 root {ARM64_ROOT}: make jetson-testroot (part of make test)"
    if not (WHEELHOUSE / ".collected").is_file():
        return f"no arm64 wheelhouse {WHEELHOUSE}: make jetson-wheelhouse (part of make test)"
    return None


pytestmark = pytest.mark.skipif(_prerequisites() is not None, reason=str(_prerequisites()))


def script(name: str, *args: str | Path, **kwargs) -> subprocess.CompletedProcess[str]:
    env = {**ENV, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, str(JETSON / name), *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=1800, **kwargs)


def unpack(tarball: Path, folder: Path) -> Path:
    folder.mkdir()
    subprocess.run(["tar", "-C", str(folder), "-xf", str(tarball)], check=True)
    return folder


def mounts_under(folder: Path) -> list[str]:
    prefix = str(folder.resolve())
    return [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if line.split()[4].startswith(prefix)]


def chroot(root: Path, *command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["chroot", str(root), *command], env=ENV, capture_output=True, text=True, timeout=600)


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every path in ``root`` with its size and mtime (nanoseconds)."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            stat = os.lstat(os.path.join(folder, name))
            found[os.path.relpath(os.path.join(folder, name), root)] = (stat.st_size, stat.st_mtime_ns)
    return found


@pytest.fixture(scope="module")
def arm64_deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """okcell's arm64 package, built as `make deb DEB_ARCH=arm64` does: in a copy of the arm64 root under qemu."""
    out = tmp_path_factory.mktemp("deb")
    started = time.monotonic()
    done = script("target_chroot.py", "--unpack", ARM64_ROOT, "--bind", f"{REPO}:/src", "--bind", f"{out}:/out",
                  "--cd", "/src", "--", "env", "PYTHON=/usr/bin/python3", f"WHEELHOUSE={WHEELHOUSE.relative_to(REPO)}",
                  "OUT=/out", "COMPRESS=-Znone", "SYSTEM_SITE_PACKAGES=1", "deploy/debian/build-deb.sh")
    assert done.returncode == 0, done.stdout + done.stderr
    package = out / f"okcell_{__version__}_arm64.deb"
    assert package.is_file(), done.stdout
    print(f"arm64 package built under qemu in {time.monotonic() - started:.0f} s")
    assert not [p for p in ARM64_ROOT.parent.iterdir() if p.name.startswith(".chroot-")], "throwaway root left"
    return package


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An arm64 root the refusals below must leave exactly as it is."""
    return unpack(ARM64_ROOT, tmp_path_factory.mktemp("pristine") / "rootfs")


def test_the_image_has_okcell_its_config_enabled_units_and_a_manifest(arm64_deb: Path, tmp_path: Path):
    root = unpack(ARM64_ROOT, tmp_path / "rootfs")
    config = tmp_path / "press-7.yaml"
    config.write_text(DEVICE_CONFIG)
    started = time.monotonic()
    done = script("okcell_rootfs.py", root, "--deb", arm64_deb, "--config", config, "--runtime-watchdog", "30s")
    assert done.returncode == 0, done.stdout + done.stderr
    print(f"okcell_rootfs.py under qemu: {time.monotonic() - started:.0f} s")
    assert f"okcell {__version__} installed into {root} (Debian GNU/Linux 12 (bookworm), arm64)" in done.stdout
    assert mounts_under(root) == [] and not list((root / "tmp").glob("okcell-image-*"))

    # the arm64 venv runs in the root (qemu), with the system site-packages (JetPack's TensorRT on a Jetson)
    assert chroot(root, "/opt/okcell/bin/okcell", "--version").stdout.strip() == f"okcell {__version__}"
    done = chroot(root, "/opt/okcell/bin/python3", "-c", "import cv2, onnxruntime, hnswlib, harvesters, asyncua, "
                  "platform; print(platform.machine())")
    assert done.returncode == 0 and done.stdout.strip() == "aarch64", done.stderr
    assert "include-system-site-packages = true" in (root / "opt" / "okcell" / "pyvenv.cfg").read_text()

    # the units as installed, checked by the root's own systemd; enabled, the watchdog given to systemd
    done = chroot(root, "systemd-analyze", "verify", "--man=no", "okcell.service", "okcell-engine.service")
    assert done.returncode == 0 and "okcell" not in done.stdout + done.stderr, done.stdout + done.stderr
    wants = root / "etc" / "systemd" / "system" / "multi-user.target.wants"
    for unit in ("okcell.service", "okcell-engine.service"):
        assert os.readlink(wants / unit) == f"/lib/systemd/system/{unit}"
    done = chroot(root, "systemd-analyze", "cat-config", "systemd/system.conf")
    assert "RuntimeWatchdogSec=30s" in done.stdout, done.stdout + done.stderr
    assert chroot(root, "id", "-nG", "okcell").stdout.split() == ["okcell", "video"]

    assert (root / "etc" / "okcell" / "cell.yaml").read_text() == DEVICE_CONFIG
    manifest = json.loads((root / "etc" / "okcell" / "image.json").read_text())
    assert manifest["okcell"] == f"okcell {__version__}"
    assert manifest["package"]["sha256"] == hashlib.sha256(arm64_deb.read_bytes()).hexdigest()
    assert manifest["package"]["architecture"] == "arm64" and manifest["root"]["architecture"] == "arm64"
    assert manifest["cell_yaml"]["sha256"] == hashlib.sha256(config.read_bytes()).hexdigest()
    assert manifest["units_enabled"] == ["okcell.service", "okcell-engine.service"]
    assert manifest["runtime_watchdog"] == "30s" and manifest["host"] and manifest["date"]


def test_a_bad_cell_yaml_is_refused_before_the_root_changes(arm64_deb: Path, pristine: Path, tmp_path: Path):
    """(the checks themselves: tests/test_cell_config.py, check_device_config)"""
    config = tmp_path / "press-7.yaml"
    config.write_text(DEVICE_CONFIG.replace("opcua:", "opcau:"))
    before = tree(pristine)
    done = script("okcell_rootfs.py", pristine, "--deb", arm64_deb, "--config", config)
    assert done.returncode == 2, done.stdout
    assert f"okcell_rootfs: {config}: unknown key opcau; allowed here: " in done.stderr, done.stderr
    assert tree(pristine) == before


def test_a_root_of_another_architecture_or_no_root_is_refused(arm64_deb: Path, tmp_path: Path):
    config = tmp_path / "cell.yaml"
    config.write_text(DEVICE_CONFIG)
    amd64 = TESTROOTS / "bookworm-amd64.tar"
    if not amd64.is_file():
        pytest.skip(f"no amd64 root {amd64}: make deb-testroot (part of make test)")
    root = unpack(amd64, tmp_path / "amd64")
    before = tree(root)
    done = script("okcell_rootfs.py", root, "--deb", arm64_deb, "--config", config)
    assert done.returncode == 2, done.stdout
    assert f"{arm64_deb}: built for arm64, but {root} is an amd64 root file system (make deb DEB_ARCH=amd64)" \
        in done.stderr
    assert tree(root) == before

    folder = tmp_path / "Linux_for_Tegra"
    (folder / "rootfs").mkdir(parents=True)
    done = script("okcell_rootfs.py", folder, "--deb", arm64_deb, "--config", config)
    assert done.returncode == 2 and f"{folder}: not a root file system (no etc/os-release or usr/bin/dpkg; give " \
        "the folder that holds bin/, etc/ and usr/, for L4T Linux_for_Tegra/rootfs)" in done.stderr, done.stderr
    assert [p.name for p in folder.iterdir()] == ["rootfs"] and not any((folder / "rootfs").iterdir())

    done = script("okcell_rootfs.py", root, "--deb", config, "--config", config)
    assert done.returncode == 2 and f"{config}: not a Debian package" in done.stderr, done.stderr


def test_a_root_with_another_python_is_refused(arm64_deb: Path, tmp_path: Path):
    """An L4T root (Ubuntu 22.04) has Python 3.10; a package built on Debian 12 is for 3.11."""
    root = unpack(ARM64_ROOT, tmp_path / "rootfs")
    (root / "usr" / "bin" / "python3").unlink()
    (root / "usr" / "bin" / "python3").symlink_to("python3.10")
    config = tmp_path / "cell.yaml"
    config.write_text(DEVICE_CONFIG)
    before = tree(root)
    done = script("okcell_rootfs.py", root, "--deb", arm64_deb, "--config", config)
    assert done.returncode == 2
    assert f"{arm64_deb}: built for Python 3.11, but {root} has Python 3.10 (/usr/bin/python3); build the package " \
        "in a root of the same distribution (docs/jetson.md)" in done.stderr, done.stderr
    assert tree(root) == before


def test_nothing_stays_mounted_when_the_chroot_is_terminated(pristine: Path):
    runner = subprocess.Popen([sys.executable, str(JETSON / "target_chroot.py"), "--root", str(pristine),
                               "--", "sh", "-c", "echo started; exec sleep 600"], env=ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    assert runner.stdout is not None and runner.stdout.readline() == "started\n"  # /proc and /dev mounted now
    assert len(mounts_under(pristine)) == 2
    runner.send_signal(signal.SIGTERM)
    assert runner.wait(timeout=60) == 128 + signal.SIGTERM
    assert mounts_under(pristine) == []


def test_a_root_with_something_still_mounted_in_it_is_refused(pristine: Path):
    proc = pristine / "proc"
    subprocess.run(["mount", "-t", "proc", "proc", str(proc)], check=True)  # as a killed run (SIGKILL) leaves it
    try:
        done = script("target_chroot.py", "--root", pristine, "--", "true")
    finally:
        subprocess.run(["umount", str(proc)], check=True)
    assert done.returncode == 2
    assert f"target_chroot: {pristine}: {proc} still mounted (another run, or one that was killed); unmount first: " \
        f"umount -R {proc}" in done.stderr, done.stderr
