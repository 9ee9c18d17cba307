"""``okcell build-engine``: ONNX -> TensorRT engine (+ ``.engine.json`` sidecar), built on the target machine."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("onnx", type=Path, metavar="MODEL.onnx", help="model from `okcell export` (its .json beside it)")
    precision = parser.add_mutually_exclusive_group()
    for name, help_text in (
        ("fp16", "FP16 kernels where faster (default)"),
        ("int8", "INT8 with entropy calibration on reference images (needs --calib-images or a cache)"),
        ("fp32", "FP32 only (the parity reference; slowest)"),
    ):
        precision.add_argument(f"--{name}", dest="precision", action="store_const", const=name, help=help_text)
    parser.set_defaults(precision="fp16")
    parser.add_argument("-o", "--output", type=Path, metavar="ENGINE",
                        help="engine file (default: MODEL.engine next to the ONNX; sidecar ENGINE.json)")
    parser.add_argument("--calib-images", type=Path, metavar="DIR",
                        help="--int8: folder of reference (good-part) images, preprocessed like at run time")
    parser.add_argument("--calib-cache", type=Path, metavar="FILE",
                        help="--int8: calibration cache, reused when it matches (default: ENGINE with .calib)")
    parser.add_argument("--calib-batch", type=int, default=8, metavar="N", help="--int8: calibration batch (default 8)")
    parser.add_argument("--workspace", type=int, default=2048, metavar="MiB",
                        help="TensorRT workspace limit in MiB (default 2048; lower it on an 8 GB Jetson)")
    parser.add_argument("--opt-level", type=int, default=3, metavar="N",
                        help="builder optimisation level 0-5 (default 3; 5 builds longer, may run faster)")
    parser.add_argument("--timing-cache", type=Path, metavar="FILE",
                        help="persistent timing cache: read if present, updated after the build "
                             "(default: MODEL.timing-cache next to the ONNX)")
    parser.add_argument("--opt-batch", type=int, default=1, metavar="N",
                        help="dynamic-batch models: batch size to optimise for (default 1)")
    parser.add_argument("--max-batch", type=int, default=8, metavar="N",
                        help="dynamic-batch models: largest batch the engine accepts (default 8)")
    parser.add_argument("--fp32-norms", action="store_true",
                        help="keep LayerNorm/Softmax in FP32 under --fp16/--int8 (use if FP16 parity is not good enough)")


def run(args: argparse.Namespace) -> int:
    from export.engine_sidecar import default_engine_path
    from export.tensorrt_build import BuildOptions, build_engine
    from okcell.schema import ConfigError

    if not args.onnx.is_file():
        raise ConfigError(f"{args.onnx}: ONNX model not found (make one with `okcell export`)")
    engine = args.output or default_engine_path(args.onnx)
    options = BuildOptions(
        precision=args.precision,
        workspace_mib=args.workspace,
        opt_level=args.opt_level,
        timing_cache=args.timing_cache or args.onnx.with_suffix(".timing-cache"),
        calib_images=args.calib_images,
        calib_cache=args.calib_cache or engine.with_suffix(".calib"),
        calib_batch=args.calib_batch,
        opt_batch=args.opt_batch,
        max_batch=args.max_batch,
        fp32_norms=args.fp32_norms,
    )
    options.validate()  # before importing TensorRT: option mistakes are reported on any machine
    info = build_engine(args.onnx, engine, options)
    print(f"{engine}: {info.precision} engine for {info.target.describe()}, input {info.input_size[0]}x"
          f"{info.input_size[1]}, batch {info.batch[0]}..{info.batch[2]}")
    return 0
