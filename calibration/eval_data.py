"""The folder layout ``okcell evaluate`` reads::

    DATA/train/ok/                              OK references (calibration input)
    DATA/test/ok/                               OK parts kept aside: false rejects
    DATA/test/nok/<defect>/                     defective parts: escapes and recall per defect type
    DATA/ground_truth/<defect>/<name>_mask.png  optional defect masks (non-zero = defect): pixel metrics

This is the MVTec AD / MPDD layout with ``good`` named ``ok``. An ``okcell demo-data`` folder works as it is: its
``holdout/`` is the test split and ``masks/holdout/<defect>/<name>`` its masks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from okcell.images import ImageError, list_images
from okcell.schema import ConfigError

MaskPath = Callable[[Path, str, Path], Path]  # (root, defect, image) -> where its mask would be
LAYOUTS: tuple[tuple[str, MaskPath], ...] = (
    ("test", lambda root, defect, image: root / "ground_truth" / defect / f"{image.stem}_mask.png"),
    ("holdout", lambda root, defect, image: root / "masks" / "holdout" / defect / image.name),  # okcell demo-data
)


@dataclass(frozen=True)
class TestImage:
    """One test image, its truth and, for a defective part, its mask file if the set has one."""

    path: Path
    defect: str | None  # None: a good part
    mask: Path | None = None

    @property
    def truth(self) -> str:
        return "OK" if self.defect is None else "NOK"


@dataclass(frozen=True)
class EvalSet:
    """A data set in the layout above, checked when opened."""

    root: Path
    train_ok: Path
    test_ok: Path
    test: tuple[TestImage, ...]

    @property
    def defects(self) -> list[str]:
        return sorted({image.defect for image in self.test if image.defect is not None})

    @property
    def masked(self) -> int:
        """Defective test images with a mask file."""
        return sum(image.mask is not None for image in self.test)

    @classmethod
    def open(cls, root: Path) -> "EvalSet":
        """Read the layout under ``root``; ConfigError naming the folder that is missing or empty."""
        root = Path(root)
        if not root.is_dir():
            raise ConfigError(f"--data {root}: no such folder")
        train_ok = root / "train" / "ok"
        if not _images(train_ok):
            raise ConfigError(f"--data {root}: {train_ok} holds no OK reference images; expected the layout "
                              "train/ok, test/ok, test/nok/<defect>")
        split, mask_path = next(((name, where) for name, where in LAYOUTS if (root / name).is_dir()), LAYOUTS[0])
        test_ok, test_nok = root / split / "ok", root / split / "nok"
        test = [TestImage(path, None) for path in _images(test_ok)]
        if not test:
            raise ConfigError(f"--data {root}: {test_ok} holds no images; OK test images are needed to measure false rejects")
        folders = []  # images directly in nok/ count as defect type "nok", as in `okcell inspect --truth-from-folders`
        if test_nok.is_dir():
            folders = [(test_nok, "nok")] + [(p, p.name) for p in sorted(test_nok.iterdir()) if p.is_dir()]
        for folder, defect in folders:
            for path in _images(folder):
                mask = mask_path(root, defect, path)
                test.append(TestImage(path, defect, mask if mask.is_file() else None))
        return cls(root, train_ok, test_ok, tuple(test))


def _images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    try:
        return list_images(folder)
    except ImageError as exc:
        raise ConfigError(str(exc)) from None

