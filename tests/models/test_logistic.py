"""LogisticClassifier on tiny blob stores (class 1 carries a dark disc: ``blob_store`` in
tests/models/conftest.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from glomx.data.images import Preprocessing
from glomx.data.store import ArrayStore, StoreWriter
from glomx.evaluation.metrics import classification_metrics
from glomx.models import load_classifier, logistic
from glomx.models.logistic import LogisticClassifier

PRE = Preprocessing(size=40, channels=3, method="pad", fill="white")
PARAMS = {"model": {"size": 16, "channels": 3}, "fit": {"epochs": 4, "alpha": 0.1, "seed": 3}}
Stores = tuple[ArrayStore, ArrayStore]


@pytest.fixture
def stores(blob_store: Callable[[int, int], ArrayStore]) -> Stores:
    return blob_store(36, 0), blob_store(18, 1)


def fitted(stores: Stores, params: dict = PARAMS, **fit_kwargs: object) -> LogisticClassifier:
    clf = LogisticClassifier.from_params(params, PRE)
    assert clf.fit(*stores, **fit_kwargs) is clf  # type: ignore[arg-type]
    history = clf.history_
    assert set(history) == {"val_loss", "val_auc", "val_balanced_accuracy"}
    assert all(len(v) == params["fit"]["epochs"] for v in history.values())
    return clf


def test_learns_the_blob_and_keeps_the_best_validation_epoch(stores: Stores) -> None:
    val = stores[1]
    clf = fitted(stores)
    m = classification_metrics(val.labels, clf.predict_store(val))
    assert m["roc_auc"] > 0.95 and m["balanced_accuracy"] > 0.8
    assert 1 <= clf.record.best_epoch <= 4
    # any input size and channel count is adapted to the model's 16×16×3
    big = np.repeat(np.repeat(val.read(slice(0, 4)), 2, axis=1), 2, axis=2)
    rgba = np.concatenate([big, np.full((*big.shape[:3], 1), 255, np.uint8)], axis=-1)
    assert clf.predict_proba(rgba).shape == (4,)


def test_same_seed_same_model_and_metrics(stores: Stores) -> None:
    a, b = fitted(stores), fitted(stores)
    val = stores[1]
    assert np.array_equal(a.predict_store(val), b.predict_store(val))
    assert a.record == b.record


def test_class_weights_shift_predictions_towards_the_weighted_class(
    make_store: Callable[[str, np.ndarray, np.ndarray], ArrayStore],
) -> None:
    """Identical images carry no signal: the model learns the (weighted) base rate."""
    labels = (np.arange(60) % 3 == 0).astype(np.uint8)
    flat = make_store("flat", np.full((60, 16, 16, 3), 128, np.uint8), labels)
    params = {**PARAMS, "fit": {"epochs": 10, "alpha": 0.1, "select": "last"}}
    plain = fitted((flat, flat), params).predict_store(flat)
    balanced = fitted((flat, flat), params, class_weight={0: 0.75, 1: 1.5}).predict_store(flat)
    assert plain.mean() == pytest.approx(1 / 3, abs=0.05)
    assert balanced.mean() == pytest.approx(1 / 2, abs=0.05)


def test_fit_streams_the_store_in_bounded_batches(
    stores: Stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logistic, "BATCH_VALUES", 16 * 16 * 3 * 5)  # 5 images per batch
    sizes: list[int] = []
    read = ArrayStore.read

    def spy(self: ArrayStore, indices: object) -> np.ndarray:
        out = read(self, indices)  # type: ignore[arg-type]
        sizes.append(len(out))
        return out

    monkeypatch.setattr(ArrayStore, "read", spy)
    fitted(stores)
    assert sizes and max(sizes) <= 8  # at least 8 rows (the floor), never the whole store


def test_save_load_round_trip_and_native_pipeline(stores: Stores, tmp_path: Path) -> None:
    clf = fitted(stores)
    clf.save(tmp_path / "lr")
    loaded = load_classifier(tmp_path / "lr")
    images = stores[1].read(slice(0, 6))
    assert isinstance(loaded, LogisticClassifier)
    assert np.array_equal(loaded.predict_proba(images), clf.predict_proba(images))
    pipeline, x = loaded.native_model(images)
    assert x.shape == (6, 16 * 16 * 3)
    assert np.allclose(pipeline.predict_proba(x)[:, 1], clf.predict_proba(images))
    assert "SGDClassifier" in loaded.summary() and "768 features" in loaded.summary()


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_pipeline_file_is_named_with_how_to_rebuild_it(
    stores: Stores, tmp_path: Path, damage: str, assert_damage_is_named: Callable[..., None]
) -> None:
    fitted(stores).save(tmp_path / "lr")
    assert_damage_is_named(tmp_path / "lr", "pipeline.joblib", "train-lr", damage)


def test_bad_params_and_unfitted_use_are_refused(stores: Stores) -> None:
    with pytest.raises(ValueError, match="epoch"):
        LogisticClassifier.from_params({"fit": {"epoch": 3}}, PRE)
    with pytest.raises(ValueError, match="select"):
        LogisticClassifier.from_params({"fit": {"select": "test_auc"}}, PRE)
    with pytest.raises(RuntimeError, match="not fitted"):
        LogisticClassifier.from_params({}, PRE).predict_proba(stores[1].read(slice(0, 1)))


def test_fit_refuses_an_empty_training_store_or_a_one_class_validation_store(
    stores: Stores, blob_store: Callable[[int, int], ArrayStore], tmp_path: Path
) -> None:
    train, val = stores
    with StoreWriter(tmp_path / "empty", train.image_shape, train.params) as writer:
        empty = writer.close({"data_kind": "synthetic"})
    with pytest.raises(ValueError, match="empty has no images to train on"):
        LogisticClassifier.from_params(PARAMS, PRE).fit(empty, val)
    with pytest.raises(ValueError, match="needs both classes"):  # one image: one class
        LogisticClassifier.from_params(PARAMS, PRE).fit(train, blob_store(1, 4))
