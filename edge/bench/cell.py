"""``okcell bench cell``: the whole cell on a camera — cycle time p50/p99 from frame arrival to result, per stage,
with the configured backend, and peak RSS. ``--source viky`` uses the virtual cameras of the ``genicam`` package
(free run); ``--config cell.yaml`` measures a real cell (its archive goes to a temp folder)."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from edge.acquisition.producers import viky_producer
from okcell.memory import peak_rss_mb
from okcell.names import BACKENDS
from okcell.progress import Progress


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", choices=("viky",), default="viky", help="camera to measure on (default: viky)")
    parser.add_argument("--config", type=Path, help="measure this cell.yaml instead of --source")
    parser.add_argument("--model", type=Path, help="ONNX model (okcell export); with --source")
    parser.add_argument("--recipe", type=Path,
                        help="recipe folder; default: calibrate a throwaway recipe on 12 frames of the camera")
    parser.add_argument("--pixel-format", choices=("RGBa8", "Mono8"), default="RGBa8")
    parser.add_argument("--backend", choices=BACKENDS, default="onnxruntime")
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads")
    parser.add_argument("--cycles", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=10, help="cycles left out of the statistics")


def capture_frames(camera: dict[str, Any], out: Path, count: int, every: int = 3) -> Path:
    """Save ``count`` frames (every ``every``-th, so the scene moves) from a ``cell.yaml``-style camera section."""
    import cv2

    from edge.acquisition.camera_settings import FeatureSetting
    from edge.acquisition.harvester_source import CameraSettings, HarvesterSource

    features = [FeatureSetting(*next(iter(f.items()))) for f in camera.get("features", [])]
    source = HarvesterSource(CameraSettings([Path(p) for p in camera["producers"]], camera.get("device", {}), features,
                                            trigger_mode="software"))
    out.mkdir(parents=True, exist_ok=True)
    source.open()
    try:
        for index in range(count):
            for _ in range(every):
                frame = source.grab("", 2.0)
            image = frame.image if frame.image.ndim == 2 else cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR)
            cv2.imwrite(str(out / f"frame_{index:03d}.png"), image)
    finally:
        source.close()
    return out


def viky_cell_yaml(work: Path, model: Path, recipe: Path | None, pixel_format: str, backend: str,
                   threads: int | None, mode: str = "free_run") -> Path:
    """Write a cell.yaml for viky camera 0 (calibrating a recipe on its frames when none is given)."""
    import yaml

    camera = {"producers": [str(viky_producer())], "device": {"index": 0}, "features": [{"PixelFormat": pixel_format}],
              "num_buffers": 4}
    if recipe is None:
        from calibration.build import CalibrationSettings, calibrate
        from edge.backends.onnxruntime_backend import OnnxRuntimeExtractor

        print("bench: calibrating a recipe on 12 camera frames", file=sys.stderr)
        frames = capture_frames(camera, work / "reference", 12)
        recipe = work / "recipe"
        extractor = OnnxRuntimeExtractor(model, threads=threads)
        try:
            calibrate(extractor, model, CalibrationSettings(ok_dir=frames, folds=2), recipe)
        finally:
            extractor.close()
    config = {
        "name": "bench", "model": {"onnx": str(model), "backend": backend, **({"threads": threads} if threads else {})},
        "recipe": str(recipe), "camera": camera, "trigger": {"mode": mode, "timeout_s": 5.0},
        "archive": {"directory": str(work / "archive")}, "state_dir": str(work),
    }
    path = work / "cell.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run(args: argparse.Namespace) -> int:
    from edge.runtime.cell_config import load_cell_config
    from edge.runtime.service import CellService
    from okcell.schema import ConfigError

    with tempfile.TemporaryDirectory(prefix="okcell-bench-cell-") as tmp:
        work = Path(tmp)
        if args.config is not None:
            config = load_cell_config(args.config)
            config.archive.directory = work / "archive"
        else:
            if args.model is None:
                raise ConfigError("okcell bench cell --source viky: give --model MODEL.onnx (okcell export)")
            config = load_cell_config(viky_cell_yaml(work, args.model, args.recipe, args.pixel_format, args.backend,
                                                     args.threads))
        service = CellService(config)
        service.startup()
        try:
            if service.source.trigger_mode == "software":
                raise ConfigError(f"{config.path}: bench cell measures self-triggered cells (free_run or hardware)")
            wait_cycles(service, args.warmup, "bench cell warm-up")
            service.timings = type(service.timings)()  # statistics from here on
            started = time.monotonic()
            wait_cycles(service, args.cycles, "bench cell")
            elapsed = time.monotonic() - started
        finally:
            service.shutdown()
        backend = getattr(service._inspection.extractor, "backend_name", config.model.backend) if service._inspection else "?"
        print_report(service, args.cycles, elapsed, backend)
    return 0


def wait_cycles(service: Any, cycles: int, label: str) -> None:
    """Wait until the self-triggered cell has finished ``cycles`` more cycles, showing progress."""
    target = service.cycle + cycles
    with Progress(label, cycles, "cycles") as progress:
        while service.cycle < target:
            time.sleep(0.2)
            progress.advance(min(cycles, cycles - (target - service.cycle)) - progress.done)


def print_report(service: Any, cycles: int, elapsed: float, backend: str) -> None:
    summary = service.timings.summary()
    stats = service.source.stats
    print(f"cell bench: {service.source.name}, backend {backend}, recipe {service.recipe_id}, "
          f"{cycles} cycles in {elapsed:.1f} s ({cycles / elapsed:.1f} cycles/s)")
    print(f"{'stage':<12} {'p50 ms':>9} {'p99 ms':>9}")
    order = ["cycle", "wait", "inspect", "preprocess", "backbone", "search", "heatmap", "total", "acquire"]
    for name in sorted(summary, key=lambda n: order.index(n) if n in order else len(order)):
        print(f"{name:<12} {summary[name]['p50']:>9.1f} {summary[name]['p99']:>9.1f}")
    print(f"counts {service.counts}; frames dropped {stats.dropped}, fetch timeouts {stats.timeouts}")
    print(f"peak RSS {peak_rss_mb():.0f} MiB")
    print("cycle = frame arrival -> result archived; wait = arrival -> inference start; inspect = Inspector total")
