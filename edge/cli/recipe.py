"""``okcell recipe golden|push``: golden images for a recipe (calibration machine), and a recipe onto a running cell
without a whole release (verify, self-test, copy, switch, confirm or switch back; docs/deploy.md)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

RELOADERS = ("systemd", "signal")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="recipe_command", required=True, metavar="ACTION")
    golden = actions.add_parser("golden", help="store golden self-test images in a recipe folder (selftest/), "
                                               "picked and scored with its model")
    golden.add_argument("recipe", type=Path, metavar="RECIPE_DIR")
    golden.add_argument("--model", type=Path, required=True, metavar="MODEL.onnx", help="the recipe's model")
    golden.add_argument("--golden", type=Path, action="append", required=True, metavar="DIR",
                        help="folder of candidate images: held-out OK parts, known NOK parts (repeatable)")
    golden.add_argument("--golden-count", type=int, default=3, metavar="N", help="golden images per folder (default 3)")
    golden.add_argument("--tolerance", type=float, default=0.01,
                        help="largest score difference the self-test accepts on the cell (default 0.01)")

    push = actions.add_parser("push", help="verify a recipe, self-test it with the cell's model, copy it into the "
                                           "cell's recipes folder and with --activate switch the running cell to it")
    push.add_argument("recipe", type=Path, metavar="RECIPE_DIR",
                      help="recipe folder with golden images (okcell recipe golden); named by its folder on the cell")
    push.add_argument("--root", type=Path, default=Path("/"), help="file system root of the cell (default /)")
    push.add_argument("--config", type=Path, metavar="CELL.yaml",
                      help="the device's cell.yaml (default ROOT/etc/okcell/cell.yaml)")
    push.add_argument("--public-key", type=Path, metavar="okcell.pub",
                      help="refuse recipes not signed with this key (default: ROOT/etc/okcell/okcell.pub if present; "
                           "the cell's recipe_public_key is always required)")
    push.add_argument("--activate", action="store_true",
                      help="switch the running cell to the recipe (RECIPES/.active + reload) and wait until it reports "
                           "the recipe loaded; else switch back")
    push.add_argument("--service", choices=RELOADERS, default="systemd",
                      help="how the running cell is asked to reload: systemd (systemctl reload UNIT) or signal "
                           "(SIGHUP to the okcell run process that last reported a recipe load)")
    push.add_argument("--unit", default="okcell.service", help="systemd unit of the cell (default okcell.service)")
    push.add_argument("--timeout", type=float, default=120.0, metavar="S",
                      help="seconds to wait for the cell to report the recipe loaded before switching back (default 120)")


def run(args: argparse.Namespace) -> int:
    return _golden(args) if args.recipe_command == "golden" else _push(args)


def _golden(args: argparse.Namespace) -> int:
    from edge.deploy.selftest import add_recipe_golden

    golden = add_recipe_golden(args.recipe, args.model, args.golden, args.golden_count, args.tolerance)
    print(f"{args.recipe}: {len(golden.images)} golden image(s) for recipe {golden.recipe_id}, tolerance "
          f"{golden.tolerance:g}")
    for image in golden.images:
        print(f"  {image.file}: {image.decision} {image.score:.4f} (from {image.source})")
    return 0


def _push(args: argparse.Namespace) -> int:
    from edge.deploy.bundle import InstallError
    from edge.deploy.recipe_push import PushOptions, RecipePusher
    from edge.deploy.service import CellReloader, SignalCell, SystemdService
    from okcell.schema import ConfigError

    if args.activate and args.service == "systemd" and args.root.resolve() != Path("/"):
        raise ConfigError(f"--service systemd reloads this machine's {args.unit}, not one under --root {args.root}; "
                          "give --service signal with --root")
    reloader: CellReloader = SystemdService(args.unit) if args.service == "systemd" else SignalCell()
    options = PushOptions(root=args.root, config=args.config, public_key=args.public_key, activate=args.activate,
                          reloader=reloader, timeout_s=args.timeout)
    try:
        RecipePusher(options, say=lambda line: print(line, flush=True)).push(args.recipe)
    except InstallError as exc:
        print(f"okcell recipe push: failed: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0
