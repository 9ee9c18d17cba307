#!/usr/bin/env python3
"""Run commands in a root file system of another architecture: an L4T ``Linux_for_Tegra/rootfs`` (arm64) on an x86
host, through qemu-user-static's binfmt_misc entry.

While the commands run, ``/proc`` is mounted and ``/dev`` (and any ``--bind`` folder) is bind-mounted in the root;
all of it is unmounted on every exit (a failed command, an exception, Ctrl-C, SIGTERM, SIGHUP). ``--unpack TAR``
runs in a throwaway copy of a root kept as a tarball (the Makefile builds the arm64 wheelhouse and package so).

    sudo target_chroot.py [--unpack ROOT.tar | --root DIR] [--bind HOST_DIR:DIR] [--cd DIR] -- COMMAND [ARG...]
"""

from __future__ import annotations

import argparse
from contextlib import contextmanager
import os
from pathlib import Path
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
from typing import Iterator, Sequence

# ELF e_machine -> Debian architecture (and the binfmt_misc entry qemu-user-static registers for it)
ELF_MACHINES = {0x3E: "amd64", 0xB7: "arm64", 0x28: "armhf"}
QEMU_BINFMT = {"arm64": "qemu-aarch64", "armhf": "qemu-arm", "amd64": "qemu-x86_64"}
HOST_MACHINES = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "armhf"}
BINFMT = Path("/proc/sys/fs/binfmt_misc")
CHROOT_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
              "HOME": "/root", "DEBIAN_FRONTEND": "noninteractive"}


class TargetError(Exception):
    """The root file system or this host cannot be used; the message says which and why."""


def root_architecture(root: Path) -> str:
    """The Debian architecture of the root file system ``root``, read from the ELF header of its ``dpkg``."""
    dpkg = root / "usr" / "bin" / "dpkg"
    if not (root / "etc" / "os-release").exists() or not dpkg.is_file():
        raise TargetError(f"{root}: not a root file system (no etc/os-release or usr/bin/dpkg; give the folder that "
                          "holds bin/, etc/ and usr/, for L4T Linux_for_Tegra/rootfs)")
    header = dpkg.read_bytes()[:20]
    if header[:4] != b"\x7fELF":
        raise TargetError(f"{dpkg}: not an ELF program")
    machine = int.from_bytes(header[18:20], "little" if header[5] == 1 else "big")
    if machine not in ELF_MACHINES:
        raise TargetError(f"{dpkg}: unknown ELF machine {machine:#x}")
    return ELF_MACHINES[machine]


def host_architecture() -> str:
    return HOST_MACHINES.get(platform.machine(), platform.machine())


def enable_emulation(arch: str) -> None:
    """Make this host run ``arch`` programs (nothing to do for its own architecture): binfmt_misc mounted and
    qemu-user-static's entry enabled, with the F flag so the interpreter need not be inside the root."""
    if arch == host_architecture():
        return
    name = QEMU_BINFMT.get(arch)
    if name is None:
        raise TargetError(f"no qemu-user-static emulation known for architecture {arch}")
    if not (BINFMT / "status").exists():
        _run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)])
    entry = BINFMT / name
    if not entry.exists() or "enabled" not in entry.read_text():
        if shutil.which("update-binfmts") is None:
            raise TargetError(f"{arch} programs cannot run on this {host_architecture()} host: install "
                              "qemu-user-static and binfmt-support (apt-get install qemu-user-static binfmt-support)")
        _run(["update-binfmts", "--enable", name])
    if not entry.exists():
        raise TargetError(f"{entry} is missing after update-binfmts --enable {name}: install qemu-user-static")
    flags = next((line.split()[1] for line in entry.read_text().splitlines() if line.startswith("flags:")
                  and len(line.split()) > 1), "")
    if "F" not in flags:
        raise TargetError(f"{entry}: registered without the F (fix binary) flag, so the emulator would have to be "
                          "inside the root; use Debian/Ubuntu's qemu-user-static (>= 1:5.0), which sets it")


def _run(command: Sequence[str]) -> None:
    done = subprocess.run(list(command), capture_output=True, text=True)
    if done.returncode != 0:
        raise TargetError(f"{' '.join(command)} failed ({done.returncode}): {(done.stderr or done.stdout).strip()}")


def _mounts_under(folder: Path) -> list[Path]:
    """Mount points below ``folder`` (which may itself be one: a root file system image mounted there), deepest
    first."""
    prefix = str(folder.resolve()) + "/"
    points = [Path(line.split()[4].replace("\\040", " ")) for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    return sorted((p for p in points if str(p).startswith(prefix)), key=lambda p: len(p.parts), reverse=True)


def _terminate_as_exception(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


@contextmanager
def mounted(root: Path, binds: Sequence[tuple[Path, str]] = ()) -> Iterator[Path]:
    """``root`` checked, its architecture made runnable, /proc and /dev (and ``binds``: host folder, folder in the root)
    mounted; everything mounted here is unmounted on leaving, also on SIGTERM and SIGHUP."""
    root = root.resolve()
    enable_emulation(root_architecture(root))
    stale = _mounts_under(root)
    if stale:
        raise TargetError(f"{root}: {', '.join(map(str, stale))} still mounted (another run, or one that was killed); "
                          f"unmount first: umount -R {' '.join(map(str, stale))}")
    previous = {sig: signal.signal(sig, _terminate_as_exception) for sig in (signal.SIGTERM, signal.SIGHUP)}
    mounted_here: list[Path] = []
    try:
        for source, kind, target in [(Path("proc"), "proc", "proc"), (Path("/dev"), "bind", "dev"),
                                     *((host, "bind", inside.lstrip("/")) for host, inside in binds)]:
            point = root / target
            point.mkdir(parents=True, exist_ok=True)
            _run(["mount", "-t", "proc", "proc", str(point)] if kind == "proc" else
                 ["mount", "--bind", str(source), str(point)])
            mounted_here.append(point)
        yield root
    finally:
        errors = []
        for point in reversed(mounted_here):
            done = subprocess.run(["umount", str(point)], capture_output=True, text=True)
            if done.returncode != 0:  # busy (a process left running): detach it now, it goes when released
                done = subprocess.run(["umount", "--lazy", str(point)], capture_output=True, text=True)
            if done.returncode != 0:
                errors.append(f"{point}: {done.stderr.strip()}")
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if errors:
            raise TargetError("could not unmount " + "; ".join(errors))


def run(root: Path, command: Sequence[str], cwd: str = "/", check: bool = True,
        capture: bool = True) -> subprocess.CompletedProcess[str]:
    """``command`` run in the mounted ``root`` (in folder ``cwd``) with a clean environment, its output captured
    (``capture=False``: passed through). With ``check``, a failure raises TargetError with its output."""
    done = subprocess.run(["chroot", str(root), "/bin/sh", "-c", 'cd "$0" && exec "$@"', cwd, *command],
                          env=CHROOT_ENV, capture_output=capture, text=True)
    if check and done.returncode != 0:
        raise TargetError(f"in {root}: {' '.join(command)} failed ({done.returncode})"
                          + (f":\n{(done.stdout + done.stderr).strip()}" if capture else ""))
    return done


@contextmanager
def unpacked(tarball: Path) -> Iterator[Path]:
    """A throwaway root unpacked from ``tarball`` into a new folder beside it; removed on leaving, unless something
    is still mounted in it (then it is left and named)."""
    if not tarball.is_file():
        raise TargetError(f"{tarball}: root file system tarball not found (make jetson-testroot)")
    folder = Path(tempfile.mkdtemp(prefix=".chroot-", dir=tarball.parent))
    try:
        _run(["tar", "-C", str(folder), "-xf", str(tarball)])
        yield folder
    finally:
        left = _mounts_under(folder)
        if left:
            raise TargetError(f"{folder}: not removed, {', '.join(map(str, left))} still mounted")
        shutil.rmtree(folder)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--root", type=Path, help="root file system folder")
    where.add_argument("--unpack", type=Path, metavar="TAR", help="run in a throwaway copy of this root tarball")
    parser.add_argument("--bind", action="append", default=[], metavar="HOST_DIR:DIR",
                        help="bind-mount a host folder at DIR in the root while the command runs")
    parser.add_argument("--cd", default="/", metavar="DIR", help="working folder in the root")
    parser.add_argument("command", nargs="+")
    args = parser.parse_args(argv)
    binds = [(Path(host).resolve(), inside) for host, _, inside in (b.partition(":") for b in args.bind)]
    try:
        with unpacked(args.unpack) if args.unpack else _given(args.root) as root:
            with mounted(root, binds):
                return run(root, args.command, args.cd, check=False, capture=False).returncode
    except TargetError as error:
        print(f"target_chroot: {error}", file=sys.stderr)
        return 2


@contextmanager
def _given(root: Path) -> Iterator[Path]:
    yield root


if __name__ == "__main__":
    sys.exit(main())
