"""The ``okcell`` command line: one module per command, each with ``add_arguments`` and ``run``."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from okcell import __version__
from okcell.schema import ConfigError

COMMANDS: dict[str, tuple[str, str]] = {
    "export": ("edge.cli.export_model", "DINOv2 checkpoint -> ONNX (+ JSON sidecar), with parity check"),
    "build-engine": ("edge.cli.build_engine", "ONNX -> TensorRT engine on this machine (FP16/INT8)"),
    "demo-data": ("edge.cli.demo_data", "make OK/NOK demo parts from scikit-image textures"),
    "synthesize": ("edge.cli.synthesize", "make synthetic defective parts from OK images"),
    "keygen": ("edge.cli.keygen", "make an ed25519 key pair for signed recipes and bundles"),
    "calibrate": ("edge.cli.calibrate", "build a recipe: reference index, thresholds, report"),
    "inspect": ("edge.cli.inspect_images", "inspect image files with a recipe"),
    "evaluate": ("edge.cli.evaluate", "accuracy on a data set with known defects: calibrate, inspect, report"),
    "bench": ("edge.cli.bench", "measure p50/p99 and peak memory"),
    "cameras": ("edge.cli.cameras", "list GenICam cameras and their main features"),
    "run": ("edge.cli.run", "run the inspection cell from a config file"),
    "bundle": ("edge.cli.bundle", "release bundles: create, inspect, install (with self-test and rollback), list"),
    "recipe": ("edge.cli.recipe", "golden images for a recipe; push a recipe onto a running cell (self-test, switch)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="okcell",
        description="okcell: a visual inspection cell (GenICam camera -> DINOv2 -> reference bank -> OK/NOK -> PLC).",
    )
    parser.add_argument("--version", action="version", version=f"okcell {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, summary) in COMMANDS.items():
        sub = commands.add_parser(name, help=summary, description=summary)
        sub.set_defaults(module=module_name)
        importlib.import_module(module_name).add_arguments(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(importlib.import_module(args.module).run(args))
    except ConfigError as exc:
        print(f"okcell {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
