"""The Keras families' shared parts: streamed batches, augmentation, selection on validation."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import keras
import numpy as np
import pytest

from glomx.config import ParamsError, parse
from glomx.data.adapt import adapt
from glomx.data.store import ArrayStore
from glomx.models.keras_common import (
    FitConfig,
    StoreSequence,
    ValidationMonitor,
    color_jitter,
    dtype_policy,
    log_gpus,
    random_dihedral,
    set_trainable,
)

MakeStore = Callable[[str, np.ndarray, np.ndarray], ArrayStore]
RGB16 = partial(adapt, size=16, channels=3)


def numbered_store(make_store: MakeStore, n: int = 10) -> ArrayStore:
    """Image ``i`` is filled with the value ``i``, so a batch says which images it holds."""
    images = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, 16, 16, 3))
    labels = (np.arange(n) % 3 == 0).astype(np.uint8)
    return make_store("numbered", np.ascontiguousarray(images), labels)


def epoch_ids(seq: StoreSequence) -> np.ndarray:
    return np.concatenate([seq[i][0][:, 0, 0, 0] for i in range(len(seq))]).astype(int)


def test_sequence_streams_every_image_once_with_its_label(make_store: MakeStore) -> None:
    store = numbered_store(make_store)
    seq = StoreSequence(store, batch_size=4, prepare=partial(adapt, size=16, channels=4), seed=1)
    assert len(seq) == 3
    x, y = seq[0]
    assert x.shape == (4, 16, 16, 4) and x.dtype == np.float32 and y.dtype == np.float32
    assert (x[..., 3] == 255).all()  # RGB store adapted to RGBA input
    ids = epoch_ids(seq)
    assert sorted(ids) == list(range(10)) and ids.tolist() != list(range(10))
    labels = np.concatenate([seq[i][1] for i in range(len(seq))])
    np.testing.assert_array_equal(labels, store.labels[ids])


def test_sequence_shuffles_per_epoch_from_the_seed(make_store: MakeStore) -> None:
    store = numbered_store(make_store, n=30)
    a, b, other = (StoreSequence(store, 8, RGB16, seed=s) for s in (7, 7, 8))
    first = epoch_ids(a)
    assert first.tolist() == epoch_ids(b).tolist() != epoch_ids(other).tolist()
    a.on_epoch_end()
    b.on_epoch_end()
    assert epoch_ids(a).tolist() == epoch_ids(b).tolist() != first.tolist()


def test_augmented_batches_repeat_with_the_seed_and_keep_labels(make_store: MakeStore) -> None:
    labels = np.array([1, 0, 0, 1, 0, 0], dtype=np.uint8)
    rng = np.random.default_rng(0)
    store = make_store("s", rng.integers(0, 256, (6, 16, 16, 3), np.uint8), labels)
    seq = StoreSequence(store, 6, RGB16, seed=3, augment_dihedral=True, jitter=0.2)
    x1, y1 = seq[0]
    x2, y2 = StoreSequence(store, 6, RGB16, seed=3, augment_dihedral=True, jitter=0.2)[0]
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(y1, labels[seq.batch_indices(0)])
    plain, _ = StoreSequence(store, 6, RGB16, seed=3)[0]
    assert not np.array_equal(x1, plain)


def test_dihedral_and_jitter() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (16, 8, 8, 4), np.uint8)
    turned = random_dihedral(images, np.random.default_rng(1))
    for before, after in zip(images, turned, strict=True):
        views = [np.rot90(f, k) for k in range(4) for f in (before, before[:, ::-1])]
        assert any(np.array_equal(view, after) for view in views)
    assert any(not np.array_equal(b, a) for b, a in zip(images, turned, strict=True))
    jittered = color_jitter(images, np.random.default_rng(1), 0.2)
    np.testing.assert_array_equal(jittered[..., 3], images[..., 3])  # alpha untouched
    ratio = jittered[..., :3].astype(float).sum((1, 2)) / images[..., :3].astype(float).sum((1, 2))
    assert (ratio > 0.79).all() and (ratio < 1.21).all() and ratio.std() > 0.01


def test_validation_monitor_logs_stops_and_restores_the_best_epoch() -> None:
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    labels = np.array([0, 0, 1, 1])
    good, bad = np.array([0.1, 0.2, 0.8, 0.9]), np.array([0.6, 0.2, 0.4, 0.9])
    outputs = iter([bad, good, bad, bad])
    monitor = ValidationMonitor(lambda: next(outputs), labels, "balanced_accuracy", patience=2)
    monitor.set_model(model)
    for epoch in range(4):
        model.set_weights([np.full((2, 1), float(epoch)), np.zeros(1)])
        logs: dict[str, float] = {}
        monitor.on_epoch_end(epoch, logs)
        assert set(logs) == {"val_loss", "val_auc", "val_balanced_accuracy"}
        if epoch == 1:
            assert logs["val_balanced_accuracy"] == 1.0 and logs["val_auc"] == 1.0
    assert model.stop_training and monitor.best_epoch == 1
    monitor.restore_best()
    np.testing.assert_array_equal(model.get_weights()[0], np.full((2, 1), 1.0))


def test_fit_config_names_bad_settings() -> None:
    with pytest.raises(ParamsError, match=r"train_cnn.fit.epoch is not a known key; valid: epochs"):
        parse(FitConfig, {"epoch": 3}, "train_cnn.fit")
    with pytest.raises(ParamsError, match=r"train_cnn.fit.lr_schedule must be 'cosine', .*'step'"):
        parse(FitConfig, {"lr_schedule": "step"}, "train_cnn.fit")
    with pytest.raises(ParamsError, match=r"train_cnn.fit.monitor must be .*got 'accuracy'"):
        parse(FitConfig, {"monitor": "accuracy"}, "train_cnn.fit")


def test_dtype_policy_is_restored() -> None:
    before = keras.config.dtype_policy().name
    with dtype_policy(mixed_precision=True):
        assert keras.config.dtype_policy().name == "mixed_float16"
    assert keras.config.dtype_policy().name == before


def test_gpus_are_logged_once_per_process(caplog: pytest.LogCaptureFixture) -> None:
    """The stage log says whether a GPU install is used; here (no GPU) that training is on CPU."""
    import tensorflow as tf

    log_gpus.cache_clear()
    with caplog.at_level("INFO", logger="glomx.models.keras_common"):
        first, again = log_gpus(), log_gpus()
    lines = [r.message for r in caplog.records if "list_physical_devices" in r.message]
    assert len(lines) == 1 and first == again
    assert len(first) == len(tf.config.list_physical_devices("GPU"))
    if not first:
        assert "none, training on CPU" in lines[0]


def test_set_trainable_reaches_the_layers_of_a_nested_model() -> None:
    inputs = keras.Input((4,))
    inner = keras.Model(inputs, keras.layers.Dense(3, name="a")(inputs), name="inner")
    outer_in = keras.Input((4,))
    outer = keras.Model(outer_in, keras.layers.Dense(1, name="head")(inner(outer_in)))
    set_trainable(inner, False)
    assert {w.path for w in outer.trainable_weights} == {"head/kernel", "head/bias"}
    set_trainable(outer, True)  # a plain `outer.trainable = True` leaves `a` frozen on TF
    assert len(outer.trainable_weights) == 4
