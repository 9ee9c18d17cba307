"""``okcell calibrate`` end to end: reference features -> fold coresets -> held-out OK scores -> threshold ->
final bank, NOK and synthetic scoring, labelled embeddings -> report -> recipe directory (written atomically)."""

from __future__ import annotations

import dataclasses
import datetime
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from okcell import __version__
from okcell import recipe as recipe_files
from okcell.bank_index import IndexParams, build_index
from calibration.coreset import SequentialCoreset
from calibration.ef_tuning import EfTuning, tune_ef
from okcell.bank_index import MAX_EF
from calibration.reference_features import FeatureCache, ReferenceFormat, extract_images
from okcell.labelled import LabelledEmbeddings
from okcell.memory import peak_rss_mb
from okcell.progress import Progress
from calibration.report import write_report
from calibration.thresholds import Risk, assess, assign_folds
from okcell.extractor import FeatureExtractor
from okcell.images import ImageError, list_images
from okcell.roi import Roi
from okcell.scoring import DECISION_RULE, PatchScorer, check_aggregation
from okcell.schema import ConfigError, sha256_file
from okcell.signing import key_id, sign_file

DEFAULT_MAX_BANK = 100_000
EF_SAMPLE_IMAGES = 8


@dataclass(frozen=True)
class CalibrationSettings:
    """Inputs and knobs of one calibration (CLI flags map one to one)."""

    ok_dir: Path
    nok_dirs: tuple[Path, ...] = ()
    synthetic_dirs: tuple[Path, ...] = ()
    roi: Roi | None = None
    target_frr: float = 0.01
    folds: int = 5
    k: int = 1
    aggregation: str = "top1pct"
    coreset_ratio: float = 0.1
    max_bank: int = DEFAULT_MAX_BANK
    index: IndexParams = field(default_factory=IndexParams)
    label_k: int = 3
    batch_size: int = 8
    chunk_images: int = 16
    threads: int = -1
    seed: int = 0

    def validate(self) -> None:
        if not 0.0 <= self.target_frr < 1.0:
            raise ConfigError(f"--target-frr {self.target_frr}: expected a rate in [0, 1), e.g. 0.01 for 1 %")
        if self.folds < 2:
            raise ConfigError(f"--folds {self.folds}: need at least 2 (OK images are scored by banks that exclude them)")
        if self.k < 1 or self.label_k < 1:
            raise ConfigError(f"--k {self.k} / --label-k {self.label_k}: must be at least 1")
        if not 0.0 < self.coreset_ratio <= 1.0:
            raise ConfigError(f"--coreset-ratio {self.coreset_ratio}: expected a fraction in (0, 1], e.g. 0.1")
        if self.index.ef > MAX_EF:
            raise ConfigError(f"--hnsw-ef {self.index.ef}: at most {MAX_EF} (calibration raises it as far as needed)")
        if self.max_bank < self.folds:
            raise ConfigError(f"--max-bank {self.max_bank}: must be at least the number of folds ({self.folds})")
        try:
            check_aggregation(self.aggregation)
        except ValueError as exc:
            raise ConfigError(f"--aggregation: {exc}") from None


@dataclass
class CalibrationSummary:
    """What a calibration produced (also written to the manifest)."""

    out: Path
    manifest: dict[str, Any]
    risk: Risk
    bank_size: int
    peak_rss_mb: float
    nearest_label_agreement: dict[str, float]  # per labelled folder: share whose kNN vote (itself left out) is its label
    signed_by: str | None = None  # id of the key that signed the manifest


def _images(folder: Path, what: str) -> list[Path]:
    try:
        return list_images(folder)
    except ImageError as exc:
        raise ConfigError(f"{what}: {exc}") from None


def labelled_folders(folders: tuple[Path, ...], what: str, prefix: str = "") -> list[tuple[str, list[Path]]]:
    """(label, images) per folder: a folder of images is one label (its name); a folder holding only sub-folders
    of images (e.g. ``calib/nok`` or an ``okcell synthesize`` output with ``nok/<kind>/``) gives one label each."""
    result: list[tuple[str, list[Path]]] = []
    for folder in folders:
        images = _images(folder, what)
        if images:
            result.append((prefix + folder.resolve().name, images))
            continue
        parent = folder / "nok" if (folder / "nok").is_dir() else folder
        subfolders = [(prefix + sub.name, list_images(sub)) for sub in sorted(parent.iterdir()) if sub.is_dir()]
        subfolders = [(name, paths) for name, paths in subfolders if paths]
        if not subfolders:
            raise ConfigError(f"{what} {folder}: holds no images (png, jpg, bmp, tif), neither directly nor in sub-folders")
        result.extend(subfolders)
    names = [name for name, _ in result]
    if "OK" in names:
        raise ConfigError(f"{what}: a folder named OK; the label OK is reserved for the --ok references, so rename it")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ConfigError(f"{what}: folder name(s) {', '.join(duplicates)} given twice; labels come from folder names, so rename one")
    return result


def _say(message: str) -> None:
    print(f"calibrate: {message}", file=sys.stderr, flush=True)


def _fold_coresets(cache: FeatureCache, fold_of: np.ndarray, settings: CalibrationSettings) -> list[SequentialCoreset]:
    """One running coreset per fold, fed chunk by chunk from the cache; their union is the final bank."""
    dim = cache.shape[1]
    coresets = []
    with Progress("coreset", len(cache), "images") as progress:
        for fold in range(settings.folds):
            coreset = SequentialCoreset(dim, settings.coreset_ratio, settings.max_bank // settings.folds, seed=settings.seed)
            rows = np.flatnonzero(fold_of == fold)
            for start in range(0, len(rows), settings.chunk_images):
                chunk = rows[start : start + settings.chunk_images]
                coreset.add(cache.patches(chunk).reshape(-1, dim))
                progress.advance(len(chunk))
            coresets.append(coreset)
            progress.note(f"fold {fold + 1}/{settings.folds}: coreset of {len(coreset)} from {coreset.patches_seen} patches")
    return coresets


def _scorer(bank: np.ndarray, settings: CalibrationSettings) -> PatchScorer:
    if settings.k > len(bank):
        raise ConfigError(f"--k {settings.k}: larger than the reference bank ({len(bank)} patches); use more OK images or a smaller k")
    return PatchScorer(build_index(bank, settings.index, settings.threads), settings.k, settings.aggregation, settings.threads)


def _tuned_settings(cache: FeatureCache, fold_of: np.ndarray, coresets: list[SequentialCoreset], settings: CalibrationSettings) -> tuple[CalibrationSettings, EfTuning]:
    """Settings whose hnswlib ``ef`` keeps held-out image scores (fold 0 against the other folds' bank, up to
    ``EF_SAMPLE_IMAGES`` images) within tolerance of exact search."""
    bank = np.concatenate([c.features for c in coresets[1:]])
    rows = np.flatnonzero(fold_of == 0)[:EF_SAMPLE_IMAGES]
    tuning = tune_ef(_scorer(bank, settings), bank, cache.patches(rows))
    _say(f"search beam ef={tuning.ef}: held-out image scores within {100 * tuning.max_relative_error:.3f} % of exact search")
    return dataclasses.replace(settings, index=dataclasses.replace(settings.index, ef=tuning.ef)), tuning


def _held_out_scores(cache: FeatureCache, fold_of: np.ndarray, coresets: list[SequentialCoreset], settings: CalibrationSettings) -> np.ndarray:
    scores = np.empty(len(cache), dtype=np.float64)
    with Progress("held-out scores", len(cache), "images") as progress:
        for fold in range(settings.folds):
            bank = np.concatenate([c.features for i, c in enumerate(coresets) if i != fold])
            scorer = _scorer(bank, settings)
            rows = np.flatnonzero(fold_of == fold)
            for start in range(0, len(rows), settings.chunk_images):
                chunk = rows[start : start + settings.chunk_images]
                scores[chunk] = scorer.score(cache.patches(chunk))[0]
                progress.advance(len(chunk))
            progress.note(f"fold {fold + 1}/{settings.folds}: {len(rows)} held-out OK images scored against a bank of {len(bank)}")
    return scores


def calibrate(extractor: FeatureExtractor, model_path: Path, settings: CalibrationSettings, out: Path, force: bool = False,
              signing_key: Ed25519PrivateKey | None = None) -> CalibrationSummary:
    """Build the recipe at ``out`` (see module doc), its manifest signed with ``signing_key`` if given. Nothing at
    ``out`` changes unless the whole recipe is complete."""
    settings.validate()
    sidecar = extractor.sidecar
    recipe_files.check_destination(out, force)
    ok_paths = _images(settings.ok_dir, "--ok")
    if len(ok_paths) < settings.folds:
        raise ConfigError(f"--ok {settings.ok_dir}: {len(ok_paths)} images; need at least one per fold (--folds {settings.folds}), better 50 or more")
    nok_groups = labelled_folders(settings.nok_dirs, "--nok")
    synthetic_groups = labelled_folders(settings.synthetic_dirs, "--synthetic", prefix="synthetic:")
    reference = ReferenceFormat.from_first(ok_paths[0], settings.roi)
    for _, paths in nok_groups + synthetic_groups:  # a wrong folder fails now, not after the OK feature pass
        reference.load(paths[0])

    staging = recipe_files.staging_directory(out)
    try:
        with FeatureCache(sidecar.num_patches, sidecar.feature_dim, directory=staging) as cache:
            for _, features in extract_images(extractor, ok_paths, reference, "OK features", settings.batch_size):
                cache.append(features)
            fold_of = assign_folds(len(cache), settings.folds, settings.seed)
            coresets = _fold_coresets(cache, fold_of, settings)
            settings, ef_tuning = _tuned_settings(cache, fold_of, coresets, settings)
            ok_scores = _held_out_scores(cache, fold_of, coresets, settings)
            ok_embeddings = cache.embeddings
        bank = np.concatenate([c.features for c in coresets])
        del coresets
        scorer = _scorer(bank, settings)
        scorer.index.save_index(str(staging / recipe_files.BANK_FILE))
        bank_size = len(bank)
        del bank

        nok_scores: dict[str, np.ndarray] = {}
        embeddings, labels = [ok_embeddings], ["OK"] * len(ok_embeddings)
        for name, paths in nok_groups + synthetic_groups:
            scores, group = [], []
            for _, features in extract_images(extractor, paths, reference, name, settings.batch_size):
                scores.append(scorer.score(features.patches)[0])
                group.append(features.embedding)
            if not name.startswith("synthetic:"):
                nok_scores[name] = np.concatenate(scores)
            embeddings.append(np.concatenate(group))
            labels += [name] * len(paths)
        labelled = LabelledEmbeddings(np.concatenate(embeddings), labels, settings.label_k)
        labelled.save(staging / recipe_files.LABELLED_FILE)
        agreement = labelled.leave_one_out_agreement() if len(labelled.counts) > 1 else {}

        risk = assess(ok_scores, nok_scores, settings.target_frr)
        rss = peak_rss_mb()
        manifest = recipe_files.write_manifest(staging, {
            "okcell_version": __version__,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "model": {
                "onnx_file": Path(model_path).name,
                "sha256": sidecar.sha256,
                "input_size": list(sidecar.input_size),
                "feature_dim": sidecar.feature_dim,
                "embedding_dim": sidecar.embedding_dim,
            },
            "input": {
                "roi": None if settings.roi is None else settings.roi.to_json(),
                "channels": reference.channels,
                "image_size": list(reference.image_size),
            },
            "scoring": {"k": settings.k, "aggregation": settings.aggregation, "decision": DECISION_RULE},
            "bank": {
                "file": recipe_files.BANK_FILE,
                "sha256": sha256_file(staging / recipe_files.BANK_FILE),
                "size": bank_size,
                "coreset_ratio": settings.coreset_ratio,
                "max_size": settings.max_bank,
                "patches_seen": len(ok_paths) * sidecar.num_patches,
                "index": settings.index.to_json(),
                "ef_tuning": ef_tuning.to_json(),
            },
            "labelled": {
                "file": recipe_files.LABELLED_FILE,
                "sha256": sha256_file(staging / recipe_files.LABELLED_FILE),
                "k": labelled.k,
                "counts": labelled.counts,
            },
            "risk": risk.to_json(),
            "calibration": {
                "ok_images": len(ok_paths),
                "folds": settings.folds,
                "ok_score_range": [float(ok_scores.min()), float(ok_scores.max())],  # the threshold lies within
                "nok_images": {name: len(paths) for name, paths in nok_groups},
                "synthetic_images": {name: len(paths) for name, paths in synthetic_groups},
                "backend": extractor.backend_name,
                "peak_rss_mb": round(rss, 1),
            },
        })
        header = [
            "okcell calibration report",
            f"recipe {manifest['recipe_id']}  ({manifest['created']})",
            f"model {Path(model_path).name} {sidecar.input_size[1]}x{sidecar.input_size[0]}",
            f"bank {bank_size} patches from {len(ok_paths)} OK images",
            f"scoring k={settings.k}, {settings.aggregation}; {settings.folds}-fold held-out",
        ]
        write_report(staging / recipe_files.REPORT_FILE, ok_scores, nok_scores, risk, header)
        if signing_key is not None:
            sign_file(staging / recipe_files.MANIFEST_FILE, signing_key)
        recipe_files.publish(staging, out, force)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    signed_by = None if signing_key is None else key_id(signing_key.public_key())
    return CalibrationSummary(out, manifest, risk, bank_size, peak_rss_mb(), agreement, signed_by)

