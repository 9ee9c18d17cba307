"""False rejects on new parts: thresholds from leave-one-out and from k-fold held-out OK scores, on a real set.

    python benchmarks/threshold_held_out.py --model M.onnx --data SET --features DIR [--target 0.01 0.05]
                                            [--resplits R] [--threads N]

SET has ``train/ok``, ``test/ok`` and ``test/nok/<defect>``. The patch features of every image are extracted once
with the model (each image stretched to the model input, as ``okcell calibrate`` does without a ROI) and cached in
DIR. For each ``--held-out`` method the final bank and the held-out OK scores are built as ``okcell calibrate``
builds them (:func:`calibration.build.reference_bank`, default settings otherwise) and the new parts are scored
against the final bank. The first table is the set's own split: per target, the threshold, the held-out FRR with
its 95 % bound, the expected FRR on new parts, the FRR on ``test/ok`` with its bound, the recall on ``test/nok``, and
P(held-out score > new OK score), 0.5 when held-out scores are distributed like new parts' scores. With
``--resplits R`` the second table repeats this on R random splits of all OK images (``train/ok`` + ``test/ok``) into
references and new parts of the same sizes: the FRR on new parts pooled over the splits is far less noisy than one
small ``test/ok``.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from calibration.build import CalibrationSettings, reference_bank
from calibration.evaluation import auroc
from calibration.reference_features import FeatureCache
from calibration.thresholds import RateEstimate, Risk, assess
from okcell.extractor import FeatureExtractor
from okcell.frames import CropFeatures, extract_crops, score_crop
from okcell.images import list_images, read_image
from okcell.masking import NoMask
from okcell.names import HELD_OUT, HeldOut
from okcell.progress import Progress
from okcell.scoring import expected_frr
from okcell.sizing import Sizing

SPLITS = ("train/ok", "test/ok", "test/nok")


def _paths(data: Path, split: str) -> list[Path]:
    if split != "test/nok":
        return list_images(data / split)
    return [path for folder in sorted((data / split).iterdir()) if folder.is_dir() for path in list_images(folder)]


def cached_crops(extractor: FeatureExtractor, data: Path, split: str, folder: Path) -> list[CropFeatures]:
    """Features of every image of ``split`` (stretched to the model input), from ``folder`` if extracted before
    (same file names), else extracted and stored there."""
    paths = _paths(data, split)
    names = np.array([str(path.relative_to(data)) for path in paths])
    cache = folder / f"{split.replace('/', '_')}.npz"
    sidecar = extractor.sidecar
    layout = Sizing().layout(sidecar.input_size, sidecar.input_size, sidecar.patch_size)
    stored = np.load(cache) if cache.is_file() else None
    if stored is None or not np.array_equal(stored["names"], names):
        crops: list[CropFeatures] = []
        with Progress(f"{data.name} {split}", len(paths), "images") as progress:
            for start in range(0, len(paths), 4):
                crops += extract_crops(extractor, [read_image(path) for path in paths[start : start + 4]], Sizing())
                progress.advance(len(crops) - start)
        folder.mkdir(parents=True, exist_ok=True)
        np.savez(cache, patches=np.concatenate([c.patches for c in crops]).astype(np.float16),
                 embedding=np.stack([c.embedding for c in crops]), names=names)
        stored = np.load(cache)
    patches, embeddings = stored["patches"], stored["embedding"]
    return [CropFeatures(layout, patches[i : i + 1].astype(np.float32), embeddings[i]) for i in range(len(names))]


@dataclass
class Outcome:
    """One held-out method on one split of references and new parts, at one target."""

    method: HeldOut
    risk: Risk
    expected_frr: float  # on new parts, as the recipe states it
    new_rejects: RateEstimate  # new OK parts above the threshold
    spread: float  # P(held-out score > new OK score)
    seconds: float  # reference bank and held-out scores


def run_split(references: list[CropFeatures], new_ok: list[CropFeatures], nok: list[CropFeatures], targets: Sequence[float],
              threads: int) -> list[Outcome]:
    """Every held-out method on one split: its bank from ``references``, new OK and NOK parts scored against it."""
    outcomes = []
    for method in HELD_OUT:
        settings = CalibrationSettings(ok_dir=Path("references"), held_out=method, threads=threads)
        with FeatureCache(references[0].patches.shape[2]) as cache:
            for source, crop in enumerate(references):
                cache.append(crop, source)
            started = time.perf_counter()
            bank = reference_bank(cache, NoMask(), settings)
            seconds = time.perf_counter() - started
        ok_scores, nok_scores = (np.array([score_crop(crop, NoMask(), bank.scorer, settings.aggregation).score for crop in crops])
                                 for crops in (new_ok, nok))
        spread = auroc(ok_scores, bank.ok_scores) or 0.5
        for target in targets:
            risk = assess(bank.ok_scores, {"nok": nok_scores}, target)
            new_rejects = RateEstimate(int(np.sum(ok_scores > risk.threshold)), len(ok_scores))
            outcomes.append(Outcome(method, risk, expected_frr(len(references), target), new_rejects, spread, seconds))
    return outcomes


def _rate(estimate: RateEstimate) -> str:
    return f"{100 * estimate.rate:.1f} % ({estimate.events}/{estimate.total}; ≤ {100 * estimate.upper95:.1f} %)"


def split_table(outcomes: list[Outcome]) -> list[str]:
    lines = ["| held-out | target FRR | threshold | held-out FRR (95 % bound) | expected FRR, new parts | test OK FRR (95 % bound) "
             "| recall test NOK | P(held-out > test OK) | bank + held-out scores |", "|---|---|---|---|---|---|---|---|---|"]
    for o in outcomes:
        lines.append(f"| {o.method} | {100 * o.risk.target_frr:g} % | {o.risk.threshold:.4f} | {_rate(o.risk.false_rejects)} | "
                     f"{100 * o.expected_frr:.1f} % | {_rate(o.new_rejects)} | {100 * o.risk.detected_per_defect['nok'].rate:.1f} % | "
                     f"{o.spread:.3f} | {o.seconds:.0f} s |")
    return lines


def resplit_table(runs: list[list[Outcome]]) -> list[str]:
    lines = ["| held-out | target FRR | expected FRR, new parts | FRR on new parts, pooled | recall test NOK, mean "
             "| P(held-out > new OK), mean ± sd |", "|---|---|---|---|---|---|"]
    for i, first in enumerate(runs[0]):
        same = [run[i] for run in runs]
        rejects = sum(o.new_rejects.events for o in same)
        total = sum(o.new_rejects.total for o in same)
        spreads = np.array([o.spread for o in same])
        recall = np.mean([o.risk.detected_per_defect["nok"].rate for o in same])
        lines.append(f"| {first.method} | {100 * first.risk.target_frr:g} % | {100 * first.expected_frr:.1f} % | "
                     f"{100 * rejects / total:.2f} % ({rejects}/{total}) | {100 * recall:.1f} % | {spreads.mean():.3f} ± {spreads.std():.3f} |")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="exported ONNX model (its .json sidecar beside it)")
    parser.add_argument("--data", type=Path, required=True, help="set with train/ok, test/ok, test/nok/<defect>")
    parser.add_argument("--features", type=Path, required=True, help="folder for the cached features of the set")
    parser.add_argument("--target", type=float, nargs="+", default=[0.01, 0.05], help="target FRRs (default 0.01 0.05)")
    parser.add_argument("--resplits", type=int, default=0, help="random re-splits of all OK images (default 0)")
    parser.add_argument("--threads", type=int, default=-1, help="CPU threads (default all)")
    args = parser.parse_args(argv)
    from edge.backends.select import open_extractor

    extractor = open_extractor(args.model, "onnxruntime", None, None if args.threads < 1 else args.threads)
    try:
        train, test_ok, test_nok = (cached_crops(extractor, args.data, split, args.features) for split in SPLITS)
    finally:
        extractor.close()
    published = run_split(train, test_ok, test_nok, args.target, args.threads)
    print(f"\n{args.data.name}: {len(train)} references, test {len(test_ok)} OK / {len(test_nok)} NOK\n")
    print("\n".join(split_table(published)), flush=True)
    if args.resplits:
        every_ok = train + test_ok
        runs = []
        for seed in range(args.resplits):
            order = np.random.default_rng(seed).permutation(len(every_ok))
            references, new = [every_ok[i] for i in order[: len(train)]], [every_ok[i] for i in order[len(train) :]]
            runs.append(run_split(references, new, test_nok, args.target, args.threads))
            print(f"re-split {seed + 1}/{args.resplits} done", flush=True)
        print(f"\n{args.resplits} random splits of the {len(every_ok)} OK images into {len(train)} references and "
              f"{len(test_ok)} new parts\n")
        print("\n".join(resplit_table(runs)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
