"""Colour-only reference: logistic regression on each channel's mean and standard deviation.

Stain colour differs strongly between hospitals and so does the class mix, so a model can
score well by recognising the site instead of sclerosis. If a trained model barely beats
this baseline, it has probably learnt colour.
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from glomx.data.store import ArrayStore

NAME = "colour_baseline"


def colour_features(images: np.ndarray) -> np.ndarray:
    """``(N, H, W, C)`` uint8 → ``(N, 6)``: mean and std of R, G and B."""
    rgb = images[..., :3].reshape(len(images), -1, 3).astype(np.float32)
    return np.concatenate([rgb.mean(axis=1), rgb.std(axis=1)], axis=1)


def store_features(store: ArrayStore, chunk_size: int = 128) -> np.ndarray:
    """Colour features of every image of ``store``, streamed chunk by chunk."""
    parts = [colour_features(chunk) for _, chunk in store.iter_chunks(chunk_size)]
    return np.concatenate(parts) if parts else np.empty((0, 6), np.float32)


class ColourBaseline:
    """Fitted on the cross-validated (non-test) slides with balanced class weights; threshold
    0.5, like the models'."""

    def __init__(self, seed: int = 0) -> None:
        self.model: Pipeline = make_pipeline(
            StandardScaler(), LogisticRegression(class_weight="balanced", random_state=seed)
        )
        self.threshold = 0.5

    def fit(self, train: ArrayStore) -> ColourBaseline:
        self.model.fit(store_features(train), train.labels)
        return self

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        """``(N, H, W, C)`` uint8 → ``(N,)`` P(class 1)."""
        return self.model.predict_proba(colour_features(images))[:, 1]
