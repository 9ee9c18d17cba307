"""``okcell synthesize``: synthetic defective references (and defect masks) from your own OK images."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from", dest="source", type=Path, required=True, metavar="OK_DIR",
                        help="folder of OK images (searched recursively)")
    parser.add_argument("--out", type=Path, required=True,
                        help="output folder: nok/<kind>/ images, masks/<kind>/ masks (new, empty or an earlier output)")
    parser.add_argument("--kinds", default="scratch,stain,hole,contamination",
                        help="comma-separated defect kinds (default: all)")
    parser.add_argument("--count", type=int, default=10, help="images per defect kind")
    parser.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same images")


def run(args: argparse.Namespace) -> int:
    from calibration.synthetic import parse_kinds, synthesize_folder

    kinds = parse_kinds(args.kinds)
    manifest = synthesize_folder(args.source, args.out, kinds, args.count, args.seed)
    print(f"{manifest['images']} synthetic NOK images from {manifest['sources']} OK images written to {args.out}")
    return 0
