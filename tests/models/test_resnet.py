"""ResNet-50 transfer learning: weights sources, two-phase fine-tuning, predict, reload."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import pytest
from mlflow import MlflowClient

from glomx.data.store import ArrayStore
from glomx.models import load_classifier, resnet
from glomx.models.base import Preprocessing
from glomx.models.resnet import (
    IMAGENET_FILE,
    ImageNetPreprocess,
    ResNetClassifier,
    WeightsUnavailableError,
)
from glomx.tracking import EXPERIMENT, REGISTERED_MODEL

PRE = Preprocessing(size=40, channels=3, method="pad", fill="white")
FIT = {"epochs": 1, "batch_size": 8, "jit_compile": False}


@pytest.fixture
def offline_imagenet(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty Keras cache and an ImageNet origin that refuses connections; returns the cache."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setattr(resnet, "IMAGENET_ORIGIN", f"http://127.0.0.1:9/{IMAGENET_FILE}")
    return tmp_path / "keras" / "models"


def test_imagenet_unavailable_without_fallback_fails_saying_how_to_fix(
    offline_imagenet: Path,
) -> None:
    params = {"model": {"weights": "imagenet", "fallback": False}}
    with pytest.raises(WeightsUnavailableError) as error:
        ResNetClassifier.from_params(params, PRE)
    message = str(error.value)
    assert IMAGENET_FILE in message and str(offline_imagenet) in message
    assert "to none" in message and "fallback: true" in message


def test_imagenet_unavailable_with_fallback_records_random_fallback(
    offline_imagenet: Path,
) -> None:
    with pytest.warns(UserWarning, match="Continuing with random initialisation"):
        classifier = ResNetClassifier.from_params({"model": {"fallback": True}}, PRE)
    assert classifier.meta.extra["weights"] == "random-fallback" and not classifier.pretrained
    assert [p.name for p in classifier.phases()] == ["all-layers"]


def test_missing_weights_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(WeightsUnavailableError, match=r"nowhere\.weights\.h5 not found"):
        ResNetClassifier.from_params({"model": {"weights": f"{tmp_path}/nowhere.weights.h5"}}, PRE)


def test_preprocessing_layer_is_keras_preprocess_input() -> None:
    x = np.random.default_rng(0).uniform(0, 255, (2, 4, 4, 3)).astype(np.float32)
    expected = keras.applications.resnet.preprocess_input(x.copy())
    np.testing.assert_allclose(keras.ops.convert_to_numpy(ImageNetPreprocess()(x)), expected)


@pytest.mark.slow
def test_random_init_trains_every_layer_predicts_and_reloads(
    blob_store: Callable[[int, int], ArrayStore], tmp_path: Path
) -> None:
    train, val = blob_store(24, 0), blob_store(12, 1)
    params = {"model": {"size": 32, "weights": "none"}, "fit": FIT}
    classifier = ResNetClassifier.from_params(params, PRE)
    assert classifier.meta.extra["weights"] == "random"
    history = classifier.fit(train, val, {0: 0.75, 1: 1.5})
    assert len(history["val_balanced_accuracy"]) == 1
    assert len(classifier.keras_model.trainable_weights) > 200  # every layer trained

    images = np.random.default_rng(0).integers(0, 256, (3, 50, 50, 4), np.uint8)
    proba = classifier.predict_proba(images)
    assert proba.shape == (3,) and ((proba >= 0) & (proba <= 1)).all()
    classifier.save(tmp_path / "resnet")
    loaded = load_classifier(tmp_path / "resnet")
    assert isinstance(loaded, ResNetClassifier) and loaded.meta.extra["weights"] == "random"
    np.testing.assert_allclose(loaded.predict_proba(images), proba, atol=1e-5)
    assert "resnet50" in loaded.summary()


@pytest.mark.slow
def test_weights_file_loads_and_fine_tuning_runs_head_then_top_blocks(
    blob_store: Callable[[int, int], ArrayStore], tmp_path: Path
) -> None:
    backbone = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(32, 32, 3))
    path = tmp_path / "backbone.weights.h5"
    backbone.save_weights(path)
    params = {
        "model": {"size": 32, "weights": str(path), "finetune_blocks": 3, "finetune_epochs": 1},
        "fit": FIT,
    }
    classifier = ResNetClassifier.from_params(params, PRE)
    assert classifier.pretrained and classifier.meta.extra["weights"] == f"file:{path}"
    head, finetune = classifier.phases()
    assert (head.name, finetune.name) == ("head", "finetune-top-3-blocks")

    history = classifier.fit(blob_store(24, 0), blob_store(12, 1))
    assert len(history["val_auc"]) == 2  # one epoch per phase

    # trained from the file: only the top blocks' convolutions moved, batch norm stayed put
    inner = classifier.keras_model.get_layer("resnet50")
    saved = {layer.name: layer.get_weights() for layer in backbone.layers}
    moved = {
        layer.name
        for layer in inner.layers
        if layer.weights
        for a, b in zip(layer.get_weights(), saved[layer.name], strict=True)
        if not np.array_equal(a, b)
    }
    assert moved and {name[:12] for name in moved} == {f"conv5_block{b}" for b in (1, 2, 3)}
    assert not any(name.endswith("_bn") for name in moved)
    head.set_trainable(classifier.keras_model)
    assert {w.path.split("/")[0] for w in classifier.keras_model.trainable_weights} == {
        "p_sclerotic"
    }
    assert classifier.meta.extra["epochs_run"] == 2


@pytest.mark.slow
def test_train_resnet_stage_records_the_run_and_the_weights_source(
    run_stage: Callable[[str, str, dict], str], training_paths: dict[str, str], isolated_mlflow: str
) -> None:
    params = {"model": {"size": 32, "weights": "none"}, "fit": FIT, "class_weight": "none"}
    stdout = run_stage("train_resnet.py", "train_resnet", params)
    assert "weights random" in stdout

    model = load_classifier(Path(training_paths["models"]) / "resnet")
    assert model.meta.extra["weights"] == "random"
    assert (
        json.loads((Path(training_paths["metrics"]) / "resnet.json").read_text())["weights"]
        == "random"
    )
    assert (Path(training_paths["plots"]) / "resnet" / "roc.csv").is_file()

    client = MlflowClient(isolated_mlflow)
    (run,) = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    assert run.info.run_name == "train-resnet" and run.info.status == "FINISHED"
    assert run.data.tags["weights"] == "random"
    history = client.get_metric_history(run.info.run_id, "epoch/val_balanced_accuracy")
    assert [h.step for h in history] == [0]
    summary = client.download_artifacts(run.info.run_id, "model/summary.txt")
    assert "resnet50" in Path(summary).read_text()
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert "plots/confusion.png" in artifacts
    (version,) = client.search_model_versions(f"name='{REGISTERED_MODEL}'")
    assert version.run_id == run.info.run_id and version.tags["family"] == "resnet"
