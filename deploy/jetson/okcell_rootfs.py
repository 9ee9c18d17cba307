#!/usr/bin/env python3
"""Install okcell into a Jetson's root file system before flashing it (docs/jetson.md).

    sudo .venv/bin/python deploy/jetson/okcell_rootfs.py Linux_for_Tegra/rootfs \\
        --deb build/okcell_0.1.0_arm64.deb --config cells/press-7.yaml [--runtime-watchdog 30s]

Checks first, changing nothing: the root file system (a folder with etc/os-release and usr/bin/dpkg) and its
architecture, the package (okcell, same architecture, built for the root's Python) and the device's cell.yaml
(edge.runtime.cell_config.check_device_config). Then, in a chroot (qemu-user-static on an x86 host; target_chroot.py): ``dpkg -i`` the package
(its postinst makes the user okcell and /var/lib/okcell and enables okcell.service and okcell-engine.service),
``systemctl enable`` of the units again (an upgrade keeps an earlier choice; an image is meant to start the cell),
the cell.yaml to /etc/okcell/cell.yaml, optionally the hardware watchdog for systemd (``RuntimeWatchdogSec``),
``okcell --version`` run in the root, and a record of all of it in /etc/okcell/image.json.
"""

from __future__ import annotations

import argparse
from datetime import datetime, timezone
import hashlib
import json
import os
from pathlib import Path
import re
import shutil
import socket
import subprocess
import sys
from typing import Any, Sequence

from target_chroot import TargetError, mounted, root_architecture, run

from edge.runtime.cell_config import check_device_config
from okcell.schema import ConfigError, sha256_file

UNITS = ("okcell.service", "okcell-engine.service")
CONFIG = Path("etc/okcell/cell.yaml")
MANIFEST = Path("etc/okcell/image.json")
WATCHDOG_DROPIN = Path("etc/systemd/system.conf.d/okcell-watchdog.conf")
WANTS = Path("etc/systemd/system/multi-user.target.wants")
TIMESPAN = re.compile(r"\d+(\.\d+)?(ms|s|min|h)?")


def package_fields(deb: Path) -> dict[str, str]:
    """Package, Version, Architecture and Depends of the .deb ``deb``; TargetError when it is not okcell's."""
    if not deb.is_file():
        raise TargetError(f"{deb}: package not found (make deb DEB_ARCH=arm64)")
    done = subprocess.run(["dpkg-deb", "--show", "--showformat",
                           "${Package}\\n${Version}\\n${Architecture}\\n${Depends}\\n", str(deb)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise TargetError(f"{deb}: not a Debian package: {done.stderr.strip()}")
    fields = dict(zip(("package", "version", "architecture", "depends"), done.stdout.split("\n")))
    if fields["package"] != "okcell":
        raise TargetError(f"{deb}: package {fields['package']!r}, expected okcell")
    return fields


def check_python(root: Path, deb: Path, depends: str) -> None:
    """The package's venv links to the root's python3 of the version it was built with (``python3 (>= 3.X)``)."""
    wanted = re.search(r"python3 \(>= (3\.\d+)\)", depends)
    if wanted is None:
        return
    link = root / "usr" / "bin" / "python3"
    found = re.fullmatch(r"python(3\.\d+)", os.readlink(link)) if link.is_symlink() else None
    have = found.group(1) if found else "none" if not link.exists() else "unknown"
    if have != wanted.group(1):
        raise TargetError(f"{deb}: built for Python {wanted.group(1)}, but {root} has Python {have} "
                          f"(/usr/bin/python3); build the package in a root of the same distribution (docs/jetson.md)")


def install(root: Path, deb: Path, config: Path, runtime_watchdog: str | None) -> dict[str, Any]:
    """Everything checked, then okcell installed into ``root``; returns the manifest written there."""
    arch = root_architecture(root)
    fields = package_fields(deb)
    if fields["architecture"] not in (arch, "all"):
        raise TargetError(f"{deb}: built for {fields['architecture']}, but {root} is an {arch} root file system "
                          f"(make deb DEB_ARCH={arch})")
    check_python(root, deb, fields["depends"])
    check_device_config(config)
    if runtime_watchdog is not None and not TIMESPAN.fullmatch(runtime_watchdog):
        raise TargetError(f"--runtime-watchdog {runtime_watchdog!r}: expected a systemd time span such as 30s or 2min")

    with mounted(root) as root:
        staging = root / "tmp" / f"okcell-image-{os.getpid()}"
        staging.mkdir(parents=True)
        try:
            shutil.copy(deb, staging / deb.name)
            # --force-confold: a cell.yaml already in the image stays; it is replaced below anyway
            run(root, ["dpkg", "--force-confold", "-i", f"/{staging.relative_to(root)}/{deb.name}"])
        finally:
            shutil.rmtree(staging)
        run(root, ["systemctl", "enable", *UNITS])  # offline in a chroot: the links of the units' [Install]
        version = run(root, ["/opt/okcell/bin/okcell", "--version"]).stdout.strip()
    missing = [unit for unit in UNITS if not (root / WANTS / unit).is_symlink()]
    if missing:
        raise TargetError(f"{root}: {', '.join(missing)} not enabled (no link in /{WANTS})")
    _write(root / CONFIG, config.read_bytes(), 0o644)
    if runtime_watchdog is not None:
        _write(root / WATCHDOG_DROPIN, (f"# okcell_rootfs.py: the hardware watchdog, fed by systemd (docs/jetson.md)\n"
                                        f"[Manager]\nRuntimeWatchdogSec={runtime_watchdog}\n"
                                        f"RebootWatchdogSec=10min\n").encode(), 0o644)
    manifest = {
        "okcell": version,
        "package": {"file": deb.name, "version": fields["version"], "architecture": fields["architecture"],
                    "sha256": sha256_file(deb)},
        "cell_yaml": {"source": str(config.resolve()), "sha256": sha256_file(config)},
        "units_enabled": list(UNITS),
        "runtime_watchdog": runtime_watchdog,
        "root": {"architecture": arch, "os": _os_name(root)},
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
    }
    _write(root / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode(), 0o644)
    return manifest


def _os_name(root: Path) -> str:
    text = (root / "etc" / "os-release").read_text()
    found = re.search(r'^PRETTY_NAME="?([^"\n]*)"?$', text, re.MULTILINE)
    return found.group(1) if found else "unknown"


def _write(path: Path, data: bytes, mode: int) -> None:
    """``data`` into ``path`` through a temporary file renamed over it (a killed run leaves the old file or the new)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_bytes(data)
    partial.chmod(mode)
    partial.replace(path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rootfs", type=Path, help="the root file system (L4T: Linux_for_Tegra/rootfs)")
    parser.add_argument("--deb", type=Path, required=True, help="okcell's package for the root's architecture")
    parser.add_argument("--config", type=Path, required=True, help="this device's cell.yaml")
    parser.add_argument("--runtime-watchdog", metavar="TIMESPAN",
                        help="let systemd feed the hardware watchdog (RuntimeWatchdogSec=, e.g. 30s)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("okcell_rootfs: run as root (sudo): it mounts /proc and /dev in the root and runs dpkg in a chroot",
              file=sys.stderr)
        return 2
    try:
        manifest = install(args.rootfs, args.deb, args.config, args.runtime_watchdog)
    except (TargetError, ConfigError) as error:
        print(f"okcell_rootfs: {error}", file=sys.stderr)
        return 2
    print(f"okcell_rootfs: {manifest['okcell']} installed into {args.rootfs} ({manifest['root']['os']}, "
          f"{manifest['root']['architecture']}); units {', '.join(UNITS)} enabled; /{CONFIG} from {args.config}; "
          f"recorded in /{MANIFEST}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
