"""Probabilities for a whole store, optionally averaged over the 8 dihedral transforms."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from glomx.data.adapt import dihedral_views
from glomx.data.store import ArrayStore
from glomx.progress import Progress


class Scorer(Protocol):
    """Anything with the classifier's ``predict_proba`` (glomx models, the colour baseline)."""

    def predict_proba(self, images: np.ndarray) -> np.ndarray: ...


def predict_batch(classifier: Scorer, images: np.ndarray, tta: bool) -> np.ndarray:
    """``(N,)`` P(class 1); with ``tta`` the mean over the 8 dihedral views."""
    if not tta:
        return classifier.predict_proba(images)
    views = [classifier.predict_proba(np.ascontiguousarray(v)) for v in dihedral_views(images)]
    return np.mean(views, axis=0)


def score_store(
    classifier: Scorer,
    store: ArrayStore,
    tta: bool,
    batch_size: int = 64,
    progress: Progress | None = None,
) -> np.ndarray:
    """Probabilities for every image of ``store``, streamed in batches (each counted on
    ``progress``)."""
    parts = []
    for _, chunk in store.iter_chunks(batch_size):
        parts.append(predict_batch(classifier, chunk, tta))
        if progress:
            progress.update(len(chunk))
    return np.concatenate(parts).astype(np.float64) if parts else np.empty(0)
