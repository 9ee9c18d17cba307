"""Accuracy of okcell's scoring methods on the shared real sets, from cached DINOv2 patch tokens.

Not a test: a benchmark script. ``benchmarks/accuracy_jobs.py`` extracts the tokens of every stored block once per
input layout (PyTorch, okcell's own sizing and preprocessing); this script builds a reference bank per variant
(greedy k-center coreset of the OK training patches, okcell's :class:`~calibration.coreset.SequentialCoreset`,
10 % like ``okcell calibrate``), scores the test images with exact nearest neighbours (matrix products, no
hnswlib) and reports per set: image AUROC, recall at 1 % false rejects and patch-level AUROC against the defect
masks. The 1 % threshold comes from the **test OK** images themselves (it is the (floor(1 % of n)+1)-th highest
test OK score; with fewer than 100 test OK images that is the highest one), so recall here is what a perfectly
placed threshold would give, not what a calibrated recipe gives (that is `okcell evaluate`'s job).

    PYTHONPATH=. python benchmarks/accuracy_methods.py [--sets mpdd-metal-plate,kolektorsdd] [--only LABEL...]

Variants whose cached tokens are missing are skipped (run the jobs first). Results are cached per variant in
``.cache/accuracy/results.json``; the table goes to ``benchmarks/results/accuracy_methods.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import cv2
import numpy as np

sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).resolve().parent)]

from accuracy_features import BLOCKS, CACHE, load_split  # noqa: E402
from accuracy_jobs import DATASETS, JOBS, PATCH, Job, extraction, job_folder, split_paths  # noqa: E402
from calibration.coreset import SequentialCoreset  # noqa: E402
from okcell.images import read_image  # noqa: E402
from okcell.frames import CropFeatures, foreground_patches, score_crop  # noqa: E402
from okcell.masking import Mask, NoMask, PcaMask, first_component, grow  # noqa: E402
from okcell.scoring import ExactPatchScorer  # noqa: E402
from okcell.sizing import Layout, Sizing  # noqa: E402

RESULTS = CACHE / "results.json"
TABLE = Path(__file__).resolve().parent / "results" / "accuracy_methods.md"
CORESET_CHUNK = 16
MAX_BANK = 100_000
NO_EMBEDDING = np.zeros(0, np.float32)
SHORT = {"mpdd-metal-plate": "MPDD", "kolektorsdd": "Kolektor"}


@dataclass(frozen=True)
class Variant:
    """One scoring configuration."""

    label: str
    layout: str = "stretch-448"
    blocks: tuple[int, ...] = (12,)
    fusion: str = "concat"
    k: int = 1
    aggregation: str = "top1pct"
    augment: tuple[str, ...] = ()  # reference transforms (cached splits train-<name>)
    mask: str = "none"  # none | pca (one direction fitted on the references) | pca-image (per image, AnomalyDINO)
    preprocess: str = ""  # "" | contrast
    coreset: float = 0.1
    train_limit: int | None = None  # only the first N OK training images as references

    def key(self, dataset: str) -> str:
        spec = {k: v for k, v in asdict(self).items() if k != "label" and not (k == "train_limit" and v is None)}
        return dataset + ":" + hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Images:
    """Cached tokens of one split with each image's layout."""

    names: list[str]
    tokens: list[np.ndarray]  # (F, blocks, N, C) float16
    layouts: list[Layout]
    masks: list[np.ndarray | None] = field(default_factory=list)  # (rows, cols) defect share per cell, NOK only


def image_size(path: Path) -> tuple[int, int]:
    image = read_image(path)
    return int(image.shape[0]), int(image.shape[1])


def defect_share(mask_path: Path, layout: Layout) -> np.ndarray:
    """Share of each grid cell covered by the defect mask (mask resized to the grid's extent in crop pixels)."""
    mask = (read_image(mask_path) > 127).astype(np.float32)
    rows, cols = layout.grid
    height, width = layout.extent
    full = np.zeros((height, width), np.float32)
    full[: min(height, mask.shape[0]), : min(width, mask.shape[1])] = mask[:height, :width]
    return cv2.resize(full, (cols, rows), interpolation=cv2.INTER_AREA)


class Store:
    """Loads cached splits of one (dataset, layout, preprocess) on demand."""

    def __init__(self, dataset: str, layout: str, preprocess: str) -> None:
        self.dataset = dataset
        self.job = Job(dataset, layout, preprocess=preprocess)
        self.folder = job_folder(self.job)
        self.extraction = extraction(layout)
        self.sizing = Sizing(layout.split("-")[0])
        self._splits: dict[str, Images] = {}

    def has(self, split: str) -> bool:
        return (self.folder / f"{split}-000.npz").exists()

    def split(self, split: str) -> Images:
        if split not in self._splits:
            paths = {p.name: p for p in split_paths(self.dataset, split)}
            names, tokens, layouts, masks = [], [], [], []
            for name, array in load_split(self.folder, split):
                size = image_size(paths[name])
                if split.startswith("train-") and split.split("-", 1)[1] in ("rot90", "rot270", "flipx-rot90", "flipx-rot270", "flipy-rot90"):
                    size = (size[1], size[0])
                layout = self.sizing.layout(size, self.extraction.model_size, PATCH)
                names.append(name)
                tokens.append(array)
                layouts.append(layout)
                if split == "test-nok":
                    mask = DATASETS / self.dataset / "ground_truth" / paths[name].parent.name / f"{Path(name).stem}_mask.png"
                    masks.append(defect_share(mask, layout) if mask.exists() else None)
            self._splits[split] = Images(names, tokens, layouts, masks)
        return self._splits[split]


def features(tokens: np.ndarray, blocks: tuple[int, ...], fusion: str) -> np.ndarray:
    """(F, blocks, N, C) float16 tokens -> (F, N, C') float32 L2-normalised fused features (as export.fusion)."""
    chosen = tokens[:, [BLOCKS.index(b) for b in blocks]].astype(np.float32)
    fused = np.concatenate(list(chosen.transpose(1, 0, 2, 3)), axis=-1) if fusion == "concat" else chosen.mean(axis=1)
    return fused / np.maximum(np.linalg.norm(fused, axis=-1, keepdims=True), 1e-12)


class ImagePcaMask:
    """AnomalyDINO's own mask, for comparison: PCA of each image's patches, first component > 0, sign so that the
    centre is mostly foreground, dilate + close."""

    mode = "pca-image"

    def foreground(self, frame_features: np.ndarray, layout: Layout) -> np.ndarray:
        return layout.valid() & image_pca_foreground(frame_features, layout)


def image_pca_foreground(frame_features: np.ndarray, layout: Layout) -> np.ndarray:
    flat = frame_features.reshape(-1, frame_features.shape[-1])
    direction = first_component(flat - flat.mean(axis=0))
    grid = layout.stitch((frame_features - flat.mean(axis=0)) @ direction)
    rows, cols = grid.shape
    centre = grid[int(rows * 0.2) : int(rows * 0.8), int(cols * 0.2) : int(cols * 0.8)]
    if np.mean(centre > 0) <= 0.35:
        grid = -grid
    return grow(grid > 0)


def rank_auroc(negatives: np.ndarray, positives: np.ndarray) -> float:
    """Mann-Whitney AUROC with average ranks for ties."""
    values = np.concatenate([negatives, positives])
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), np.float64)
    sorted_values = values[order]
    _, first, counts = np.unique(sorted_values, return_index=True, return_counts=True)
    average = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(average, counts)
    positive_ranks = ranks[len(negatives):].sum()
    return float((positive_ranks - len(positives) * (len(positives) + 1) / 2) / (len(positives) * len(negatives)))


def recall_at(ok: np.ndarray, nok: np.ndarray, rate: float) -> tuple[float, float]:
    """(threshold, recall): threshold lets at most floor(rate * n) test OK images score above it."""
    allowed = int(np.floor(rate * len(ok)))
    threshold = float(np.sort(ok)[::-1][allowed])
    return threshold, float(np.mean(nok > threshold))


class Evaluator:
    def __init__(self, dataset: str) -> None:
        self.dataset = dataset
        self._stores: dict[tuple[str, str], Store] = {}
        self._bank: tuple[tuple[object, ...], np.ndarray, Mask] | None = None  # the last bank, reused by k/aggregation variants

    def store(self, variant: Variant) -> Store:
        key = (variant.layout, variant.preprocess)
        if key not in self._stores:
            self._stores.clear()  # one layout's tokens in memory at a time
            self._stores[key] = Store(self.dataset, variant.layout, variant.preprocess)
        return self._stores[key]

    def available(self, variant: Variant) -> bool:
        store = Store(self.dataset, variant.layout, variant.preprocess)
        return all(store.has(s) for s in ("train", "test-ok", "test-nok", *(f"train-{a}" for a in variant.augment)))

    def bank(self, store: Store, variant: Variant) -> tuple[np.ndarray, Mask]:
        """The coreset of the references' foreground patches (augmented copies included) and the mask."""
        train_splits = [store.split("train")] + [store.split(f"train-{a}") for a in variant.augment]
        limit = variant.train_limit or len(train_splits[0].tokens)
        reference = [(features(t, variant.blocks, variant.fusion), layout)
                     for split in train_splits for t, layout in zip(split.tokens[:limit], split.layouts[:limit])]
        pca = PcaMask.fit(reference[:limit]) if variant.mask == "pca" else None
        mask: Mask = pca if pca is not None else (ImagePcaMask() if variant.mask == "pca-image" else NoMask())
        coreset = SequentialCoreset(reference[0][0].shape[-1], variant.coreset, MAX_BANK)
        for start in range(0, len(reference), CORESET_CHUNK):
            chunk = reference[start : start + CORESET_CHUNK]
            coreset.add(np.concatenate([foreground_patches(CropFeatures(layout, f, NO_EMBEDDING), mask) for f, layout in chunk]))
        return coreset.features, mask

    def run(self, variant: Variant) -> dict[str, Any]:
        started = time.perf_counter()
        store = self.store(variant)
        key = (variant.layout, variant.preprocess, variant.blocks, variant.fusion, variant.augment, variant.mask, variant.coreset, variant.train_limit)
        if self._bank is None or self._bank[0] != key:
            self._bank = (key, *self.bank(store, variant))
        _, bank, mask = self._bank
        banked = time.perf_counter()
        scorer = ExactPatchScorer(bank, k=variant.k)
        scores: dict[str, list[float]] = {"test-ok": [], "test-nok": []}
        cell_neg: list[np.ndarray] = []
        cell_pos: list[np.ndarray] = []
        coverage: list[float] = []
        for split in scores:
            images = store.split(split)
            for number, (tokens, layout) in enumerate(zip(images.tokens, images.layouts)):
                scored = score_crop(CropFeatures(layout, features(tokens, variant.blocks, variant.fusion), NO_EMBEDDING), mask, scorer, variant.aggregation)
                scores[split].append(scored.score)
                if split == "test-ok":
                    cell_neg.append(scored.grid[layout.valid()])
                elif (share := images.masks[number]) is not None:
                    cell_pos.append(scored.grid[share >= 0.5])
                    cell_neg.append(scored.grid[(share == 0) & layout.valid()])
                    if (share >= 0.5).any():
                        coverage.append(float(scored.foreground[share >= 0.5].mean()))
        ok, nok = np.array(scores["test-ok"]), np.array(scores["test-nok"])
        threshold, recall = recall_at(ok, nok, 0.01)
        return {
            "image_auroc": rank_auroc(ok, nok),
            "recall_1pct": recall,
            "threshold_1pct": threshold,
            "patch_auroc": rank_auroc(np.concatenate(cell_neg), np.concatenate(cell_pos)) if cell_pos else None,
            "defect_cells_scored": float(np.mean(coverage)) if coverage else None,
            "separation": float(np.min(nok) / np.max(ok)),
            "ok_scores": [round(v, 6) for v in ok.tolist()], "nok_scores": [round(v, 6) for v in nok.tolist()],
            "bank": len(bank),
            "ok": len(ok), "nok": len(nok),
            "seconds_bank": round(banked - started, 1), "seconds_total": round(time.perf_counter() - started, 1),
        }


BEST_BLOCKS: tuple[int, ...] = (9,)  # chosen from the block sweeps of both sets (see accuracy.md)
ROTATIONS = ("rot90", "rot180", "rot270")
FLIPS = ("flipx", "flipy")
D4 = ROTATIONS + ("flipx", "flipy", "flipx-rot90", "flipx-rot270")
ROT45 = ("rot45", "rot135", "rot225", "rot315")


def block_sweep(layout: str, suffix: str = "") -> list[Variant]:
    single = [Variant(f"block {b}{suffix}", layout, blocks=(b,)) for b in BLOCKS]
    fused = [Variant(f"blocks 8+11 concat{suffix}", layout, blocks=(8, 11)),
             Variant(f"blocks 9+12 concat{suffix}", layout, blocks=(9, 12)),
             Variant(f"blocks 9+12 mean{suffix}", layout, blocks=(9, 12), fusion="mean")]
    return single + fused


def method_sweep(layout: str, augments: dict[str, tuple[str, ...]], suffix: str = "", mask: bool = True) -> list[Variant]:
    best = Variant(f"best block{suffix}", layout, blocks=BEST_BLOCKS)
    rows = [Variant(f"k={k}{suffix}", layout, BEST_BLOCKS, k=k) for k in (3, 5)]
    rows += [Variant(f"{a}{suffix}", layout, BEST_BLOCKS, aggregation=a) for a in ("max", "top10")]
    rows += [Variant(f"augment {name}{suffix}", layout, BEST_BLOCKS, augment=transforms) for name, transforms in augments.items()]
    if mask:
        rows += [Variant(f"mask {m}{suffix}", layout, BEST_BLOCKS, mask=m) for m in ("pca", "pca-image")]
    return [best, *rows]


def mpdd_variants() -> list[Variant]:
    augments = {"rot90/180/270": ROTATIONS, "flips + rotations (D4)": D4, "rotations 45 deg + 90": ROTATIONS + ROT45}
    rows = block_sweep("stretch-448") + method_sweep("stretch-448", augments)
    rows += [Variant("augment D4 + mask pca", "stretch-448", BEST_BLOCKS, augment=D4, mask="pca"),
             Variant("augment D4 + mask pca, k=3", "stretch-448", BEST_BLOCKS, k=3, augment=D4, mask="pca"),
             Variant("today, 224 px", "stretch-224"), Variant("best block, 224 px", "stretch-224", BEST_BLOCKS),
             Variant("augment rotations, 224 px", "stretch-224", BEST_BLOCKS, augment=ROTATIONS)]
    return rows


def kolektor_variants() -> list[Variant]:
    native = "stretch-560x224"
    rows = [Variant("block 12, 448x448 stretch", "stretch-448"), Variant("best block, 448x448 stretch", "stretch-448", BEST_BLOCKS)]
    rows += block_sweep(native, ", 560x224")
    rows += method_sweep(native, {"flips + rot180": ("flipx", "flipy", "rot180")}, ", 560x224", mask=False)
    rows += [Variant("best block, 560x224 contrast-normalised", native, BEST_BLOCKS, preprocess="contrast"),
             Variant("best block, tiles 224 (3 per strip)", "tile-224", BEST_BLOCKS),
             Variant("block 12, tiles 224 (3 per strip)", "tile-224"),
             Variant("best block, letterbox 448", "letterbox-448", BEST_BLOCKS)]
    rows += [Variant(f"block {b}, 560x224, 100 references", native, (b,), train_limit=100) for b in (8, 9)]
    rows += [Variant(f"block {b}, 1120x448, 100 references", "stretch-1120x448", (b,), train_limit=100) for b in (8, 9)]
    rows += [Variant(f"block 9, 1120x448, 100 references, {a}", "stretch-1120x448", (9,), aggregation=a, train_limit=100)
             for a in ("max", "top10")]
    return rows


VARIANTS = {"mpdd-metal-plate": mpdd_variants, "kolektorsdd": kolektor_variants}


def load_results() -> dict[str, Any]:
    return json.loads(RESULTS.read_text()) if RESULTS.exists() else {}


def evaluate(datasets: list[str], only: set[str]) -> dict[str, Any]:
    results = load_results()
    for dataset in datasets:
        evaluator = Evaluator(dataset)
        order = lambda v: (v.layout, v.preprocess, v.blocks, v.fusion, v.augment, v.mask, v.coreset, v.train_limit or 0)  # noqa: E731
        for variant in sorted(VARIANTS[dataset](), key=order):
            key = variant.key(dataset)
            if key in results or (only and variant.label not in only) or not evaluator.available(variant):
                continue
            print(f"{SHORT[dataset]}: {variant.label} ...", file=sys.stderr, flush=True)
            results[key] = {"dataset": dataset, "variant": asdict(variant), **evaluator.run(variant)}
            print(f"  {json.dumps(results[key])}", file=sys.stderr, flush=True)
            partial = RESULTS.with_suffix(".partial")
            partial.write_text(json.dumps(results, indent=1))
            partial.replace(RESULTS)  # a killed run never leaves half a file
    return results


def table(results: dict[str, Any]) -> Iterator[str]:
    for dataset, make in VARIANTS.items():
        yield f"\n### {SHORT[dataset]} (`{dataset}`)\n"
        yield "| variant | layout | blocks | k | aggregation | augment | mask | bank | image AUROC | recall @1 % FR | recall @5 % FR | lowest NOK / highest OK | patch AUROC |"
        yield "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
        for variant in make():
            row = results.get(variant.key(dataset))
            if row is None:
                continue
            blocks = "+".join(map(str, variant.blocks)) + (f" {variant.fusion}" if len(variant.blocks) > 1 else "")
            patch = "–" if row["patch_auroc"] is None else f"{row['patch_auroc']:.3f}"
            separation = f"{row['separation']:.2f}" if "separation" in row else "–"
            recall5 = f"{100 * recall_at(np.array(row['ok_scores']), np.array(row['nok_scores']), 0.05)[1]:.0f} %" if "ok_scores" in row else "–"
            yield (f"| {variant.label} | {variant.layout}{' ' + variant.preprocess if variant.preprocess else ''} | {blocks} | "
                   f"{variant.k} | {variant.aggregation} | {','.join(variant.augment) or '–'} | {variant.mask} | {row['bank']} | "
                   f"{row['image_auroc']:.3f} | {100 * row['recall_1pct']:.0f} % | {recall5} | {separation} | {patch} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", default=",".join(VARIANTS))
    parser.add_argument("--only", nargs="*", default=[], help="evaluate only variants with these labels")
    args = parser.parse_args()
    results = evaluate([s for s in args.sets.split(",") if s], set(args.only))
    lines = [
        "# Accuracy methods on the shared sets (generated by benchmarks/accuracy_methods.py)",
        "",
        f"Machine: {platform.node() or 'shared dev VM'}, {platform.processor() or platform.machine()}, 2 vCPUs shared "
        "with other jobs. Embedded DINOv2 ViT-S/14 (PyTorch, tokens cached per block), okcell preprocessing and sizing.",
        "Bank: greedy k-center coreset (okcell SequentialCoreset, 10 % of the OK training patches, projections 128-d); "
        "exact nearest neighbours (matrix products). Recall at 1 % false rejects: threshold from the **test OK** scores "
        "(at most floor(1 % of n) test OK above it; with < 100 test OK images that is the highest test OK score). "
        "Lowest NOK / highest OK: the image-score margin (above 1: every test NOK scores above every test OK). "
        "Patch AUROC: grid cells with >= 50 % defect mask against defect-free cells of all test images.",
        *table(results),
        "",
    ]
    TABLE.parent.mkdir(parents=True, exist_ok=True)
    TABLE.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
