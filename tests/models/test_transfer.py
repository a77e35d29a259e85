"""Transfer learning (mobilenet, resnet): weights sources, the two phases, predict, reload."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
from mlflow import MlflowClient

from glomx.data.images import Preprocessing
from glomx.data.store import ArrayStore
from glomx.models import load_classifier
from glomx.models.backbones import RESNET50_FILE, BackboneWeightsError, ImageNetPreprocess
from glomx.models.transfer import ResNetClassifier, TransferClassifier
from glomx.tracking import REGISTERED_MODEL

PRE = Preprocessing(size=40, channels=3, method="pad", fill="white")
FIT = {"epochs": 1, "batch_size": 8, "jit_compile": False}


@pytest.fixture
def offline_imagenet(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty Keras cache (nothing is ever downloaded); returns its models folder."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    return tmp_path / "keras" / "models"


def test_resnet_imagenet_unavailable_without_fallback_fails_saying_how_to_fix(
    offline_imagenet: Path,
) -> None:
    params = {"model": {"weights": "imagenet", "fallback": False}}
    with pytest.raises(BackboneWeightsError) as error:
        ResNetClassifier.from_params(params, PRE)
    message = str(error.value)
    assert RESNET50_FILE in message and str(offline_imagenet) in message
    assert "to none" in message and "fallback: true" in message


def test_resnet_imagenet_unavailable_with_fallback_records_random_fallback(
    offline_imagenet: Path,
) -> None:
    with pytest.warns(UserWarning, match="RANDOM initialisation"):
        classifier = ResNetClassifier.from_params({"model": {"fallback": True}}, PRE)
    assert classifier.record.weights == "random-fallback" and not classifier.pretrained
    assert [p.name for p in classifier.phases()] == ["all-layers"]


def test_missing_weights_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(BackboneWeightsError, match=r"nowhere\.weights\.h5 not found"):
        ResNetClassifier.from_params({"model": {"weights": f"{tmp_path}/nowhere.weights.h5"}}, PRE)


def test_preprocessing_layer_is_keras_preprocess_input() -> None:
    x = np.random.default_rng(0).uniform(0, 255, (2, 4, 4, 3)).astype(np.float32)
    expected = keras.applications.resnet.preprocess_input(x.copy())
    np.testing.assert_allclose(keras.ops.convert_to_numpy(ImageNetPreprocess()(x)), expected)


@pytest.mark.slow
def test_mobilenet_trains_the_head_then_the_top_blocks_batch_norm_frozen(
    blob_store: Callable[[int, int], ArrayStore], tmp_path: Path
) -> None:
    params = {
        "model": {"size": 32, "finetune_blocks": 2, "finetune_epochs": 1},
        "fit": FIT,
    }
    classifier = TransferClassifier.from_params(params, PRE)
    assert classifier.pretrained and classifier.record.weights == "imagenet"
    head, finetune = classifier.phases()
    assert (head.name, finetune.name) == ("head", "finetune-top-2-blocks")

    model = classifier.build_model()
    head.set_trainable(model)
    assert {w.path.split("/")[0] for w in model.trainable_weights} == {"p_sclerotic"}
    finetune.set_trainable(model)
    trainable = {w.path.split("/")[-2] for w in model.trainable_weights}
    assert "p_sclerotic" in trainable
    assert {"head_conv", "block16_project", "block16_depthwise", "block16_expand"} <= trainable
    assert not any(name.startswith("block15") or name.endswith("_bn") for name in trainable)

    history = classifier.fit(blob_store(24, 0), blob_store(12, 1)).history_
    assert len(history["val_auc"]) == 2  # both phases ran, one epoch each
    assert classifier.record.epochs_run == 2

    images = np.random.default_rng(0).integers(0, 256, (3, 50, 50, 4), np.uint8)
    proba = classifier.predict_proba(images)
    classifier.save(tmp_path / "mobilenet")
    loaded = load_classifier(tmp_path / "mobilenet")
    assert isinstance(loaded, TransferClassifier) and loaded.record.weights == "imagenet"
    np.testing.assert_allclose(loaded.predict_proba(images), proba, atol=1e-5)


def test_random_init_comes_from_fit_seed_whatever_ran_before() -> None:
    """The backbone is built in from_params, before fit seeds: it must seed itself, or every
    train-resnet run (random-init fallback) starts from different weights."""

    def first_kernel(seed: int) -> np.ndarray:
        keras.random.normal((3,), seed=None)  # global random state advanced by earlier work
        np.random.default_rng().random()
        params = {"model": {"size": 32, "weights": "none"}, "fit": {"seed": seed}}
        classifier = ResNetClassifier.from_params(params, PRE)
        backbone = classifier.build_model().get_layer("resnet50")
        return backbone.get_layer("conv1_conv").get_weights()[0]

    np.testing.assert_array_equal(first_kernel(42), first_kernel(42))
    assert not np.array_equal(first_kernel(42), first_kernel(7))


@pytest.mark.slow
def test_random_init_trains_every_layer_predicts_and_reloads(
    blob_store: Callable[[int, int], ArrayStore], tmp_path: Path
) -> None:
    train, val = blob_store(24, 0), blob_store(12, 1)
    params = {"model": {"size": 32, "weights": "none"}, "fit": FIT}
    classifier = ResNetClassifier.from_params(params, PRE)
    assert classifier.record.weights == "random"
    history = classifier.fit(train, val, {0: 0.75, 1: 1.5}).history_
    assert len(history["val_balanced_accuracy"]) == 1
    assert len(classifier.keras_model.trainable_weights) > 200  # every layer trained

    images = np.random.default_rng(0).integers(0, 256, (3, 50, 50, 4), np.uint8)
    proba = classifier.predict_proba(images)
    assert proba.shape == (3,) and ((proba >= 0) & (proba <= 1)).all()
    classifier.save(tmp_path / "resnet")
    loaded = load_classifier(tmp_path / "resnet")
    assert isinstance(loaded, ResNetClassifier) and loaded.record.weights == "random"
    np.testing.assert_allclose(loaded.predict_proba(images), proba, atol=1e-5)
    assert "resnet50" in loaded.summary()


@pytest.mark.slow
def test_train_resnet_stage_records_the_run_and_the_weights_source(
    run_stage: Callable[[str, dict], str],
    training_paths: dict[str, str],
    isolated_mlflow: str,
    stage_runs: Callable[[Any, str], tuple[Any, list[Any]]],
) -> None:
    params = {"model": {"size": 32, "weights": "none"}, "fit": FIT, "class_weight": "none"}
    stdout = run_stage("resnet", params)
    assert "weights random" in stdout

    bag = load_classifier(Path(training_paths["models"]) / "resnet")
    assert [m.record.weights for m in bag.members.values()] == ["random", "random"]
    assert (
        json.loads((Path(training_paths["metrics"]) / "resnet.json").read_text())["weights"]
        == "random"
    )
    assert (Path(training_paths["plots"]) / "resnet" / "roc.csv").is_file()

    client = MlflowClient(isolated_mlflow)
    run, trials = stage_runs(client, "train-resnet")
    assert run.info.status == "FINISHED" and run.data.tags["weights"] == "random"
    assert all(t.data.tags["weights"] == "random" for t in trials)
    history = client.get_metric_history(trials[0].info.run_id, "epoch/val_balanced_accuracy")
    assert [h.step for h in history] == [0]
    summary = client.download_artifacts(run.info.run_id, "model/summary.txt")
    assert "resnet50" in Path(summary).read_text()
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert "plots/confusion.png" in artifacts
    (version,) = client.search_model_versions(f"name='{REGISTERED_MODEL}'")
    assert version.run_id == run.info.run_id and version.tags["family"] == "resnet"
