"""``okcell calibrate`` end to end: reference features (sized by the sizing rule, with augmented copies) -> mask ->
fold coresets (their union is the final bank) -> held-out OK scores (leave-one-out against the final bank, or
k-fold) -> threshold -> NOK and synthetic scoring, labelled embeddings -> report -> recipe directory (written
atomically)."""

from __future__ import annotations

import dataclasses
import datetime
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from okcell import __version__
from okcell import recipe as recipe_files
from okcell.bank_index import IndexParams, build_index, hidden
from calibration.augment import SWAPS_SIDES
from calibration.coreset import SequentialCoreset
from calibration.ef_tuning import EfTuning, tune_ef
from okcell.bank_index import MAX_EF
from calibration.reference_features import FeatureCache, ReferenceFormat, extract_images
from okcell.frames import foreground_patches, score_crop
from okcell.labelled import LabelledEmbeddings
from okcell.memory import peak_rss_mb
from okcell.progress import Progress
from calibration.report import write_report
from calibration.thresholds import Risk, assess, assign_folds
from okcell.extractor import FeatureExtractor
from okcell.images import ImageError, list_images
from okcell.masking import ImageMask, Mask, NoMask, PcaMask
from okcell.names import HELD_OUT, HeldOut
from okcell.roi import Roi
from okcell.scoring import DECISION_RULE, PatchScorer, check_aggregation
from okcell.schema import ConfigError, sha256_file
from okcell.signing import key_id, sign_file
from okcell.sizing import Sizing, stretch_warning

DEFAULT_MAX_BANK = 100_000
EF_SAMPLE_IMAGES = 8
PCA_FIT_IMAGES = 64
SQUARE_TOLERANCE = 0.05


@dataclass(frozen=True)
class CalibrationSettings:
    """Inputs and knobs of one calibration (CLI flags map one to one)."""

    ok_dir: Path
    nok_dirs: tuple[Path, ...] = ()
    synthetic_dirs: tuple[Path, ...] = ()
    roi: Roi | None = None
    target_frr: float = 0.01
    folds: int = 5
    held_out: HeldOut = "leave-one-out"
    k: int = 1
    aggregation: str = "top1pct"
    sizing: Sizing = field(default_factory=Sizing)
    mask: str = "none"  # none, pca, or the path of a mask image (white = inspect)
    augment: tuple[str, ...] = ()  # names from calibration.augment.AUGMENTATIONS
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
            raise ConfigError(f"--folds {self.folds}: need at least 2 (the bank is the union of one coreset per fold)")
        if self.held_out not in HELD_OUT:
            raise ConfigError(f"--held-out {self.held_out!r}: expected one of {', '.join(HELD_OUT)}")
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
        if self.sizing.mode != "tile" and self.sizing.tile_scale is not None:
            raise ConfigError(f"--tile-scale {self.sizing.tile_scale}: only with --sizing tile (found --sizing {self.sizing.mode})")

    def check_augment(self, crop_size: tuple[int, int], model_size: tuple[int, int]) -> None:
        """Quarter turns of a crop whose aspect differs from the model input's would be stretched differently from
        any real frame: refuse them with ``stretch`` sizing."""
        turns = [name for name in self.augment if name in SWAPS_SIDES]
        if not turns or self.sizing.mode != "stretch":
            return
        crop_aspect, model_aspect = crop_size[1] / crop_size[0], model_size[1] / model_size[0]
        if abs(crop_aspect / model_aspect - 1.0) > SQUARE_TOLERANCE or abs(model_aspect - 1.0) > SQUARE_TOLERANCE:
            raise ConfigError(
                f"--augment {','.join(turns)}: quarter turns need square crops and a square model input with "
                f"--sizing stretch (crop {crop_size[1]}x{crop_size[0]} px, model {model_size[1]}x{model_size[0]} px); "
                "use --sizing letterbox or tile, or rot180/flipx/flipy"
            )


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


def _fold_coresets(cache: FeatureCache, fold_of: np.ndarray, mask: Mask, settings: CalibrationSettings) -> list[SequentialCoreset]:
    """One running coreset per fold (its references' foreground patches, augmented copies included), fed chunk
    by chunk from the cache, each patch tagged with its reference image; their union is the final bank."""
    coresets = []
    with Progress("coreset", len(fold_of), "images") as progress:
        for fold in range(settings.folds):
            coreset = SequentialCoreset(cache.feature_dim, settings.coreset_ratio, settings.max_bank // settings.folds, seed=settings.seed)
            rows = cache.rows(np.flatnonzero(fold_of == fold))
            for start in range(0, len(rows), settings.chunk_images):
                chunk = rows[start : start + settings.chunk_images]
                kept = [foreground_patches(cache.crop(row), mask) for row in chunk]
                coreset.add(np.concatenate(kept), np.repeat([cache.sources[row] for row in chunk], [len(k) for k in kept]))
                progress.advance(len(chunk))
            coresets.append(coreset)
            progress.note(f"fold {fold + 1}/{settings.folds}: coreset of {len(coreset)} from {coreset.patches_seen} patches")
    return coresets


def _scorer(bank: np.ndarray, settings: CalibrationSettings) -> PatchScorer:
    if settings.k > len(bank):
        raise ConfigError(f"--k {settings.k}: larger than the reference bank ({len(bank)} patches); use more OK images or a smaller k")
    return PatchScorer(build_index(bank, settings.index, settings.threads), settings.k, settings.aggregation, settings.threads)


def _tuned_settings(cache: FeatureCache, fold_of: np.ndarray, coresets: list[SequentialCoreset], settings: CalibrationSettings) -> tuple[CalibrationSettings, EfTuning]:
    """Settings whose hnswlib ``ef`` keeps held-out image scores (the frames of up to ``EF_SAMPLE_IMAGES`` fold-0
    references against the other folds' bank) within tolerance of exact search."""
    bank = np.concatenate([c.features for c in coresets[1:]])
    rows = cache.rows(np.flatnonzero(fold_of == 0), originals_only=True)[:EF_SAMPLE_IMAGES]
    tuning = tune_ef(_scorer(bank, settings), bank, np.concatenate([cache.crop(row).patches for row in rows]))
    _say(f"search beam ef={tuning.ef}: held-out image scores within {100 * tuning.max_relative_error:.3f} % of exact search")
    return dataclasses.replace(settings, index=dataclasses.replace(settings.index, ef=tuning.ef)), tuning


def _held_out_scores(cache: FeatureCache, fold_of: np.ndarray, coresets: list[SequentialCoreset], mask: Mask, settings: CalibrationSettings) -> np.ndarray:
    """k-fold: each reference (originals only) against the bank of the other folds' coresets (smaller than the
    final bank, so its scores run higher than a new part's: the threshold errs high)."""
    scores = np.empty(len(fold_of), dtype=np.float64)
    with Progress("held-out scores", len(fold_of), "images") as progress:
        for fold in range(settings.folds):
            bank = np.concatenate([c.features for i, c in enumerate(coresets) if i != fold])
            scorer = _scorer(bank, settings)
            rows = cache.rows(np.flatnonzero(fold_of == fold), originals_only=True)
            for row in rows:
                scores[cache.sources[row]] = score_crop(cache.crop(row), mask, scorer, settings.aggregation).score
                progress.advance()
            progress.note(f"fold {fold + 1}/{settings.folds}: {len(rows)} held-out OK images scored against a bank of {len(bank)}")
    return scores


def _own_rows(sources: np.ndarray, references: int) -> list[np.ndarray]:
    """Bank rows per reference image, from the reference image of each bank row."""
    order = np.argsort(sources, kind="stable")
    return np.split(order, np.cumsum(np.bincount(sources, minlength=references))[:-1])


def _leave_one_out(cache: FeatureCache, bank: np.ndarray, sources: np.ndarray, mask: Mask, settings: CalibrationSettings,
                   references: int) -> tuple[PatchScorer, np.ndarray, EfTuning]:
    """The final bank's scorer (``ef`` tuned on it) and each reference's score against it without the bank patches
    taken from that reference (or its augmented copies): the bank a new part meets, less one image's share."""
    scorer = _scorer(bank, settings)
    own = _own_rows(sources, references)
    sample = cache.rows(range(min(EF_SAMPLE_IMAGES, references)), originals_only=True)
    crops = [cache.crop(row) for row in sample]
    left_out = [own[cache.sources[row]] for row, crop in zip(sample, crops) for _ in range(len(crop.patches))]
    tuning = tune_ef(scorer, bank, np.concatenate([crop.patches for crop in crops]), left_out=left_out)
    _say(f"search beam ef={tuning.ef}: leave-one-out image scores within {100 * tuning.max_relative_error:.3f} % of exact search")
    scores = np.empty(references, dtype=np.float64)
    with Progress("leave-one-out scores", references, "images") as progress:
        for row in cache.rows(range(references), originals_only=True):
            source = cache.sources[row]
            with hidden(scorer.index, own[source]):
                scores[source] = score_crop(cache.crop(row), mask, scorer, settings.aggregation).score
            progress.advance()
        progress.note(f"{references} OK images scored against the bank of {len(bank)} without their own patches")
    return scorer, scores, tuning


@dataclass
class ReferenceBank:
    """The final bank's scorer (``ef`` tuned) and the held-out score of every reference."""

    scorer: PatchScorer
    size: int
    patches_seen: int
    ok_scores: np.ndarray
    ef_tuning: EfTuning


def reference_bank(cache: FeatureCache, mask: Mask, settings: CalibrationSettings) -> ReferenceBank:
    """Fold coresets of the cached reference crops -> final bank, and held-out scores as ``settings.held_out`` says."""
    references = cache.original.count(True)
    fold_of = assign_folds(references, settings.folds, settings.seed)
    coresets = _fold_coresets(cache, fold_of, mask, settings)
    bank = np.concatenate([c.features for c in coresets])
    if settings.held_out == "k-fold":
        settings, tuning = _tuned_settings(cache, fold_of, coresets, settings)
        ok_scores = _held_out_scores(cache, fold_of, coresets, mask, settings)
        scorer = _scorer(bank, settings)
    else:
        sources = np.concatenate([c.sources for c in coresets])
        scorer, ok_scores, tuning = _leave_one_out(cache, bank, sources, mask, settings, references)
    return ReferenceBank(scorer, len(bank), sum(c.patches_seen for c in coresets), ok_scores, tuning)


def _mask(cache: FeatureCache | None, settings: CalibrationSettings) -> Mask:
    """The background mask of ``settings.mask``: none, fitted on (up to PCA_FIT_IMAGES) references, or read."""
    if settings.mask == "none":
        return NoMask()
    if settings.mask == "pca":
        assert cache is not None
        rows = cache.rows(range(len(cache)), originals_only=True)
        chosen = np.random.default_rng(settings.seed).permutation(rows)[:PCA_FIT_IMAGES]
        crops = [cache.crop(int(row)) for row in sorted(chosen)]
        mask = PcaMask.fit([(crop.patches, crop.layout) for crop in crops], settings.seed)
        kept = np.mean([mask.foreground(crop.patches, crop.layout).mean() for crop in crops])
        _say(f"PCA background mask: {100 * kept:.0f} % of the reference patches are foreground")
        return mask
    return ImageMask.read(Path(settings.mask))


def _save_mask(mask: Mask, staging: Path) -> dict[str, Any]:
    """Write the mask into the recipe; returns its manifest entry."""
    if isinstance(mask, PcaMask):
        mask.save(staging / recipe_files.PCA_MASK_FILE)
        name = recipe_files.PCA_MASK_FILE
    elif isinstance(mask, ImageMask):
        cv2.imwrite(str(staging / recipe_files.IMAGE_MASK_FILE), (mask.mask * 255).astype(np.uint8))
        name = recipe_files.IMAGE_MASK_FILE
    else:
        return {"mode": "none"}
    return {"mode": mask.mode, "file": name, "sha256": sha256_file(staging / name)}


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
    settings = dataclasses.replace(settings, sizing=settings.sizing.resolved(reference.crop_size, sidecar.input_size))
    settings.check_augment(reference.crop_size, sidecar.input_size)
    warning = stretch_warning(reference.crop_size, sidecar.input_size, sidecar.patch_size) if settings.sizing.mode == "stretch" else None
    if warning is not None:
        _say(f"note: {warning}")
    image_mask = None if settings.mask in ("none", "pca") else _mask(None, settings)  # a bad mask file fails now

    staging = recipe_files.staging_directory(out)
    try:
        sizes: list[tuple[int, int]] = []
        with FeatureCache(sidecar.feature_dim, directory=staging) as cache:
            label = "OK features" + (f" (+ {', '.join(settings.augment)})" if settings.augment else "")
            for _, per_image in extract_images(extractor, ok_paths, reference, label, settings.sizing, settings.batch_size, settings.augment):
                for crops in per_image:
                    source = len(sizes)
                    sizes.append(crops[0].layout.crop_size)
                    for number, crop in enumerate(crops):
                        cache.append(crop, source, original=number == 0)
            mask = image_mask if image_mask is not None else _mask(cache, settings)
            references = reference_bank(cache, mask, settings)
            ok_embeddings = cache.embeddings
        scorer, ok_scores, ef_tuning = references.scorer, references.ok_scores, references.ef_tuning
        settings = dataclasses.replace(settings, index=dataclasses.replace(settings.index, ef=ef_tuning.ef))
        scorer.index.save_index(str(staging / recipe_files.BANK_FILE))
        mask_entry = _save_mask(mask, staging)

        nok_scores: dict[str, np.ndarray] = {}
        embeddings, labels = [ok_embeddings], ["OK"] * len(ok_embeddings)
        for name, paths in nok_groups + synthetic_groups:
            scores, group = [], []
            for _, per_image in extract_images(extractor, paths, reference, name, settings.sizing, settings.batch_size):
                scores += [score_crop(crop, mask, scorer, settings.aggregation).score for crop, in per_image]
                group += [crop.embedding for crop, in per_image]
            if not name.startswith("synthetic:"):
                nok_scores[name] = np.array(scores)
            embeddings.append(np.stack(group))
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
                "sizing": settings.sizing.to_json(),
                "crop_sizes": [list(map(min, zip(*sizes))), list(map(max, zip(*sizes)))],
            },
            "scoring": {"k": settings.k, "aggregation": settings.aggregation, "mask": mask_entry,
                        "decision": DECISION_RULE},
            "bank": {
                "file": recipe_files.BANK_FILE,
                "sha256": sha256_file(staging / recipe_files.BANK_FILE),
                "size": references.size,
                "coreset_ratio": settings.coreset_ratio,
                "max_size": settings.max_bank,
                "patches_seen": references.patches_seen,
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
                "held_out": settings.held_out,
                "ok_score_range": [float(ok_scores.min()), float(ok_scores.max())],  # the threshold lies within
                "augment": list(settings.augment),
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
            f"bank {references.size} patches from {len(ok_paths)} OK images",
            f"scoring k={settings.k}, {settings.aggregation}, mask {mask.mode}, sizing {settings.sizing.mode}"
            + (f"; bank + {', '.join(settings.augment)}" if settings.augment else ""),
            "held-out OK scores: " + ("leave-one-out" if settings.held_out == "leave-one-out" else f"{settings.folds}-fold"),
        ]
        write_report(staging / recipe_files.REPORT_FILE, ok_scores, nok_scores, risk, header)
        if signing_key is not None:
            sign_file(staging / recipe_files.MANIFEST_FILE, signing_key)
        recipe_files.publish(staging, out, force)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    signed_by = None if signing_key is None else key_id(signing_key.public_key())
    return CalibrationSummary(out, manifest, risk, references.size, peak_rss_mb(), agreement, signed_by)

