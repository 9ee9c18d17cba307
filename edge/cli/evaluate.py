"""``okcell evaluate``: calibrate on a data set's ``train/ok`` with the calibrate options given, inspect its
``test/`` images with the cell's inspector, and report accuracy, risk, pixel metrics, cycle time, robustness and
(optionally) synthetic-defect recall: ``OUT/evaluation.json``, ``OUT/evaluation.md``, PNG figures, and the recipe
in ``OUT/recipe``. ``--compare A.json B.json ...`` prints earlier runs side by side.

Exit status 0, or 1 when any image gave ERROR (the run goes on; errors are counted and listed).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from edge.cli.calibrate import add_settings_arguments, settings_from_args
from okcell.schema import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, metavar="DIR",
                        help="data set: train/ok, test/ok, test/nok/<defect>, optional ground_truth/<defect>/<name>_mask.png")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="output folder (new, empty or an earlier evaluate output, which is replaced)")
    parser.add_argument("--label", default=None, help="name of this run in --compare tables (default: the --out folder name)")
    parser.add_argument("--robustness", action=argparse.BooleanOptionalAction, default=True,
                        help="false rejects of the test OK images under brightness +-20 %%, blur, a 4 px shift and "
                             "+-3 deg rotation (6 extra inspections per test OK image; default on)")
    parser.add_argument("--synthetic", type=int, default=0, metavar="N",
                        help="also draw N synthetic defects of each kind on the test OK images and report their "
                             "recall next to the real defects' (default 0: off)")
    parser.add_argument("--worst", type=int, default=6, metavar="N",
                        help="parts per row on the worst-parts sheet (default 6; 0: no sheet)")
    parser.add_argument("--compare", type=Path, nargs="+", metavar="JSON",
                        help="print these evaluation.json results side by side (Markdown) instead of evaluating")
    add_settings_arguments(parser, model_required=False)


def run(args: argparse.Namespace) -> int:
    from calibration.eval_report import compare, load_result

    if args.compare:
        if args.data is not None:
            raise ConfigError("--compare prints earlier results; give it without --data")
        print(compare([load_result(path) for path in args.compare]))
        return 0
    missing = [flag for flag, value in (("--data", args.data), ("--model", args.model), ("--out", args.out)) if value is None]
    if missing:
        raise ConfigError(f"{', '.join(missing)} required (or --compare JSON...)")
    return _evaluate(args)


def _evaluate(args: argparse.Namespace) -> int:
    from calibration.eval_data import EvalSet
    from calibration.eval_report import markdown
    from calibration.eval_inspect import say
    from calibration.eval_run import OWNED, RESULT_FILE, EvalOptions, evaluate
    from calibration.synthetic import prepare_output_folder
    from edge.backends.select import open_extractor
    from edge.runtime.inspector import Inspector
    from okcell.recipe import Recipe

    data = EvalSet.open(args.data)
    settings = settings_from_args(args, data.train_ok)
    options = EvalOptions(label=args.label or args.out.resolve().name, robustness=args.robustness,
                          synthetic_per_kind=args.synthetic, worst=args.worst)
    options.validate()
    prepare_output_folder(args.out, RESULT_FILE, OWNED)
    (args.out / RESULT_FILE).write_text(json.dumps({"status": "running"}) + "\n")
    extractor = open_extractor(args.model, args.backend, args.engine, args.threads)

    def open_inspector(recipe_dir: Path) -> Inspector:
        return Inspector(extractor, Recipe.load(recipe_dir, extractor.sidecar, threads=args.threads or -1))

    try:
        result = evaluate(extractor, args.model, settings, data, args.out, options, open_inspector)
    except ConfigError as exc:
        (args.out / RESULT_FILE).write_text(json.dumps({"status": "failed", "error": str(exc)}) + "\n")
        raise
    finally:
        extractor.close()
    (args.out / RESULT_FILE).write_text(json.dumps(result, indent=1) + "\n")
    report = markdown(result)
    (args.out / "evaluation.md").write_text(report + "\n")
    say(f"wrote {args.out / RESULT_FILE}, {args.out / 'evaluation.md'} and {len(result['figures'])} figure(s)")
    print(report.split("\n## Per defect type")[0])
    return 1 if result["errors"] else 0
