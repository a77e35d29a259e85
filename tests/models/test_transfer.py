"""Transfer learning's own parts (mobilenet, resnet): weights sources, seeding, the two phases,
the stage (what every family does: tests/models/test_family_checks.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
from family_zoo import SPECS, Zoo, build

from glomx.models.backbones import RESNET50_FILE, BackboneWeightsError, ImageNetPreprocess


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
        build("resnet", params)
    message = str(error.value)
    assert RESNET50_FILE in message and str(offline_imagenet) in message
    assert "to none" in message and "fallback: true" in message


def test_resnet_imagenet_unavailable_with_fallback_records_random_fallback(
    offline_imagenet: Path,
) -> None:
    with pytest.warns(UserWarning, match="RANDOM initialisation"):
        classifier = build("resnet", {"model": {"fallback": True}})
    assert classifier.record.weights == "random-fallback" and not classifier.pretrained
    assert [p.name for p in classifier.phases()] == ["all-layers"]


def test_missing_weights_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(BackboneWeightsError, match=r"nowhere\.weights\.h5 not found"):
        params = {"model": {"weights": f"{tmp_path}/nowhere.weights.h5"}}
        build("resnet", params)


def test_preprocessing_layer_is_keras_preprocess_input() -> None:
    x = np.random.default_rng(0).uniform(0, 255, (2, 4, 4, 3)).astype(np.float32)
    expected = keras.applications.resnet.preprocess_input(x.copy())
    np.testing.assert_allclose(keras.ops.convert_to_numpy(ImageNetPreprocess()(x)), expected)


@pytest.mark.slow
def test_mobilenet_trains_the_head_then_the_top_blocks_batch_norm_frozen(zoo: Zoo) -> None:
    classifier = build("mobilenet", SPECS["mobilenet"].params)
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

    fitted = zoo.fitted("mobilenet").classifier
    assert len(fitted.history_["val_auc"]) == 2  # both phases ran, one epoch each
    assert fitted.record.epochs_run == 2


def test_random_init_comes_from_fit_seed_whatever_ran_before() -> None:
    """The backbone is built in from_params, before fit seeds: it must seed itself, or every
    train@resnet run (random-init fallback) starts from different weights."""

    def first_kernel(seed: int) -> np.ndarray:
        keras.random.normal((3,), seed=None)  # global random state advanced by earlier work
        np.random.default_rng().random()
        params = {"model": {"size": 32, "weights": "none"}, "fit": {"seed": seed}}
        classifier = build("resnet", params)
        backbone = classifier.build_model().get_layer("resnet50")
        return backbone.get_layer("conv1_conv").get_weights()[0]

    np.testing.assert_array_equal(first_kernel(42), first_kernel(42))
    assert not np.array_equal(first_kernel(42), first_kernel(7))


@pytest.mark.slow
def test_random_init_trains_every_layer(zoo: Zoo) -> None:
    classifier = zoo.fitted("resnet").classifier
    assert classifier.record.weights == "random"
    assert len(classifier.history_["val_balanced_accuracy"]) == 1
    assert len(classifier.keras_model.trainable_weights) > 200  # every layer trained


@pytest.mark.slow
def test_train_resnet_stage_records_the_run_and_the_weights_source(
    train_stage: Callable[[str, dict], Any],
) -> None:
    params = {**SPECS["resnet"].params, "class_weight": "none"}
    stage = train_stage("resnet", params)
    assert "weights random" in stage.stdout
    assert [m.record.weights for m in stage.bag.members.values()] == ["random", "random"]
    assert stage.report["weights"] == "random"
    assert stage.run.data.tags["weights"] == "random"
    assert all(t.data.tags["weights"] == "random" for t in stage.trials)
    history = stage.client.get_metric_history(
        stage.trials[0].info.run_id, "epoch/val_balanced_accuracy"
    )
    assert [h.step for h in history] == [0]
