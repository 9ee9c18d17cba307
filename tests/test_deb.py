"""`make deb`'s package: built from the checkout and the cached wheelhouse, checked with dpkg-deb and lintian, then
installed with the real dpkg in a throwaway Debian 12 root (chroot), where `okcell --version` runs, systemd-analyze
accepts the units, and a release bundle installs and its cell starts READY; then removed and purged.
Prerequisites (`make test-prerequisites`): dpkg-deb, lintian, the wheelhouse and the test root."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from bundle_support import make_bundle
from fixture_bundle import Staged
from okcell import __version__

REPO = Path(__file__).resolve().parent.parent
DEBIAN = REPO / "deploy" / "debian"
TARGET_PYTHON = Path("/usr/bin/python3")


def _arch() -> str:
    done = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else "unknown"


ARCH = _arch()
WHEELHOUSE = REPO / "build" / "wheelhouse" / ARCH
TESTROOT = REPO / "build" / "testroot" / f"bookworm-{ARCH}.tar"

pytestmark = pytest.mark.skipif(shutil.which("dpkg-deb") is None or not TARGET_PYTHON.is_file(),
                                reason="needs a Debian/Ubuntu machine (dpkg-deb, /usr/bin/python3)")


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (WHEELHOUSE / ".collected").is_file():
        pytest.skip(f"no wheelhouse in {WHEELHOUSE}: run `make wheelhouse` (part of `make test`)")
    out = tmp_path_factory.mktemp("deb")
    env = {**os.environ, "PYTHON": str(TARGET_PYTHON), "PIP": f"{sys.executable} -m pip", "WHEELHOUSE": str(WHEELHOUSE),
           "OUT": str(out), "COMPRESS": "-Zgzip -z1"}  # fast for the test; `make deb` uses xz
    done = subprocess.run([str(DEBIAN / "build-deb.sh")], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    package = out / f"okcell_{__version__}_{ARCH}.deb"
    assert package.is_file(), done.stdout
    return package


def dpkg_deb(*args: str) -> str:
    done = subprocess.run(["dpkg-deb", *args], capture_output=True, text=True, check=True)
    return done.stdout


def test_package_fields_and_contents(deb: Path):
    fields = {key: dpkg_deb("--field", str(deb), key).strip() for key in ("Package", "Version", "Architecture", "Depends")}
    assert fields["Package"] == "okcell" and fields["Version"] == __version__ and fields["Architecture"] == ARCH
    assert re.search(r"python3 \(>= 3\.\d+\), python3 \(<< 3\.\d+\), libpython3\.\d+", fields["Depends"])
    assert dpkg_deb("--info", str(deb), "conffiles").split() == ["/etc/okcell/cell.yaml"]
    contents = dpkg_deb("--contents", str(deb))
    paths = {line.split()[5].removeprefix("."): line for line in contents.splitlines()}
    for path in ("/opt/okcell/bin/okcell", "/etc/okcell/cell.yaml", "/lib/systemd/system/okcell.service",
                 "/lib/systemd/system/okcell-engine.service", "/usr/share/doc/okcell/copyright"):
        assert path in paths, path
    assert "-> /usr/bin/python3" in paths["/opt/okcell/bin/python3"] and "-> /opt/okcell/bin/okcell" in paths["/usr/bin/okcell"]
    site = next(p for p in paths if p.endswith("/site-packages/"))
    packages = {p[len(site):].split("/")[0] for p in paths if p.startswith(site)}
    assert {"okcell", "edge", "export", "calibration", "onnxruntime", "cv2", "harvesters", "asyncua"} <= packages
    assert not {"torch", "transformers", "onnx", "pytest", "mypy"} & packages, "build-time extras in the runtime venv"
    assert not [p for p in paths if "__pycache__" in p], "bytecode is made by postinst, not shipped"
    print(f"{deb.name}: {deb.stat().st_size / 1e6:.0f} MB (gzip -1), installed "
          f"{int(dpkg_deb('--field', str(deb), 'Installed-Size')) / 1024:.0f} MiB")


@pytest.mark.skipif(shutil.which("lintian") is None, reason="lintian not installed: `make deb-tools`")
def test_lintian_is_clean_and_every_override_is_explained(deb: Path):
    done = subprocess.run(["lintian", "--tag-display-limit", "0", str(deb)], capture_output=True, text=True, timeout=900)
    tags = [line for line in (done.stdout + done.stderr).splitlines() if re.match(r"[EWI]: ", line)]
    assert done.returncode == 0 and not tags, "\n".join(tags)
    overridden = {line.split()[1] for line in (DEBIAN / "lintian-overrides").read_text().splitlines()
                  if line.startswith("okcell: ")}
    readme = (DEBIAN / "README.md").read_text()
    assert [tag for tag in sorted(overridden) if f"`{tag}`" not in readme] == []


@contextmanager
def throwaway_root(folder: Path) -> Iterator[Path]:
    """The cached Debian 12 test root unpacked into ``folder``, with /proc mounted while in use."""
    if os.geteuid() != 0:
        pytest.skip("installing into a chroot needs root")
    if not TESTROOT.is_file():
        pytest.skip(f"no test root {TESTROOT}: run `make deb-testroot` (part of `make test`)")
    folder.mkdir()
    subprocess.run(["tar", "-C", str(folder), "-xf", str(TESTROOT)], check=True)
    subprocess.run(["mount", "-t", "proc", "proc", str(folder / "proc")], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "--lazy", str(folder / "proc")], check=True)


def chroot(root: Path, *command: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
    return subprocess.run(["chroot", str(root), *command], capture_output=True, text=True, env=env, timeout=600)


def test_install_run_a_release_remove_and_purge_in_a_throwaway_root(deb: Path, staged: Staged, demo_images: Path,
                                                                    tmp_path: Path):
    bundle = make_bundle(staged, tmp_path / "line1-1.tar", "1")
    with throwaway_root(tmp_path / "root") as root:
        shutil.copy(deb, root / "tmp" / deb.name)
        done = chroot(root, "dpkg", "-i", f"/tmp/{deb.name}")
        assert done.returncode == 0, done.stdout + done.stderr
        assert chroot(root, "okcell", "--version").stdout.strip() == f"okcell {__version__}"
        done = chroot(root, "/opt/okcell/bin/okcell", "bundle", "list")
        assert done.returncode == 0 and "no release installed in /var/lib/okcell/releases" in done.stdout, done.stderr
        done = chroot(root, "/opt/okcell/bin/python3", "-c", "import cv2, onnxruntime, hnswlib, harvesters, asyncua")
        assert done.returncode == 0, done.stderr
        assert chroot(root, "id", "-nG", "okcell").stdout.split() == ["okcell", "video"]
        assert chroot(root, "stat", "-c", "%U %a", "/var/lib/okcell").stdout.split() == ["okcell", "750"]
        # the units as installed, checked by the root's own systemd (executables, users, settings)
        done = chroot(root, "systemd-analyze", "verify", "--man=no", "okcell.service", "okcell-engine.service")
        assert done.returncode == 0 and "okcell" not in done.stdout + done.stderr, done.stdout + done.stderr
        wants = root / "etc" / "systemd" / "system" / "multi-user.target.wants"
        assert {p.name for p in wants.iterdir()} >= {"okcell.service", "okcell-engine.service"}  # enabled, not started
        assert any((root / "opt" / "okcell" / "lib").rglob("__pycache__"))  # postinst compiled the bytecode

        # a release on the installed package: self-test, then `okcell run` started once until READY=1 (no systemd)
        config = root / "etc" / "okcell" / "cell.yaml"
        images = root / "srv" / "images"
        images.mkdir(parents=True)
        for image in sorted((demo_images / "holdout" / "ok").iterdir())[:2]:
            shutil.copy(image, images / image.name)
        config.write_text(config.read_text() + "name: chroot-cell\nreplay: {images: /srv/images}\n")
        shutil.copy(bundle, root / "tmp" / bundle.name)
        done = chroot(root, "okcell", "bundle", "install", f"/tmp/{bundle.name}", "--service", "trial")
        assert done.returncode == 0, done.stdout + done.stderr
        assert "step ready: waiting" in done.stdout and "it is the current release" in done.stdout
        release = chroot(root, "readlink", "/var/lib/okcell/releases/current").stdout.strip()
        assert chroot(root, "stat", "-c", "%U", f"/var/lib/okcell/releases/{release}/model/model.onnx").stdout.strip() == "okcell"
        assert chroot(root, "readlink", "/var/lib/okcell/models").stdout.strip() == "releases/current/model"

        config.write_text(config.read_text().replace("chroot-cell", "press-7"))
        (root / "var" / "lib" / "okcell" / "releases" / "kept").mkdir()
        done = chroot(root, "dpkg", "--remove", "okcell")
        assert done.returncode == 0, done.stdout + done.stderr
        assert not (root / "opt" / "okcell").exists()
        assert "name: press-7" in config.read_text() and (root / "var" / "lib" / "okcell" / "releases" / "kept").is_dir()
        done = chroot(root, "dpkg", "--purge", "okcell")
        assert done.returncode == 0, done.stdout + done.stderr
        assert not config.exists() and not (root / "var" / "lib" / "okcell").exists()
