"""``okcell calibrate``: OK (and optional NOK / synthetic) reference images -> recipe directory."""

from __future__ import annotations

import argparse
from pathlib import Path

from okcell.bank_index import IndexParams
from calibration.augment import AUGMENTATIONS, parse_augment
from calibration.build import DEFAULT_MAX_BANK, CalibrationSettings, CalibrationSummary
from calibration.report import risk_lines
from okcell.recipe import MANIFEST_FILE
from okcell.roi import Roi
from okcell.names import BACKENDS, HELD_OUT
from okcell.signing import signature_path
from okcell.sizing import DEFAULT_TILE_OVERLAP, SIZING_MODES, Sizing


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ok", type=Path, required=True, help="folder of OK reference images")
    parser.add_argument("--nok", type=Path, nargs="+", action="extend", default=[], metavar="DIR",
                        help="NOK folder(s), one per defect (label = folder name); a folder of defect folders also works")
    parser.add_argument("--synthetic", type=Path, nargs="+", action="extend", default=[], metavar="DIR",
                        help="synthetic reference folder(s) (e.g. `okcell synthesize` output), labelled synthetic:<name>")
    parser.add_argument("--out", type=Path, required=True, help="recipe directory to write")
    parser.add_argument("--force", action="store_true", help="replace an existing recipe (only once the new one is complete)")
    parser.add_argument("--sign-key", type=Path, default=None, metavar="KEY",
                        help="sign the recipe with this private key (okcell keygen): writes manifest.json.sig")
    add_settings_arguments(parser)


def add_settings_arguments(parser: argparse.ArgumentParser, model_required: bool = True) -> None:
    """The model, backend and calibration settings (shared with ``okcell evaluate``, which calibrates the same way)."""
    parser.add_argument("--model", type=Path, required=model_required, help="exported ONNX model (its .json sidecar beside it)")
    parser.add_argument("--roi", default=None, metavar="X,Y,W,H", help="inspected region in image pixels")
    parser.add_argument("--target-frr", type=float, default=0.01, help="target false-reject rate of OK parts (default 0.01)")
    parser.add_argument("--folds", type=int, default=5,
                        help="the bank is the union of one coreset per fold of the OK images (default 5)")
    parser.add_argument("--held-out", choices=HELD_OUT, default="leave-one-out",
                        help="OK scores the threshold is set from: each image against the final bank without its own "
                             "patches (leave-one-out, default), or against the other folds' smaller bank (k-fold: "
                             "scores run high, so fewer good parts are rejected than the target and more defects pass)")
    parser.add_argument("--k", type=int, default=1, help="nearest bank patches averaged per patch score (default 1)")
    parser.add_argument("--aggregation", default="top1pct", metavar="top1pct|max|topN",
                        help="image score: mean of the top 1 %% patch scores, the max, or the mean of the N highest "
                             "(e.g. top10) (default top1pct)")
    parser.add_argument("--sizing", choices=SIZING_MODES, default="stretch",
                        help="how images of any size meet the model input: stretch to it, letterbox (aspect kept, "
                             "padding not scored) or tile (overlapping model-size tiles at --tile-scale) (default stretch)")
    parser.add_argument("--tile-scale", type=float, default=None, metavar="S",
                        help="tile sizing: model pixels per image pixel (default: the first reference's short side "
                             "fills one tile; 1.0 = full resolution)")
    parser.add_argument("--tile-overlap", type=float, default=DEFAULT_TILE_OVERLAP,
                        help=f"tile sizing: least overlap of neighbouring tiles, share of a tile (default {DEFAULT_TILE_OVERLAP})")
    parser.add_argument("--mask", default="none", metavar="none|pca|FILE",
                        help="background mask: none, pca (first principal component of the reference patches, for "
                             "parts on a plain background) or a mask image in reference pixels, white = inspect (default none)")
    parser.add_argument("--augment", default="none", metavar="NAME[,NAME...]",
                        help="add rotated/mirrored copies of the OK references to the bank, for parts at varying pose: "
                             f"{', '.join(AUGMENTATIONS)} (default none)")
    parser.add_argument("--coreset-ratio", type=float, default=0.1, help="share of OK patches kept in the bank (default 0.1)")
    parser.add_argument("--max-bank", type=int, default=DEFAULT_MAX_BANK, help=f"cap on bank patches (default {DEFAULT_MAX_BANK})")
    parser.add_argument("--label-k", type=int, default=3, help="neighbours in the nearest-label vote (default 3)")
    parser.add_argument("--hnsw-m", type=int, default=IndexParams.M, help=f"hnswlib M (default {IndexParams.M})")
    parser.add_argument("--hnsw-ef-construction", type=int, default=IndexParams.ef_construction,
                        help=f"hnswlib ef_construction (default {IndexParams.ef_construction})")
    parser.add_argument("--hnsw-ef", type=int, default=IndexParams.ef, help=f"hnswlib search ef (default {IndexParams.ef})")
    parser.add_argument("--backend", choices=BACKENDS, default="auto",
                        help="inference backend; calibrate with the one the cell runs (default auto: TensorRT if an engine exists)")
    parser.add_argument("--engine", type=Path, default=None, help="TensorRT engine (default: MODEL.engine beside the ONNX)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per inference batch if the model allows (default 8)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for inference and the index (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="seed for folds and projections (default 0)")


def print_summary(summary: CalibrationSummary) -> None:
    manifest = summary.manifest
    print(f"recipe {manifest['recipe_id']} written to {summary.out}")
    for line in risk_lines(summary.risk):
        print(f"  {line}")
    for label, share in summary.nearest_label_agreement.items():
        print(f"  nearest-label agreement {label}: {100 * share:.0f} % (leave-one-out)")
    ratio = manifest["bank"]["size"] / manifest["bank"]["patches_seen"]
    print(f"  bank {summary.bank_size} patches ({100 * ratio:.1f} % of {manifest['bank']['patches_seen']})")
    print(f"  peak RSS {summary.peak_rss_mb:.0f} MB")
    print(f"  report {summary.out / 'report.png'}")
    if summary.signed_by is not None:
        print(f"  signed with key {summary.signed_by} ({signature_path(summary.out / MANIFEST_FILE)})")


def settings_from_args(args: argparse.Namespace, ok_dir: Path, nok_dirs: tuple[Path, ...] = (),
                       synthetic_dirs: tuple[Path, ...] = ()) -> CalibrationSettings:
    """Validated calibration settings from the options of :func:`add_settings_arguments` and the input folders."""
    settings = CalibrationSettings(
        ok_dir=ok_dir,
        nok_dirs=nok_dirs,
        synthetic_dirs=synthetic_dirs,
        roi=None if args.roi is None else Roi.parse(args.roi),
        target_frr=args.target_frr,
        folds=args.folds,
        held_out=args.held_out,
        k=args.k,
        aggregation=args.aggregation,
        sizing=Sizing(args.sizing, args.tile_scale, args.tile_overlap),
        mask=args.mask,
        augment=parse_augment(args.augment),
        coreset_ratio=args.coreset_ratio,
        max_bank=args.max_bank,
        index=IndexParams(args.hnsw_m, args.hnsw_ef_construction, args.hnsw_ef),
        label_k=args.label_k,
        batch_size=args.batch_size,
        threads=args.threads or -1,
        seed=args.seed,
    )
    settings.validate()
    return settings


def run(args: argparse.Namespace) -> int:
    from calibration.build import calibrate
    from edge.backends.select import open_extractor
    from okcell.signing import load_private_key

    settings = settings_from_args(args, args.ok, tuple(args.nok), tuple(args.synthetic))
    signing_key = None if args.sign_key is None else load_private_key(args.sign_key)
    extractor = open_extractor(args.model, args.backend, args.engine, args.threads)
    try:
        summary = calibrate(extractor, args.model, settings, args.out, args.force, signing_key)
    finally:
        extractor.close()
    print_summary(summary)
    return 0
