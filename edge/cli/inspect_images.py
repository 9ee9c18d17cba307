"""``okcell inspect``: inspect image files (or folders of them, recursively) with a recipe.

One line per image (JSON lines with ``--json``); a bad image (unreadable, truncated, a broken or looping symbolic
link, not inspectable with the recipe, its overlay not writable) gives an ERROR line naming the file once and the rest
are still inspected; the exit status is 1 if any image gave ERROR. ``--truth-from-folders`` scores the decisions
against ``ok`` / ``nok/<defect>`` folder names (confusion table, false-reject and escape rates, image AUROC).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from okcell.images import IMAGE_SUFFIXES
from okcell.schema import ConfigError
from okcell.names import BACKENDS, INSPECTION_TIMINGS



def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", type=Path, nargs="+", metavar="PATH", help="image files or folders (searched recursively)")
    parser.add_argument("--recipe", type=Path, required=True, help="recipe directory from `okcell calibrate`")
    parser.add_argument("--model", type=Path, required=True, help="the exported ONNX model the recipe was calibrated with")
    parser.add_argument("--backend", choices=BACKENDS, default="auto",
                        help="inference backend (auto: TensorRT if an engine is given and usable, else ONNX Runtime)")
    parser.add_argument("--engine", type=Path, default=None, help="TensorRT engine built from --model (GPU machines)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for inference and search (default: all)")
    parser.add_argument("--verify-key", type=Path, default=None, metavar="PUB",
                        help="accept only a recipe signed with the private key of this public key (okcell keygen)")
    parser.add_argument("--json", action="store_true", help="print JSON lines instead of text")
    parser.add_argument("--out", type=Path, default=None, help="write heatmap overlays (PNG) and a score summary here")
    parser.add_argument("--colormap", choices=("turbo", "jet"), default="turbo", help="heatmap colours (default turbo)")
    parser.add_argument("--truth-from-folders", action="store_true",
                        help="images under an 'ok' folder are truly OK, under 'nok/<defect>' truly NOK: print a "
                             "confusion table, false-reject rate, escape rate and image AUROC")


def collect_images(paths: list[Path]) -> list[tuple[Path, Path]]:
    """(image file, overlay name relative to --out) for every PATH; ConfigError for a PATH that does not exist.
    Symbolic links with an image suffix are listed even when broken or looping, so that they get an ERROR line."""
    found: list[tuple[Path, Path]] = []
    for path in paths:
        if path.is_dir():
            files = sorted(p for p in path.rglob("*")
                           if p.suffix.lower() in IMAGE_SUFFIXES and (p.is_file() or p.is_symlink()))
            if not files:
                raise ConfigError(f"{path}: folder holds no image files ({', '.join(IMAGE_SUFFIXES)})")
            found += [(f, f.relative_to(path)) for f in files]
        elif path.exists() or path.is_symlink():
            found.append((path, Path(path.name)))
        else:
            raise ConfigError(f"{path}: no such file or folder")
    used: set[Path] = set()
    named = []
    for number, (path, relative) in enumerate(found):
        target = relative.with_suffix(".png")
        if target in used:  # same name from two PATH arguments
            target = target.with_name(f"{number:05d}_{target.name}")
        used.add(target)
        named.append((path, target))
    return named


def check_out(out: Path, paths: list[Path]) -> None:
    """Refuse an --out that would write overlays into (or over) the inspected images."""
    resolved = out.resolve()
    for path in paths:
        source = path.resolve()
        if source.is_dir() and (resolved == source or source in resolved.parents):
            raise ConfigError(f"--out {out}: lies inside the inspected folder {path}; choose a folder outside it")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a folder")


def result_record(path: Path, result: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "path": str(path),
        "decision": result.decision,
        "score": None if result.score is None else round(float(result.score), 6),
        "threshold": round(float(result.threshold), 6),
    }
    if result.nearest_label is not None:
        record["nearest_label"] = result.nearest_label
    record["timings_ms"] = {k: round(v, 2) for k, v in sorted(result.timings_ms.items(),
                                                             key=lambda kv: INSPECTION_TIMINGS.index(kv[0]) if kv[0] in INSPECTION_TIMINGS else 99)}
    if result.error is not None:
        record["error"] = result.error
    return record


def text_line(record: dict[str, Any]) -> str:
    if record["decision"] == "ERROR":
        return f"ERROR  {record['path']}: {record['error']}"
    label = f"  nearest {record['nearest_label']}" if "nearest_label" in record else ""
    total = record["timings_ms"].get("total", 0.0)
    return f"{record['decision']:<5}  score {record['score']:.4f} (thr {record['threshold']:.4f})  {record['path']}{label}  {total:.0f} ms"


def run(args: argparse.Namespace) -> int:
    from okcell.recipe import Recipe
    from edge.backends.select import open_extractor
    from calibration.evaluation import Tally
    from edge.runtime.inspector import Inspector
    from okcell.sidecar import load_verified

    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads must be a positive number, found {args.threads}")
    images = collect_images(args.paths)
    if args.out is not None:
        check_out(args.out, args.paths)
    sidecar = load_verified(args.model)
    recipe = Recipe.load(args.recipe, sidecar, threads=args.threads or -1, public_key=args.verify_key)
    extractor = open_extractor(args.model, backend=args.backend, engine_path=args.engine, threads=args.threads)
    inspector = Inspector(extractor, recipe)
    summary_out = sys.stderr if args.json else sys.stdout
    print(f"inspect: {len(images)} image(s), recipe {recipe.recipe_id}, threshold {recipe.threshold:.4f}, "
          f"backend {extractor.backend_name}", file=summary_out)
    tally = Tally()
    timings: dict[str, list[float]] = {}
    errors = 0
    try:
        for path, target in images:
            record = _inspect_file(inspector, path, None if args.out is None else args.out / target, args.colormap)
            errors += record["decision"] == "ERROR"
            print(json.dumps(record) if args.json else text_line(record), flush=True)
            if record["decision"] != "ERROR":
                for stage, value in record["timings_ms"].items():
                    timings.setdefault(stage, []).append(value)
            tally.add(path, record["decision"], record["score"])
    finally:
        extractor.close()
    _print_summary(tally, timings, errors, len(images), recipe, args, summary_out)
    return 1 if errors else 0


def _inspect_file(inspector: Any, path: Path, overlay: Path | None, colormap: str) -> dict[str, Any]:
    """The record of one image, its heatmap overlay written to ``overlay`` (if given). Never raises: whatever goes
    wrong with this image is an ERROR record with the reason (without the path, which the record holds)."""
    import cv2

    from okcell.images import ImageError, read_image

    try:
        frame = read_image(path)
    except ImageError as exc:
        return _error_record(inspector, path, exc.reason)
    except Exception as exc:  # e.g. out of memory decoding a huge file
        return _error_record(inspector, path, f"cannot read ({type(exc).__name__}: {exc})")
    result = inspector.inspect(frame)  # never raises: a fault is an ERROR result
    record = result_record(path, result)
    if overlay is None:
        return record
    try:
        overlay.parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(overlay), inspector.overlay(frame, result, colormap)):
            raise OSError("cv2.imwrite failed")
    except Exception as exc:
        outcome = record["error"] if record["decision"] == "ERROR" else f"{record['decision']}, score {record['score']:.4f}"
        return _error_record(inspector, path, f"{outcome}; heatmap overlay not written to {overlay} "
                                              f"({type(exc).__name__}: {exc})")
    return record


def _error_record(inspector: Any, path: Path, reason: str) -> dict[str, Any]:
    from okcell.result import InspectionResult

    return result_record(path, InspectionResult(decision="ERROR", score=None, threshold=inspector.threshold, error=reason))


def _print_summary(tally: Any, timings: dict[str, list[float]], errors: int, total: int, recipe: Any,
                   args: argparse.Namespace, out: Any) -> None:
    print(f"\n{total - errors} inspected, {errors} error(s)", file=out)
    if timings:
        stages = [s for s in INSPECTION_TIMINGS if s in timings]
        parts = [f"{s} {np.percentile(timings[s], 50):.1f}/{np.percentile(timings[s], 99):.1f}" for s in stages]
        print("timings ms p50/p99: " + ", ".join(parts), file=out)
    if not args.truth_from_folders:
        return
    print("\nconfusion (rows: truth from folders, columns: decision)", file=out)
    for line in tally.table():
        print("  " + line, file=out)
    rejected, ok_total = tally.false_rejects
    escaped, nok_total = tally.escapes
    target = recipe.manifest.get("risk", {}).get("target_frr")
    target_text = f" (calibration target {100 * target:.1f} %)" if isinstance(target, (int, float)) else ""
    from calibration.thresholds import clopper_pearson_upper

    if ok_total:
        bound = 100 * clopper_pearson_upper(rejected, ok_total)
        print(f"false-reject rate {100 * rejected / ok_total:.1f} % = {rejected}/{ok_total}{target_text}, "
              f"95 % upper bound {bound:.1f} %", file=out)
    if nok_total:
        bound = 100 * clopper_pearson_upper(escaped, nok_total)
        print(f"escape rate {100 * escaped / nok_total:.1f} % = {escaped}/{nok_total}, 95 % upper bound {bound:.1f} %",
              file=out)
    value = tally.image_auroc
    print(f"image AUROC {value:.4f}" if value is not None else "image AUROC: needs OK and NOK images", file=out)
    if args.out is not None and ok_total:
        _write_score_report(tally, recipe, args.out / "scores.png")
        print(f"score histogram {args.out / 'scores.png'}", file=out)


def _write_score_report(tally: Any, recipe: Any, path: Path) -> None:
    """Hold-out score histogram with the recipe's threshold (the calibration report's layout)."""
    from calibration.report import write_report
    from calibration.thresholds import risk_at

    ok = np.array(tally.ok_scores)
    nok = {name: np.array(scores) for name, scores in tally.nok_by_defect.items()}
    risk = risk_at(recipe.threshold, ok, nok, float(recipe.manifest["risk"]["target_frr"]))
    total_nok = sum(len(s) for s in nok.values())
    header = [f"okcell inspect: recipe {recipe.recipe_id}", f"{len(ok)} OK, {total_nok} NOK images (truth from folders)"]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_report(path, ok, nok, risk, header)
