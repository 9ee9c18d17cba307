"""``okcell bench KIND``: measurements that print p50/p99 and peak memory. One module per kind; adding a kind is
one entry in :data:`BENCH_KINDS` (the module provides ``add_arguments(parser)`` and ``run(args) -> int``)."""

from __future__ import annotations

import argparse
import importlib

BENCH_KINDS: dict[str, tuple[str, str]] = {
    "stages": ("edge.bench.stages", "p50/p99 per inspection stage at 224 and 448 px, peak RSS"),
    "search": ("edge.bench.search", "HNSW vs exact patch search: speed and score error, 10k-250k bank"),
    "publish": ("edge.bench.publish", "what publishing a result over OPC UA adds to the cycle (p50/p99)"),
    "cell": ("edge.bench.cell", "whole cell on a camera (--source viky): cycle p50/p99 per stage, peak RSS"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    kinds = parser.add_subparsers(dest="bench_kind", required=True, metavar="KIND")
    for name, (module_name, summary) in BENCH_KINDS.items():
        sub = kinds.add_parser(name, help=summary, description=summary)
        sub.set_defaults(bench_module=module_name)
        importlib.import_module(module_name).add_arguments(sub)


def run(args: argparse.Namespace) -> int:
    return int(importlib.import_module(args.bench_module).run(args))
