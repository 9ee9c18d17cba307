"""``okcell demo-data``: write OK/NOK demo parts made from scikit-image texture photographs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from calibration.demo_data import PART_TYPES, DemoCounts

    defaults = DemoCounts()
    parser.add_argument("--out", type=Path, required=True, help="output folder (new, empty or an earlier demo set)")
    parser.add_argument("--part", choices=sorted(PART_TYPES), default="brick", help="texture used as the part surface")
    parser.add_argument("--size", type=int, default=256, help="part image size in pixels (square)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same images")
    parser.add_argument("--train-ok", type=int, default=defaults.train_ok, help="reference OK parts")
    parser.add_argument("--calib-nok", type=int, default=defaults.calib_nok_per_defect,
                        help="labelled NOK parts per defect kind for calibration")
    parser.add_argument("--holdout-ok", type=int, default=defaults.holdout_ok, help="hold-out OK parts")
    parser.add_argument("--holdout-nok", type=int, default=defaults.holdout_nok_per_defect,
                        help="hold-out NOK parts per defect kind")


def run(args: argparse.Namespace) -> int:
    from calibration.demo_data import DemoCounts, write_demo_set
    from okcell.schema import ConfigError

    counts = DemoCounts(args.train_ok, args.calib_nok, args.holdout_ok, args.holdout_nok)
    for field, value in vars(counts).items():
        if value < 0:
            raise ConfigError(f"--{field.replace('_', '-')} must be >= 0, found {value}")
    manifest = write_demo_set(args.out, args.part, args.size, counts, args.seed)
    print(f"demo data ({manifest['part']}, {manifest['size']} px, seed {manifest['seed']}) written to {args.out}")
    print(json.dumps(manifest["counts"]))
    return 0
