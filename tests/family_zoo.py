"""Tiny synthetic stores (40 px blobs) and every model family of ``glomx.models.FAMILIES`` at
its tiniest, for the shared checks of tests/models/test_family_checks.py and the family tests
that look at the same fit.

A new family needs one :data:`SPECS` entry (params that fit in seconds on the blob stores);
the shared checks then run on it and fail until it honours the
:class:`~glomx.models.base.Classifier` contract.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest

from glomx.config import TRAIN_PREFIX, parse
from glomx.data.images import Preprocessing
from glomx.data.store import ArrayStore, StoreWriter
from glomx.family_params import TRAIN_SECTIONS
from glomx.models import family_class
from glomx.models.base import Classifier

PREPROCESSING = Preprocessing(size=40, channels=3, method="pad", fill="white")
CLASS_WEIGHT = {0: 0.75, 1: 1.5}
KERAS_FIT = {"epochs": 1, "batch_size": 8, "jit_compile": False}


def build(family: str, params: dict[str, Any]) -> Classifier:
    """An unfitted ``family`` classifier from a raw ``train_<family>`` section, typed at the
    door as ``params.yaml``'s would be."""
    section = parse(TRAIN_SECTIONS[family], params, f"{TRAIN_PREFIX}{family}")
    return family_class(family).from_params(section, PREPROCESSING)


def blob_images(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Noisy pink tiles; class 1 carries a dark disc in the middle (an easy, learnable cue)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(150, 230, (len(labels), size, size, 3)).astype(np.uint8)
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 4) ** 2
    images[labels == 1] = np.where(disc[..., None], images[labels == 1] // 3, images[labels == 1])
    return images


def write_store(path: Path, images: np.ndarray, labels: np.ndarray) -> ArrayStore:
    """A finished store of ``images`` with names ``img<i>`` on two slides."""
    with StoreWriter(path, images.shape[1:], {"image": asdict(PREPROCESSING)}) as writer:
        names = [f"img{i}" for i in range(len(images))]
        writer.append(images, labels, names, [f"slide{i % 2}" for i in range(len(images))])
        return writer.close({"data_kind": "synthetic"})


def blob_store_at(path: Path, n: int, seed: int) -> ArrayStore:
    """A store of ``n`` 40 px blob images at ``path``, every third one (from 0) class 1."""
    labels = (np.arange(n) % 3 == 0).astype(np.uint8)
    return write_store(path, blob_images(labels, PREPROCESSING.size, seed), labels)


@dataclass(frozen=True)
class Spec:
    """What the shared checks need to know of a family."""

    params: dict[str, Any]  # ``model:`` and ``fit:``, tiny
    weights_file: str  # the one file a saved model holds beside glomx.json
    summary_says: tuple[str, ...]  # what its summary names
    exact: bool = False  # reload and refit give the same probabilities to the bit, not ±1e-5
    fit_takes: Literal["instants", "seconds", "minutes"] = "seconds"  # on 2 busy CPU cores


SPECS = {
    "lr": Spec(
        {"model": {"size": 16, "channels": 3}, "fit": {"epochs": 4, "alpha": 0.1, "seed": 3}},
        "pipeline.joblib", ("SGDClassifier", "768 features"), exact=True, fit_takes="instants",
    ),
    "cnn": Spec(
        {"model": {"size": 32, "filters": [8, 16]}, "fit": {"epochs": 1, "batch_size": 8}},
        "model.keras", ("conv1_bn", "p_sclerotic"),
    ),
    "resnet": Spec(
        {"model": {"size": 32, "weights": "none"}, "fit": KERAS_FIT},
        "model.keras", ("resnet50", "p_sclerotic"), fit_takes="minutes",
    ),
    "mobilenet": Spec(
        {"model": {"size": 32, "finetune_blocks": 2, "finetune_epochs": 1}, "fit": KERAS_FIT},
        "model.keras", ("mobilenet_v2", "p_sclerotic"), fit_takes="minutes",
    ),
    "probe": Spec(
        {"model": {"size": 32}, "fit": {"C": [0.01, 1.0], "batch_size": 8}},
        "model.keras", ("C = ", "p_sclerotic"),
    ),
}  # fmt: skip


def spec(family: str) -> Spec:
    """``family``'s entry of :data:`SPECS`, or a failure saying that a new family needs one."""
    if family not in SPECS:
        pytest.fail(f"tests/family_zoo.py: SPECS has no entry for family {family!r} of FAMILIES")
    return SPECS[family]


@dataclass
class Fitted:
    """A classifier fitted on the zoo's stores with :data:`CLASS_WEIGHT`, what ``fit`` returned
    and the scores its ``on_epoch`` hook was given."""

    classifier: Classifier
    returned: Classifier
    epochs: list[dict[str, float]]


@dataclass
class Zoo:
    """Fits each family at most once a session; :meth:`fit` fits anew (for same-seed checks)."""

    train: ArrayStore
    val: ArrayStore
    _fitted: dict[str, Fitted] = field(default_factory=dict)

    def new(self, family: str, params: dict[str, Any] | None = None) -> Classifier:
        """An unfitted classifier from ``params`` (default: the family's tiny ones)."""
        return build(family, params or spec(family).params)

    def fit(self, family: str) -> Fitted:
        classifier, epochs = self.new(family), []
        returned = classifier.fit(self.train, self.val, CLASS_WEIGHT, epochs.append)
        return Fitted(classifier, returned, epochs)

    def fitted(self, family: str) -> Fitted:
        """The session's fit of ``family`` (shared: do not refit or change it)."""
        if family not in self._fitted:
            self._fitted[family] = self.fit(family)
        return self._fitted[family]
