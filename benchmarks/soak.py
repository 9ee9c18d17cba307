"""Soak test: many software-triggered cycles on a viky virtual camera; resident memory growth after warm-up.

    python benchmarks/soak.py --model MODEL.onnx [--recipe DIR] [--cycles 2000] [--warmup 200]
    python benchmarks/soak.py --config cell.yaml [--cycles 2000]      # any software-triggered cell

Prints cycle-time p50/p99, RSS after warm-up and at the end, and the growth (target: under 5 %); exits 1 above it.
Without --recipe a throwaway recipe is calibrated on 12 frames of the camera."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from edge.bench.cell import viky_cell_yaml
from edge.runtime.cell_config import load_cell_config
from edge.runtime.service import CellService
from okcell.memory import rss_mb
from okcell.progress import Progress

GROWTH_LIMIT_PERCENT = 5.0
BATCH = 20  # triggers in flight at a time


@dataclass
class SoakReport:
    cycles: int
    rss_after_warmup_mib: float
    rss_end_mib: float
    errors: int
    p50_ms: float
    p99_ms: float
    seconds: float

    @property
    def growth_percent(self) -> float:
        return 100.0 * (self.rss_end_mib - self.rss_after_warmup_mib) / self.rss_after_warmup_mib


def soak(config_path: Path, cycles: int, warmup: int) -> SoakReport:
    """Run ``warmup`` + ``cycles`` software triggers through a cell; every trigger must get its result."""
    service = CellService(load_cell_config(config_path))
    service.startup()
    started = time.monotonic()
    try:
        _trigger(service, warmup, "warmup")
        baseline = rss_mb()
        service.timings = type(service.timings)(size=cycles)
        with Progress("soak", cycles, "cycles") as progress:
            while progress.done < cycles:
                batch = min(BATCH, cycles - progress.done)
                _trigger(service, batch, "soak")
                progress.advance(batch, f"RSS {rss_mb():.0f} MiB")
        end = rss_mb()
    finally:
        service.shutdown()
    return SoakReport(cycles, baseline, end, service.counts["ERROR"], service.timings.percentile("cycle", 50) or 0.0,
                      service.timings.percentile("cycle", 99) or 0.0, time.monotonic() - started)


def _trigger(service: CellService, count: int, prefix: str) -> None:
    ids = [service.request_trigger(f"{prefix}-{i}") for i in range(count)]
    for cycle in ids:
        if service.wait_result(cycle, timeout_s=120) is None:
            raise RuntimeError(f"cycle {cycle}: no result within 120 s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="ONNX model: soak on viky camera 0 (RGBa8, 400 px)")
    parser.add_argument("--config", type=Path, help="soak this software-triggered cell.yaml instead")
    parser.add_argument("--recipe", type=Path)
    parser.add_argument("--cycles", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--threads", type=int)
    args = parser.parse_args(argv)
    if (args.model is None) == (args.config is None):
        parser.error("give --model (viky) or --config (a cell.yaml)")
    with tempfile.TemporaryDirectory(prefix="okcell-soak-") as tmp:
        config = args.config or viky_cell_yaml(Path(tmp), args.model, args.recipe, "RGBa8", "onnxruntime",
                                               args.threads, mode="software")
        report = soak(config, args.cycles, args.warmup)
    print(f"soak: {report.cycles} cycles in {report.seconds:.0f} s, ERROR results {report.errors}")
    print(f"cycle time p50 {report.p50_ms:.1f} ms, p99 {report.p99_ms:.1f} ms")
    print(f"RSS after warm-up {report.rss_after_warmup_mib:.1f} MiB, at end {report.rss_end_mib:.1f} MiB, "
          f"growth {report.growth_percent:+.2f} % (limit {GROWTH_LIMIT_PERCENT:.0f} %)")
    return 0 if report.growth_percent < GROWTH_LIMIT_PERCENT else 1


if __name__ == "__main__":
    sys.exit(main())
