"""``okcell bench stages``: p50/p99 of every inspection stage (preprocess, backbone, search, heatmap, total, plus
the overlay PNG the archive writes) at each input size, the backend that ran them, and peak RSS.

Each size runs in its own process so that its peak RSS is its own. Per size: demo parts are generated, a recipe is
calibrated on them (default settings), then hold-out parts are inspected ``--frames`` times after ``--warmup``
untimed inspections. Models are ``MODELS_DIR/dinov2_vits14_<size>.onnx``, exported from the embedded default if
missing (the names ``make demo`` uses).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from okcell.memory import peak_rss_mb, reset_peak_rss
from okcell.names import BACKENDS, INSPECTION_TIMINGS
from okcell.progress import Progress

BENCH_TIMINGS = (*INSPECTION_TIMINGS, "overlay_png")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", default="224,448", help="input sizes (default 224,448)")
    parser.add_argument("--models-dir", type=Path, default=Path("demo-models"),
                        help="where dinov2_vits14_<size>.onnx live or are exported to (default demo-models)")
    parser.add_argument("--layers", default="9", metavar="N[,N...]",
                        help="transformer blocks for models this bench exports (default 9, as make demo)")
    parser.add_argument("--backend", choices=BACKENDS, default="auto", help="inference backend")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for inference and search (default: all)")
    parser.add_argument("--frames", type=int, default=30, help="timed inspections per size (default 30)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed inspections first (default 3)")
    parser.add_argument("--train", type=int, default=20, help="OK parts the bench recipe is calibrated on (default 20)")
    parser.add_argument("--json-out", type=Path, default=None, help="also write the figures as JSON")
    parser.add_argument("--one-size", type=int, default=None, help=argparse.SUPPRESS)  # child process


def model_path(models_dir: Path, size: int) -> Path:
    return models_dir / f"dinov2_vits14_{size}.onnx"


def run(args: argparse.Namespace) -> int:
    if args.one_size is not None:
        print(json.dumps(measure_size(args)))
        return 0
    from okcell.schema import ConfigError

    try:
        sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--sizes {args.sizes!r}: expected comma-separated pixel sizes like 224,448") from None
    results = []
    for size in sizes:
        ensure_model(args.models_dir, size, args.layers)
        command = [sys.executable, "-m", "edge.cli.main", "bench", "stages", "--one-size", str(size),
                   "--models-dir", str(args.models_dir), "--backend", args.backend, "--frames", str(args.frames),
                   "--warmup", str(args.warmup), "--train", str(args.train)]
        if args.threads is not None:
            command += ["--threads", str(args.threads)]
        print(f"bench stages: {size}x{size} in a fresh process", file=sys.stderr, flush=True)
        child = subprocess.run(command, stdout=subprocess.PIPE, text=True)
        if child.returncode != 0:
            print(f"bench stages: size {size} failed (exit {child.returncode})", file=sys.stderr)
            return child.returncode
        results.append(json.loads(child.stdout.strip().splitlines()[-1]))
    print_table(results)
    if args.json_out is not None:
        args.json_out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


def ensure_model(models_dir: Path, size: int, layers: str) -> Path:
    """The model for ``size``, exported from the embedded default when missing (the table names its blocks)."""
    from okcell.schema import ConfigError

    path = model_path(models_dir, size)
    if not path.is_file():
        from export.onnx_export import ExportOptions, export_model

        try:
            blocks = tuple(int(v) for v in layers.split(","))
        except ValueError:
            raise ConfigError(f"--layers {layers!r}: expected block numbers like 9 or 8,11") from None
        models_dir.mkdir(parents=True, exist_ok=True)
        print(f"bench stages: exporting the embedded default at {size}, blocks {layers}, to {path}", file=sys.stderr,
              flush=True)
        export_model("embedded", ExportOptions(size=(size, size), layers=blocks), path)
    return path


def measure_size(args: argparse.Namespace) -> dict[str, Any]:
    """Calibrate a small recipe at ``args.one_size`` and time ``args.frames`` inspections (runs in a child)."""
    import cv2

    from calibration.build import CalibrationSettings, calibrate
    from calibration.demo_data import DemoCounts, write_demo_set
    from okcell.recipe import Recipe
    from edge.backends.select import open_extractor
    from okcell.images import read_image
    from edge.runtime.inspector import Inspector

    size = args.one_size
    model = model_path(args.models_dir, size)
    with tempfile.TemporaryDirectory(prefix="okcell-bench-") as tmp:
        root = Path(tmp)
        write_demo_set(root / "parts", counts=DemoCounts(args.train, 0, 8, 2), seed=7)
        extractor = open_extractor(model, backend=args.backend, threads=args.threads)
        try:
            settings = CalibrationSettings(ok_dir=root / "parts" / "train" / "ok", threads=args.threads or -1)
            calibrate(extractor, model, settings, root / "recipe")
            recipe = Recipe.load(root / "recipe", extractor.sidecar, threads=args.threads or -1)
            inspector = Inspector(extractor, recipe)
            calibration_peak = peak_rss_mb()
            del settings
            import gc

            gc.collect()
            reset = reset_peak_rss()
            frames = [read_image(p) for p in sorted((root / "parts" / "holdout").rglob("*.png"))]
            timings: dict[str, list[float]] = {stage: [] for stage in BENCH_TIMINGS}
            total = args.warmup + args.frames
            with Progress(f"{size}x{size} inspections", total, "frames") as progress:
                for i in range(total):
                    frame = frames[i % len(frames)]
                    result = inspector.inspect(frame)
                    if result.decision == "ERROR":
                        raise RuntimeError(f"bench inspection failed: {result.error}")
                    start = time.perf_counter()
                    ok, _ = cv2.imencode(".png", inspector.overlay(frame, result))
                    overlay_ms = (time.perf_counter() - start) * 1e3
                    if i >= args.warmup:
                        for stage in BENCH_TIMINGS[:-1]:
                            timings[stage].append(result.timings_ms[stage])
                        timings["overlay_png"].append(overlay_ms)
                    progress.advance()
            inspection_peak = peak_rss_mb() if reset else None
            backend = extractor.backend_name
            layers = list(extractor.sidecar.layers)
            bank = recipe.scorer.bank_size
        finally:
            extractor.close()
    return {
        "size": size,
        "backend": backend,
        "layers": layers,
        "threads": args.threads,
        "frames": args.frames,
        "bank_patches": bank,
        "p50_ms": {s: round(float(np.percentile(v, 50)), 2) for s, v in timings.items()},
        "p99_ms": {s: round(float(np.percentile(v, 99)), 2) for s, v in timings.items()},
        "peak_rss_mb_calibration": round(calibration_peak, 1),
        "peak_rss_mb_inspection": None if inspection_peak is None else round(inspection_peak, 1),
    }


def print_table(results: list[dict[str, Any]]) -> None:
    print("peak RSS: of the process while it calibrated the bench recipe / while it only inspected (MB)")
    print(f"{'size':>5} {'backend':<12} {'blocks':>6} {'bank':>6} " + " ".join(f"{s + ' p50/p99':>22}" for s in BENCH_TIMINGS)
          + f" {'peak RSS calib/insp':>20}")
    for r in results:
        cells = " ".join(f"{'{:.1f}/{:.1f}'.format(r['p50_ms'][s], r['p99_ms'][s]):>22}" for s in BENCH_TIMINGS)
        inspection = "-" if r["peak_rss_mb_inspection"] is None else f"{r['peak_rss_mb_inspection']:.0f}"
        memory = f"{r['peak_rss_mb_calibration']:.0f}/{inspection}"
        blocks = ",".join(map(str, r["layers"]))
        print(f"{r['size']:>5} {r['backend']:<12} {blocks:>6} {r['bank_patches']:>6} {cells} {memory:>20}")
