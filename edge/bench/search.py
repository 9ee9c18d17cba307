"""``okcell bench search``: hnswlib (HNSW) against exact nearest-neighbour search on real DINOv2 patch features.

Two measurements:

* **recipe** (``--recipe`` + ``--images``): the recipe's own bank and search settings against exact search over
  the same bank vectors on the given images — "image scores within X % of exact at default settings".
* **scaling** (``--sizes``): banks of 10k…250k real patch features from demo parts (generated here, one new part per
  image, never replicated), grown in one index; per size the p50/p99 query time per image for HNSW and exact
  search, patch recall@1 and the image-score error of HNSW against exact. Queries are hold-out demo parts.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from okcell.memory import peak_rss_mb
from okcell.progress import Progress
DEFAULT_SIZES = "10000,50000,100000,250000"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, required=True, help="exported ONNX model (features come from it)")
    parser.add_argument("--recipe", type=Path, default=None, help="recipe to check against exact search")
    parser.add_argument("--images", type=Path, default=None, help="images for the recipe check (e.g. demo-data/holdout)")
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help=f"bank sizes for the scaling run ('' to skip; default {DEFAULT_SIZES})")
    parser.add_argument("--queries", type=int, default=16, help="query images in the scaling run (default 16)")
    parser.add_argument("--ef", type=int, default=None, help="HNSW search ef (default: the recipe default)")
    parser.add_argument("--ef-sweep", default="", metavar="EF,EF...",
                        help="also try these search ef values at every bank size (e.g. 128,256,512)")
    parser.add_argument("--M", type=int, default=None, help="HNSW links per node (default: the recipe default)")
    parser.add_argument("--ef-construction", type=int, default=None, help="HNSW build ef (default: the recipe default)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for inference and search (default: all)")
    parser.add_argument("--cache", type=Path, default=None,
                        help="keep extracted bank features here (.npy) and reuse them on the next run")


def percentiles(values: list[float]) -> tuple[float, float]:
    return float(np.percentile(values, 50)), float(np.percentile(values, 99))


def relative_errors(approx: np.ndarray, exact: np.ndarray) -> np.ndarray:
    """|approx - exact| / exact per image (HNSW can only miss neighbours, so approx >= exact)."""
    return np.abs(approx - exact) / np.maximum(np.abs(exact), 1e-9)


def run(args: argparse.Namespace) -> int:
    from okcell.bank_index import IndexParams
    from edge.backends.select import open_extractor
    from okcell.sidecar import load_verified
    from okcell.schema import ConfigError

    sidecar = load_verified(args.model)
    defaults = IndexParams()
    params = IndexParams(args.M or defaults.M, args.ef_construction or defaults.ef_construction, args.ef or defaults.ef)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()] if args.sizes else []
    if (args.recipe is None) != (args.images is None):
        raise ConfigError("--recipe and --images go together (the recipe check scores those images)")
    extractor = open_extractor(args.model, backend="onnxruntime", threads=args.threads)
    print(f"bench search: model {sidecar.onnx_file} ({sidecar.input_size[0]}x{sidecar.input_size[1]}, "
          f"{sidecar.num_patches} patches/image, {sidecar.feature_dim}-d), hnswlib M={params.M} "
          f"ef_construction={params.ef_construction} ef={params.ef}, threads {args.threads or 'all'}")
    try:
        if args.recipe is not None:
            recipe_check(extractor, sidecar, args.recipe, args.images, args.threads or -1)
        if sizes:
            sweep = sorted({params.ef, *(int(v) for v in args.ef_sweep.split(",") if v.strip())})
            scaling(extractor, sidecar, sizes, args.queries, params, sweep, args.threads or -1, args.cache)
    finally:
        extractor.close()
    print(f"peak RSS {peak_rss_mb():.0f} MB")
    return 0


def _image_patches(extractor: Any, paths: list[Path], label: str) -> list[np.ndarray]:
    from okcell.images import read_image

    out = []
    with Progress(label, len(paths), "images") as progress:
        for path in paths:
            out.append(extractor.extract([read_image(path)]).patches[0])
            progress.advance()
    return out


def recipe_check(extractor: Any, sidecar: Any, recipe_dir: Path, images: Path, threads: int) -> None:
    """The recipe's HNSW scores against exact search over the recipe's own bank vectors."""
    from okcell.recipe import Recipe
    from okcell.images import IMAGE_SUFFIXES, read_image
    from okcell.scoring import ExactPatchScorer, bank_vectors
    from okcell.schema import ConfigError

    recipe = Recipe.load(recipe_dir, sidecar, threads=threads)
    paths = sorted(p for p in Path(images).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ConfigError(f"{images}: no images for the recipe check")
    exact = ExactPatchScorer(bank_vectors(recipe.scorer.index), k=recipe.scorer.k, aggregation=recipe.scorer.aggregation)
    hnsw_scores, exact_scores, hnsw_ms, exact_ms, recall = [], [], [], [], []
    with Progress("recipe check", len(paths), "images") as progress:
        for path in paths:
            patches = extractor.extract([recipe.crop(read_image(path))]).patches
            start = time.perf_counter()
            h_image, h_patch = recipe.scorer.score(patches)
            middle = time.perf_counter()
            e_image, e_patch = exact.score(patches)
            hnsw_ms.append((middle - start) * 1e3)
            exact_ms.append((time.perf_counter() - middle) * 1e3)
            hnsw_scores.append(float(h_image[0]))
            exact_scores.append(float(e_image[0]))
            recall.append(float(np.mean(np.isclose(h_patch, e_patch, atol=1e-6))))
            progress.advance()
    errors = relative_errors(np.array(hnsw_scores), np.array(exact_scores))
    decisions_differ = sum((h > recipe.threshold) != (e > recipe.threshold) for h, e in zip(hnsw_scores, exact_scores))
    print(f"\nrecipe {recipe.recipe_id}: bank {recipe.scorer.bank_size} patches, ef {recipe.scorer.index.ef}, "
          f"k {recipe.scorer.k}, {recipe.scorer.aggregation}; {len(paths)} images from {images}")
    print(f"  image scores within {100 * errors.max():.3f} % of exact (p99 {100 * np.percentile(errors, 99):.3f} %, "
          f"median {100 * np.median(errors):.4f} %); decisions that differ: {decisions_differ}")
    print(f"  patch recall@1 {100 * np.mean(recall):.2f} %")
    print("  search ms per image p50/p99: hnsw {:.1f}/{:.1f}, exact {:.1f}/{:.1f}".format(*percentiles(hnsw_ms), *percentiles(exact_ms)))


def _bank_features(extractor: Any, sidecar: Any, count: int, cache: Path | None) -> np.ndarray:
    """``count`` real patch features from freshly generated demo parts (one new part per image)."""
    from calibration.demo_data import DemoCounts, write_demo_set

    if cache is not None and cache.is_file():
        stored = np.load(cache)
        if stored.shape[0] >= count and stored.shape[1] == sidecar.feature_dim:
            print(f"bank features: {count} from cache {cache}", file=sys.stderr)
            return np.ascontiguousarray(stored[:count], dtype=np.float32)
    images = -(-count // sidecar.num_patches)
    with tempfile.TemporaryDirectory(prefix="okcell-bench-") as tmp:
        write_demo_set(Path(tmp) / "bank", size=256, counts=DemoCounts(images, 0, 0, 0), seed=101)
        paths = sorted((Path(tmp) / "bank" / "train" / "ok").glob("*.png"))
        patches = np.concatenate(_image_patches(extractor, paths, f"bank features ({images} demo parts)"))
    features = np.ascontiguousarray(patches[:count], dtype=np.float32)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.save(cache, features.astype(np.float16))
        features = np.load(cache).astype(np.float32)  # same values as a later cached run
    return features


def _query_patches(extractor: Any, queries: int) -> list[np.ndarray]:
    from calibration.demo_data import DemoCounts, write_demo_set

    nok_per_defect = queries // 8
    with tempfile.TemporaryDirectory(prefix="okcell-bench-") as tmp:
        write_demo_set(Path(tmp) / "q", size=256, counts=DemoCounts(0, 0, queries - 4 * nok_per_defect, nok_per_defect),
                       seed=202)
        paths = sorted((Path(tmp) / "q" / "holdout").rglob("*.png"))
        return _image_patches(extractor, paths, "query features")


def scaling(extractor: Any, sidecar: Any, sizes: list[int], queries: int, params: Any, efs: list[int], threads: int,
            cache: Path | None) -> None:
    """Grow one HNSW index through ``sizes`` and compare it with exact search at each size and search ef."""
    import hnswlib

    from okcell.scoring import ExactPatchScorer, PatchScorer

    sizes = sorted(sizes)
    bank = _bank_features(extractor, sidecar, sizes[-1], cache)
    query = _query_patches(extractor, queries)
    index = hnswlib.Index(space="ip", dim=bank.shape[1])
    index.init_index(max_elements=sizes[-1], ef_construction=params.ef_construction, M=params.M)
    index.set_num_threads(threads)
    print(f"\nscaling: {len(query)} query images ({sidecar.num_patches} patches each: OK and NOK demo parts), "
          "top1pct, k=1; score error = |hnsw - exact| / exact image score")
    print(f"{'bank':>8} {'build s':>8} {'ef':>5} {'hnsw p50/p99 ms':>16} {'exact p50/p99 ms':>17} {'recall@1':>9} "
          f"{'score err max/p99 %':>20} {'RSS MB':>7}")
    added, build_s = 0, 0.0  # growing the index in steps costs the same as building it at each size
    for size in sizes:
        start = time.perf_counter()
        index.add_items(bank[added:size], np.arange(added, size), num_threads=threads)
        build_s += time.perf_counter() - start
        added = size
        exact = ExactPatchScorer(bank[:size], k=1)
        e_ms, e_scores, e_patches = [], [], []
        for patches in query:
            t0 = time.perf_counter()
            e_image, e_patch = exact.score(patches[None])
            e_ms.append((time.perf_counter() - t0) * 1e3)
            e_scores.append(float(e_image[0]))
            e_patches.append(e_patch)
        for ef in efs:
            index.set_ef(ef)
            hnsw = PatchScorer(index, k=1, threads=threads)
            h_ms, h_scores, recall = [], [], []
            for patches, e_patch in zip(query, e_patches):
                t0 = time.perf_counter()
                h_image, h_patch = hnsw.score(patches[None])
                h_ms.append((time.perf_counter() - t0) * 1e3)
                h_scores.append(float(h_image[0]))
                recall.append(float(np.mean(np.isclose(h_patch, e_patch, atol=1e-6))))
            errors = relative_errors(np.array(h_scores), np.array(e_scores))
            print(f"{size:>8} {build_s:>8.1f} {ef:>5} {'{:.1f}/{:.1f}'.format(*percentiles(h_ms)):>16} "
                  f"{'{:.1f}/{:.1f}'.format(*percentiles(e_ms)):>17} {100 * np.mean(recall):>8.3f}% "
                  f"{'{:.3f}/{:.3f}'.format(100 * errors.max(), 100 * np.percentile(errors, 99)):>20} "
                  f"{peak_rss_mb():>7.0f}", flush=True)
