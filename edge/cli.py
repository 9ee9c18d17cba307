"""The ``okcell`` command line: one module per command, each with ``add_arguments`` and ``run``."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from okcell import __version__
from okcell.schema import ConfigError

COMMANDS: dict[str, tuple[str, str]] = {
    "export": ("okcell.export.cli_export", "DINOv2 checkpoint -> ONNX (+ JSON sidecar), with parity check"),
    "build-engine": ("okcell.export.cli_build_engine", "ONNX -> TensorRT engine on this machine (FP16/INT8)"),
    "demo-data": ("okcell.calibration.cli_demo_data", "make OK/NOK demo parts from scikit-image textures"),
    "synthesize": ("okcell.calibration.cli_synthesize", "make synthetic defective parts from OK images"),
    "calibrate": ("okcell.calibration.cli_calibrate", "build a recipe: reference index, thresholds, report"),
    "inspect": ("okcell.edge.cli_inspect", "inspect image files with a recipe"),
    "bench": ("okcell.edge.cli_bench", "measure p50/p99 and peak memory"),
    "cameras": ("okcell.edge.cli_cameras", "list GenICam cameras and their main features"),
    "run": ("okcell.edge.cli_run", "run the inspection cell from a config file"),
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
