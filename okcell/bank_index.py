"""The reference bank as an hnswlib index: inner product on L2-normalised features (= cosine similarity)."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import hnswlib
import numpy as np

from okcell.schema import ConfigError, require_keys, typed

MAX_EF = 2048
"""The largest search beam calibration tunes up to and a recipe may hold."""


@dataclass(frozen=True)
class IndexParams:
    """hnswlib graph parameters: links per node ``M``, build beam ``ef_construction``, search beam ``ef``."""

    M: int = 16
    ef_construction: int = 200
    ef: int = 64

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"index parameter '{name}' must be a positive integer, found {value!r}")

    def to_json(self) -> dict[str, Any]:
        return {"library": "hnswlib", "space": "ip", **asdict(self)}

    @classmethod
    def from_json(cls, data: Any, source: str) -> "IndexParams":
        require_keys(data, {"library", "space", "M", "ef_construction", "ef"}, set(), source)
        if data["library"] != "hnswlib" or data["space"] != "ip":
            raise ConfigError(f"{source}: index must be hnswlib with space 'ip', found {data['library']!r} / {data['space']!r}")
        return cls(*(typed(data, key, int, source) for key in ("M", "ef_construction", "ef")))


def normalise_rows(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32)."""
    features = np.asarray(features, dtype=np.float32)
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.maximum(norms, 1e-12)


def build_index(features: np.ndarray, params: IndexParams = IndexParams(), threads: int = -1) -> hnswlib.Index:
    """hnswlib index over (M, C) features (normalised here), labels 0..M-1."""
    if features.ndim != 2 or not len(features):
        raise ValueError(f"bank features must be a non-empty (M, C) array, found shape {features.shape}")
    index = hnswlib.Index(space="ip", dim=int(features.shape[1]))
    index.init_index(max_elements=int(features.shape[0]), ef_construction=params.ef_construction, M=params.M)
    index.set_num_threads(threads if threads > 0 else -1)
    index.add_items(normalise_rows(features), np.arange(features.shape[0]))
    index.set_ef(params.ef)
    return index


def load_index(path: Path, dim: int, count: int, params: IndexParams) -> hnswlib.Index:
    """Load a saved bank; ConfigError naming the file if it does not hold ``count`` vectors of ``dim``."""
    if not path.is_file():
        raise ConfigError(f"{path}: reference bank index not found")
    index = hnswlib.Index(space="ip", dim=dim)
    try:
        index.load_index(str(path), max_elements=count)
    except RuntimeError as exc:
        raise ConfigError(f"{path}: not a readable hnswlib index for {dim}-dimensional features ({exc})") from None
    if index.element_count != count:
        raise ConfigError(f"{path}: index holds {index.element_count} vectors, manifest says {count}")
    index.set_ef(params.ef)
    return index


@contextmanager
def hidden(index: hnswlib.Index, labels: np.ndarray) -> Iterator[hnswlib.Index]:
    """``index`` with the vectors ``labels`` left out of search results (marked deleted) until the block ends;
    the graph stays as built, so searches still pass through them."""
    marked: list[int] = []
    try:
        for label in np.asarray(labels, dtype=np.int64).tolist():
            index.mark_deleted(label)
            marked.append(label)
        yield index
    finally:
        for label in marked:
            index.unmark_deleted(label)
