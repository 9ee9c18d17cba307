"""Cycle time of the accuracy methods through the product path (ONNX Runtime CPU, ``okcell calibrate`` recipes,
the cell's :class:`~edge.runtime.inspector.Inspector`), on real images of the shared sets.

A benchmark script, not a test. Per configuration: export the model (cached under ``.cache/accuracy/models``),
calibrate on the first ``--train`` images of the set's ``train/ok`` (the bank, and so the search, grows with
it: the table gives the bank size), inspect ``--frames`` test images
after one warm-up, and report the p50 / p90 of each stage. Results: ``benchmarks/results/accuracy_cycle.md``.

    PYTHONPATH=. python benchmarks/accuracy_cycle.py [--threads 2] [--frames 12] [--only NAME...]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from okcell.images import list_images, read_image  # noqa: E402

DATASETS = ROOT.parent / "shared" / "datasets"
CACHE = ROOT / ".cache" / "accuracy" / "cycle"
TABLE = ROOT / "benchmarks" / "results" / "accuracy_cycle.md"
STAGES = ("preprocess", "backbone", "search", "heatmap", "total")


@dataclass(frozen=True)
class Config:
    name: str
    dataset: str
    size: tuple[int, int]
    layers: tuple[int, ...]
    options: tuple[str, ...] = ()  # okcell calibrate options


CONFIGS = [
    Config("MPDD today: 448 stretch, block 12", "mpdd-metal-plate", (448, 448), (12,)),
    Config("MPDD 448 stretch, block 9", "mpdd-metal-plate", (448, 448), (9,)),
    Config("MPDD 448, block 9, augment rot90/180/270", "mpdd-metal-plate", (448, 448), (9,), ("--augment", "rot90,rot180,rot270")),
    Config("MPDD 448, block 9, mask pca", "mpdd-metal-plate", (448, 448), (9,), ("--mask", "pca")),
    Config("MPDD 448, block 9, k=3", "mpdd-metal-plate", (448, 448), (9,), ("--k", "3")),
    Config("MPDD 224 stretch, block 9", "mpdd-metal-plate", (224, 224), (9,)),
    Config("Kolektor today: 448 stretch, block 12", "kolektorsdd", (448, 448), (12,)),
    Config("Kolektor 560x224 (aspect kept), block 9", "kolektorsdd", (560, 224), (9,)),
    Config("Kolektor tiles 224 (3 per strip), block 9", "kolektorsdd", (224, 224), (9,), ("--sizing", "tile")),
    Config("Kolektor letterbox 448, block 9", "kolektorsdd", (448, 448), (9,), ("--sizing", "letterbox")),
]


def model_path(size: tuple[int, int], layers: tuple[int, ...]) -> Path:
    from export.onnx_export import ExportOptions, export_model

    path = CACHE.parent / "models" / f"dinov2_vits14_{size[0]}x{size[1]}_b{'-'.join(map(str, layers))}.onnx"
    if not path.exists():
        export_model("embedded", ExportOptions(size=size, layers=layers), path)
    return path


def train_folder(dataset: str, count: int) -> Path:
    """A folder of links to the first ``count`` OK training images of ``dataset``."""
    folder = CACHE / f"train-{dataset}-{count}"
    if not folder.exists():
        folder.mkdir(parents=True)
        for path in list_images(DATASETS / dataset / "train" / "ok")[:count]:
            (folder / path.name).symlink_to(path.resolve())
    return folder


def run(config: Config, threads: int, frames: int, train: int) -> dict[str, object]:
    from edge.backends.onnxruntime_backend import OnnxRuntimeExtractor
    from edge.cli.main import main
    from edge.runtime.inspector import Inspector
    from okcell.recipe import Recipe

    model = model_path(config.size, config.layers)
    recipe_dir = CACHE / "recipes" / config.name.replace(" ", "_").replace("/", "-").replace(",", "").replace(":", "")
    started = time.perf_counter()
    if not recipe_dir.exists():
        code = main(["calibrate", "--model", str(model), "--ok", str(train_folder(config.dataset, train)),
                     "--out", str(recipe_dir), "--threads", str(threads), "--backend", "onnxruntime", *config.options])
        if code != 0:
            raise RuntimeError(f"{config.name}: calibrate failed ({code})")
    calibration_s = time.perf_counter() - started
    extractor = OnnxRuntimeExtractor(model, threads=threads)
    try:
        recipe = Recipe.load(recipe_dir, extractor.sidecar, threads=threads)
        inspector = Inspector(extractor, recipe)
        test = DATASETS / config.dataset / "test"
        paths = (list_images(test / "ok") + [p for d in sorted((test / "nok").iterdir()) for p in list_images(d)])
        chosen = [paths[i] for i in np.linspace(0, len(paths) - 1, frames + 1).astype(int)]
        images = [read_image(p) for p in chosen]
        inspector.inspect(images[0])  # warm-up
        timings: dict[str, list[float]] = {stage: [] for stage in STAGES}
        for image in images[1:]:
            result = inspector.inspect(image)
            if result.error is not None:
                raise RuntimeError(f"{config.name}: {result.error}")
            for stage in STAGES:
                timings[stage].append(result.timings_ms[stage])
        manifest = json.loads((recipe_dir / "manifest.json").read_text())
    finally:
        extractor.close()
    return {
        "name": config.name, "bank": manifest["bank"]["size"], "references": manifest["calibration"]["ok_images"], "frames": frames, "threads": threads,
        "calibration_s": round(calibration_s, 1),
        "p50": {s: round(float(np.percentile(v, 50)), 1) for s, v in timings.items()},
        "p90": {s: round(float(np.percentile(v, 90)), 1) for s, v in timings.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--train", type=int, default=60, help="OK references per recipe (default 60)")
    parser.add_argument("--only", nargs="*", default=[])
    args = parser.parse_args()
    results_path = CACHE / "results.json"
    CACHE.mkdir(parents=True, exist_ok=True)
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    for config in CONFIGS:
        if args.only and config.name not in args.only:
            continue
        print(f"cycle: {config.name}", file=sys.stderr, flush=True)
        results[config.name] = run(config, args.threads, args.frames, args.train)
        results_path.write_text(json.dumps(results, indent=1))
    lines = [
        "# Cycle time of the accuracy methods (generated by benchmarks/accuracy_cycle.py)",
        "",
        f"Machine: {platform.machine()}, 2 vCPUs shared with other jobs (figures are pessimistic and noisy), ONNX Runtime "
        f"CPU, --threads {args.threads}; recipes calibrated on the first {args.train} train/ok images of each set "
        "(bank size in the table); p50 (p90) over "
        f"{args.frames} test images after one warm-up, in ms.",
        "",
        "| configuration | references | bank | " + " | ".join(STAGES) + " |",
        "|---|---|---|" + "---|" * len(STAGES),
    ]
    for config in CONFIGS:
        row = results.get(config.name)
        if row is not None:
            cells = " | ".join(f"{row['p50'][s]:.0f} ({row['p90'][s]:.0f})" for s in STAGES)
            lines.append(f"| {config.name} | {row['references']} | {row['bank']} | {cells} |")
    TABLE.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
