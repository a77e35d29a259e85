"""The two classes and their counts and weights, shared by balancing (which writes the weights
next to its store) and each fold's training (which weights its own labels)."""

from __future__ import annotations

import numpy as np
from sklearn.utils.class_weight import compute_class_weight

from glomx.errors import GlomxError

CLASSES = np.array([0, 1])  # 0 non-sclerotic, 1 globally sclerotic


class MissingClassError(GlomxError, ValueError):
    """A set of labels lacks a class, so it can be neither weighted nor balanced."""


def class_counts(labels: np.ndarray) -> dict[str, int]:
    """``{"0": n0, "1": n1}``."""
    return {str(c): int(np.count_nonzero(labels == c)) for c in CLASSES}


def class_weights(labels: np.ndarray) -> dict[str, float]:
    """scikit-learn's balanced weights ``n / (2 * n_c)``, keyed ``"0"`` and ``"1"``."""
    missing = [int(c) for c in CLASSES if not np.any(labels == c)]
    if missing:
        raise MissingClassError(f"class(es) {missing} have no images; cannot weight or balance")
    weights = compute_class_weight("balanced", classes=CLASSES, y=labels)
    return {str(c): float(w) for c, w in zip(CLASSES, weights, strict=True)}
