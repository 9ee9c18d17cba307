"""The feature-extraction jobs of the accuracy-methods benchmark: which set, which layout, which reference
augmentation. ``python benchmarks/accuracy_jobs.py JOB...`` extracts them in order (cached; rerunning skips done
chunks); ``all`` runs every job in the order below (cheapest and most important first)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).resolve().parent)]

from accuracy_features import CACHE, Extraction, TokenExtractor, extract_split  # noqa: E402
from okcell.images import list_images  # noqa: E402
from okcell.sizing import Sizing  # noqa: E402

DATASETS = Path(__file__).resolve().parent.parent.parent / "shared" / "datasets"
PATCH = 14


def layout_frames(sizing: Sizing, model_size: tuple[int, int]) -> Callable[[np.ndarray], list[np.ndarray]]:
    def frames(image: np.ndarray) -> list[np.ndarray]:
        return sizing.layout(image.shape[:2], model_size, PATCH).frames(image)
    return frames


def extraction(name: str) -> Extraction:
    """``stretch-448``, ``stretch-560x224``, ``letterbox-448``, ``tile-224`` (short side fills one tile)."""
    mode, size = name.split("-")[:2]
    height, width = (int(v) for v in size.split("x")) if "x" in size else (int(size), int(size))
    return Extraction(name, (height, width), layout_frames(Sizing(mode), (height, width)))


def rotate(angle: int) -> Callable[[np.ndarray], np.ndarray]:
    """Rotation about the centre, same size, borders reflected (as AnomalyDINO augments few-shot references)."""
    def transform(image: np.ndarray) -> np.ndarray:
        if angle % 90 == 0:
            return np.rot90(image, angle // 90)
        height, width = image.shape[:2]
        matrix = cv2.getRotationMatrix2D((width / 2, height / 2), angle, 1.0)
        return cv2.warpAffine(image, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    return transform


def contrast(image: np.ndarray) -> np.ndarray:
    """Per-image contrast normalisation: each channel to mean 128 and standard deviation 40."""
    values = image.astype(np.float32)
    axes = (0, 1)
    mean, std = values.mean(axis=axes, keepdims=True), values.std(axis=axes, keepdims=True)
    return np.clip((values - mean) / np.maximum(std, 1.0) * 40.0 + 128.0, 0, 255).astype(np.uint8)


TRANSFORMS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "rot90": rotate(90), "rot180": rotate(180), "rot270": rotate(270),
    "flipx": lambda im: im[:, ::-1], "flipy": lambda im: im[::-1],
    "flipx-rot90": lambda im: np.rot90(im[:, ::-1]), "flipx-rot270": lambda im: np.rot90(im[:, ::-1], 3),
    "flipy-rot90": lambda im: np.rot90(im[::-1]),
    "rot45": rotate(45), "rot135": rotate(135), "rot225": rotate(225), "rot315": rotate(315),
}
D4 = ("rot90", "rot180", "rot270", "flipx", "flipy", "flipx-rot90", "flipx-rot270")


@dataclass(frozen=True)
class Job:
    dataset: str
    layout: str
    splits: tuple[str, ...] = ("train", "test-ok", "test-nok")  # or train-<transform>
    preprocess: str = ""  # "" or "contrast"
    train_limit: int | None = None


JOBS: dict[str, Job] = {
    "mpdd-448": Job("mpdd-metal-plate", "stretch-448"),
    "kolektor-560x224": Job("kolektorsdd", "stretch-560x224"),
    "kolektor-448": Job("kolektorsdd", "stretch-448"),
    "mpdd-448-rot": Job("mpdd-metal-plate", "stretch-448", ("train-rot90", "train-rot180", "train-rot270")),
    "kolektor-tile224": Job("kolektorsdd", "tile-224"),
    "mpdd-448-flips": Job("mpdd-metal-plate", "stretch-448", tuple(f"train-{t}" for t in D4 if "flip" in t)),
    "kolektor-560x224-flips": Job("kolektorsdd", "stretch-560x224", ("train-flipx", "train-flipy", "train-rot180")),
    "mpdd-448-rot45": Job("mpdd-metal-plate", "stretch-448", tuple(f"train-rot{a}" for a in (45, 135, 225, 315))),
    "mpdd-224": Job("mpdd-metal-plate", "stretch-224"),
    "kolektor-letterbox448": Job("kolektorsdd", "letterbox-448"),
    "kolektor-560x224-contrast": Job("kolektorsdd", "stretch-560x224", preprocess="contrast"),
    "kolektor-1120x448": Job("kolektorsdd", "stretch-1120x448", train_limit=100),
}


def split_paths(dataset: str, split: str) -> list[Path]:
    root = DATASETS / dataset
    if split.startswith("train"):
        return list_images(root / "train" / "ok")
    if split == "test-ok":
        return list_images(root / "test" / "ok")
    return [p for folder in sorted((root / "test" / "nok").iterdir()) for p in list_images(folder)]


def job_folder(job: Job) -> Path:
    suffix = f"-{job.preprocess}" if job.preprocess else ""
    return CACHE / job.dataset / f"{job.layout}{suffix}"


def run_job(extractor: TokenExtractor, name: str) -> None:
    job = JOBS[name]
    print(f"job {name}: {job.dataset} {job.layout} {job.preprocess}", file=sys.stderr, flush=True)
    for split in job.splits:
        paths = split_paths(job.dataset, split)
        if split.startswith("train") and job.train_limit is not None:
            paths = paths[: job.train_limit]
        augment = TRANSFORMS[split[len("train-"):]] if split.startswith("train-") else None
        steps = [t for t in (augment, contrast if job.preprocess == "contrast" else None) if t is not None]

        def transform(image: np.ndarray, steps: list[Callable[[np.ndarray], np.ndarray]] = steps) -> np.ndarray:
            for step in steps:
                image = step(image)
            return image

        extract_split(extractor, extraction(job.layout), job_folder(job), split, paths, transform if steps else None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("jobs", nargs="+", choices=[*JOBS, "all"])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    extractor = TokenExtractor(args.threads)
    for name in (list(JOBS) if "all" in args.jobs else args.jobs):
        run_job(extractor, name)


if __name__ == "__main__":
    main()
