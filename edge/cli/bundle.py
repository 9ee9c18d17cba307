"""``okcell bundle create|inspect|install|rollback|list|keygen``: release bundles from the laptop to the cells."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from edge.cli import keygen

if TYPE_CHECKING:
    from edge.deploy.install import Installer

SERVICES = ("systemd", "trial", "none")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="bundle_command", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="make a release bundle (model, recipes, cell.yaml, golden images)")
    create.add_argument("--model", type=Path, required=True, metavar="MODEL.onnx", help="model (its .json beside it)")
    create.add_argument("--recipe", type=Path, action="append", required=True, metavar="DIR",
                        help="recipe folder (repeatable; the first is the active recipe; recipes are named by folder)")
    create.add_argument("--golden", action="append", required=True, metavar="[RECIPE=]DIR",
                        help="folder of candidate golden images for RECIPE (default: the active one): held-out OK "
                             "parts, known NOK parts; repeatable")
    create.add_argument("--golden-count", type=int, default=3, metavar="N", help="golden images per folder (default 3)")
    create.add_argument("--tolerance", type=float, default=0.01,
                        help="largest score difference the self-test accepts on the cell (default 0.01)")
    create.add_argument("--config", type=Path, metavar="CELL.yaml",
                        help="cell.yaml for the release: every key but model and recipe is kept (camera, trigger, "
                             "archive, opcua...; paths in it must be absolute paths on the cell)")
    create.add_argument("--name", required=True, help="release name, e.g. the line and product")
    create.add_argument("--version", help="release version (default: UTC date and time)")
    create.add_argument("--precision", choices=("fp16", "fp32"), default="fp16",
                        help="precision of the TensorRT engine the cell builds (default fp16)")
    create.add_argument("--requires-okcell", metavar="VERSION",
                        help="oldest okcell that may install it (default: this okcell's version)")
    create.add_argument("--sign-key", type=Path, metavar="okcell.key", help="sign the bundle (okcell keygen)")
    create.add_argument("--out", type=Path, required=True, metavar="FILE.tar", help="bundle file to write")

    inspect = actions.add_parser("inspect", help="show a bundle's manifest and check every file")
    inspect.add_argument("bundle", type=Path, metavar="BUNDLE.tar")
    inspect.add_argument("--verify-key", type=Path, metavar="okcell.pub", help="require a valid signature by this key")

    install = actions.add_parser("install", help="verify, unpack, build the engine, self-test, switch, restart, "
                                                 "wait for READY (or switch back)")
    install.add_argument("bundle", type=Path, metavar="BUNDLE.tar")
    install.add_argument("--public-key", type=Path, metavar="okcell.pub",
                         help="refuse bundles not signed with this key (default: ROOT/etc/okcell/okcell.pub if present)")
    install.add_argument("--keep", type=int, default=3, metavar="N", help="releases to keep (default 3)")
    _target_arguments(install)

    rollback = actions.add_parser("rollback", help="switch back to the previous (or a given) release")
    rollback.add_argument("--to", metavar="RELEASE_ID", help="release to switch to (default: the previous one)")
    _target_arguments(rollback)

    listing = actions.add_parser("list", help="installed releases, current and previous marked")
    listing.add_argument("--root", type=Path, default=Path("/"), help="file system root of the cell (default /)")

    keygen.add_arguments(actions.add_parser("keygen", help="make an ed25519 key pair for signing bundles and recipes"))


def _target_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", type=Path, default=Path("/"),
                        help="file system root of the cell (default /; a mounted image or a test folder)")
    parser.add_argument("--config", type=Path, metavar="CELL.yaml",
                        help="the device's cell.yaml (default ROOT/etc/okcell/cell.yaml)")
    parser.add_argument("--service", choices=SERVICES, default="systemd",
                        help="how the cell is restarted: systemd (systemctl restart okcell, wait until active), trial "
                             "(start `okcell run` once, wait for READY=1, stop it: machines without a service "
                             "manager), none (no restart and no READY check: building an image)")
    parser.add_argument("--unit", default="okcell.service", help="systemd unit of the cell (default okcell.service)")
    parser.add_argument("--ready-timeout", type=float, default=300.0, metavar="S",
                        help="seconds to wait for READY=1 before switching back (default 300)")


def run(args: argparse.Namespace) -> int:
    from edge.deploy.bundle import InstallError

    try:
        return ACTIONS[args.bundle_command](args)
    except InstallError as exc:
        print(f"okcell bundle {args.bundle_command}: failed: {exc}", file=sys.stderr, flush=True)
        return 1


def _create(args: argparse.Namespace) -> int:
    from edge.deploy.create import BundleSpec, create_bundle

    golden = []
    for entry in args.golden:
        name, separator, folder = entry.rpartition("=")
        golden.append((name if separator else None, Path(folder)))
    spec = BundleSpec(model=args.model, recipes=args.recipe, golden=golden, name=args.name, config=args.config,
                      golden_count=args.golden_count, tolerance=args.tolerance, precision=args.precision,
                      sign_key=args.sign_key)
    if args.version:
        spec.version = args.version
    if args.requires_okcell:
        spec.requires_okcell = args.requires_okcell
    manifest = create_bundle(spec, args.out)
    size = args.out.stat().st_size
    print(f"{args.out}: release {manifest.release_id} ({manifest.name} {manifest.version}), {len(manifest.files)} "
          f"files, {size / 1e6:.1f} MB, {len(manifest.golden)} golden image(s), "
          + ("signed" if args.sign_key else "unsigned"))
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from edge.deploy.bundle import open_bundle

    bundle = open_bundle(args.bundle, args.verify_key)
    bundle.verify_files()
    manifest = bundle.manifest
    signature = ("none" if bundle.signer is None else
                 f"key {bundle.signer}" + (" (verified)" if bundle.signature_checked else " (not checked: --verify-key)"))
    print(f"release {manifest.release_id}: {manifest.name} {manifest.version}, created {manifest.created} with okcell "
          f"{manifest.okcell_version}, needs okcell >= {manifest.requires_okcell}")
    print(f"  signature: {signature}")
    print(f"  recipes: {', '.join(sorted(manifest.recipes))} (active: {manifest.active_recipe}); "
          f"engine precision {manifest.engine_precision}")
    print(f"  self-test: {len(manifest.golden)} golden image(s), tolerance {manifest.tolerance:g}")
    for image in manifest.golden:
        print(f"    {image.file}: {image.decision} {image.score:.4f} (recipe {image.recipe})")
    print(f"  files: {len(manifest.files)}, {bundle.total_bytes / 1e6:.1f} MB, every sha256 checked")
    return 0


def _installer(args: argparse.Namespace, keep: int = 3, public_key: Path | None = None) -> Installer:
    from edge.deploy.install import InstallOptions, Installer
    from edge.deploy.releases import CONFIG_FILE, STATE_DIR
    from edge.deploy.service import NoService, ServiceManager, SystemdService, TrialRun

    from okcell.schema import ConfigError

    if args.service == "systemd" and args.root.resolve() != Path("/"):
        raise ConfigError(f"--service systemd restarts this machine's {args.unit}, not one under --root {args.root}; "
                          "give --service trial or none with --root")
    service: ServiceManager
    if args.service == "systemd":
        service = SystemdService(args.unit)
    elif args.service == "trial":
        service = TrialRun(args.config or args.root / CONFIG_FILE, args.root / STATE_DIR)
    else:
        service = NoService()
    options = InstallOptions(root=args.root, public_key=public_key, config=args.config, service=service,
                             ready_timeout_s=args.ready_timeout, keep=keep)
    return Installer(options, say=lambda line: print(line, flush=True))


def _install(args: argparse.Namespace) -> int:
    from okcell.schema import ConfigError

    if args.keep < 2:
        raise ConfigError(f"--keep must be >= 2 (the current and the previous release), found {args.keep}")
    _installer(args, args.keep, args.public_key).install(args.bundle)
    return 0


def _rollback(args: argparse.Namespace) -> int:
    _installer(args).rollback(args.to)
    return 0


def _list(args: argparse.Namespace) -> int:
    from edge.deploy.releases import ReleaseStore

    store = ReleaseStore(args.root)
    releases = store.releases()
    if not releases:
        print(f"no release installed in {store.folder}")
        return 0
    marks = {store.current: "current", store.previous: "previous"}
    for release in releases:
        manifest, record = release.manifest, release.record
        state = marks.get(release.release_id) or ("installed" if record else "unfinished")
        print(f"{release.release_id}  {state:<10} {manifest.name} {manifest.version}  installed "
              f"{record.get('installed_at', '-')}  okcell >= {manifest.requires_okcell}  engine: {record.get('engine', '-')}")
    return 0


def _keygen(args: argparse.Namespace) -> int:
    return keygen.run(args)


ACTIONS = {"create": _create, "inspect": _inspect, "install": _install, "rollback": _rollback, "list": _list,
           "keygen": _keygen}
