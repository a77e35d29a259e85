"""LogisticClassifier's own parts on tiny blob stores (class 1 carries a dark disc); what every
family does is checked in tests/models/test_family_checks.py."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from family_zoo import SPECS, Zoo, build

from glomx.data.store import ArrayStore
from glomx.evaluation.metrics import classification_metrics
from glomx.models import load_classifier, logistic

PARAMS = SPECS["lr"].params


def test_learns_the_blob_and_keeps_the_best_validation_epoch(zoo: Zoo) -> None:
    clf, val = zoo.fitted("lr").classifier, zoo.val
    assert set(clf.history_) == {"val_loss", "val_auc", "val_balanced_accuracy"}
    assert clf.record.epochs_run == PARAMS["fit"]["epochs"]
    m = classification_metrics(val.labels, clf.predict_store(val))
    assert m["roc_auc"] > 0.95 and m["balanced_accuracy"] > 0.8


def test_class_weights_shift_predictions_towards_the_weighted_class(
    make_store: Callable[[str, np.ndarray, np.ndarray], ArrayStore],
) -> None:
    """Identical images carry no signal: the model learns the (weighted) base rate."""
    labels = (np.arange(60) % 3 == 0).astype(np.uint8)
    flat = make_store("flat", np.full((60, 16, 16, 3), 128, np.uint8), labels)
    params = {**PARAMS, "fit": {"epochs": 10, "alpha": 0.1, "select": "last"}}

    def mean_proba(class_weight: dict[int, float] | None) -> float:
        clf = build("lr", params)
        return float(clf.fit(flat, flat, class_weight).predict_store(flat).mean())

    assert mean_proba(None) == pytest.approx(1 / 3, abs=0.05)
    assert mean_proba({0: 0.75, 1: 1.5}) == pytest.approx(1 / 2, abs=0.05)


def test_fit_streams_the_store_in_bounded_batches(
    zoo: Zoo, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logistic, "BATCH_VALUES", 16 * 16 * 3 * 5)  # 5 images per batch
    sizes: list[int] = []
    read = ArrayStore.read

    def spy(self: ArrayStore, indices: object) -> np.ndarray:
        out = read(self, indices)  # type: ignore[arg-type]
        sizes.append(len(out))
        return out

    monkeypatch.setattr(ArrayStore, "read", spy)
    zoo.fit("lr")
    assert sizes and max(sizes) <= 8  # at least 8 rows (the floor), never the whole store


def test_a_loaded_model_gives_its_sklearn_pipeline_on_flattened_pixels(
    zoo: Zoo, tmp_path: Path
) -> None:
    clf = zoo.fitted("lr").classifier
    clf.save(tmp_path / "lr")
    images = zoo.val.read(slice(0, 6))
    pipeline, x = load_classifier(tmp_path / "lr").native_model(images)
    assert x.shape == (6, 16 * 16 * 3)
    assert np.allclose(pipeline.predict_proba(x)[:, 1], clf.predict_proba(images))


def test_select_must_name_a_validation_score() -> None:
    with pytest.raises(ValueError, match=r"train_lr\.fit\.select"):
        build("lr", {"fit": {"select": "test_auc"}})
