"""Labelled reference embeddings and a cosine kNN vote (similarity classification, Synthetic Similarity Search).

Labels: ``"OK"``, the name of each NOK defect folder, ``"synthetic:<folder>"`` for synthetic references."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from okcell.schema import ConfigError


class LabelledEmbeddings:
    """(M, D) L2-normalised image embeddings with one label each; ``nearest_label`` votes among the k nearest."""

    def __init__(self, embeddings: np.ndarray, labels: list[str], k: int = 5) -> None:
        if embeddings.ndim != 2 or len(embeddings) != len(labels) or not len(labels):
            raise ValueError(f"need one label per embedding row, found {embeddings.shape} and {len(labels)} labels")
        if k < 1:
            raise ValueError(f"k must be at least 1, found {k}")
        norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
        self.embeddings = (embeddings / np.maximum(norms, 1e-12)).astype(np.float32)
        self.labels = list(labels)
        self.k = min(k, len(labels))

    def nearest_labels(self, embeddings: np.ndarray) -> list[str]:
        """Majority label among the k most cosine-similar references per row; ties go to the larger similarity sum."""
        return self._vote(np.atleast_2d(embeddings).astype(np.float32) @ self.embeddings.T, self.k)

    def leave_one_out_agreement(self) -> dict[str, float]:
        """Per label: share of its references whose vote among all *other* references gives the label back."""
        hits: dict[str, list[bool]] = {}
        k = min(self.k, len(self.labels) - 1)
        if k < 1:
            return {}
        for start in range(0, len(self.labels), 1024):
            similarity = self.embeddings[start : start + 1024] @ self.embeddings.T
            rows = np.arange(similarity.shape[0])
            similarity[rows, start + rows] = -np.inf
            for offset, label in enumerate(self._vote(similarity, k)):
                hits.setdefault(self.labels[start + offset], []).append(label == self.labels[start + offset])
        return {label: float(np.mean(flags)) for label, flags in hits.items()}

    def _vote(self, similarity: np.ndarray, k: int) -> list[str]:
        nearest = np.argsort(-similarity, axis=1)[:, :k]
        result = []
        for row, indices in enumerate(nearest):
            votes: Counter[str] = Counter()
            weight: dict[str, float] = {}
            for i in indices:
                votes[self.labels[i]] += 1
                weight[self.labels[i]] = weight.get(self.labels[i], 0.0) + float(similarity[row, i])
            result.append(max(votes, key=lambda label: (votes[label], weight[label])))
        return result

    def nearest_label(self, embedding: np.ndarray) -> str:
        return self.nearest_labels(embedding[None, :] if embedding.ndim == 1 else embedding)[0]

    @property
    def counts(self) -> dict[str, int]:
        return dict(Counter(self.labels))

    def save(self, path: Path) -> None:
        with open(path, "wb") as handle:
            np.savez(handle, embeddings=self.embeddings, labels=np.asarray(self.labels, dtype=str), k=np.int64(self.k))

    @classmethod
    def load(cls, path: Path, embedding_dim: int) -> "LabelledEmbeddings":
        """Read a saved set; ConfigError naming the file if it is malformed or of another dimension."""
        try:
            with np.load(path, allow_pickle=False) as data:
                embeddings, labels, k = data["embeddings"], [str(v) for v in data["labels"]], int(data["k"])
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigError(f"{path}: not a labelled-embeddings file ({exc})") from None
        if embeddings.ndim != 2 or embeddings.shape[1] != embedding_dim or len(embeddings) != len(labels):
            raise ConfigError(
                f"{path}: expected (M, {embedding_dim}) embeddings with M labels, found {embeddings.shape} and {len(labels)} labels"
            )
        return cls(embeddings, labels, k)
