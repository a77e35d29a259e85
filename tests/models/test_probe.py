"""The linear probe: C chosen on validation, folded into one Keras model, the stage end to end."""

from __future__ import annotations

import base64
import csv
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from PIL import Image
from sklearn.metrics import log_loss

from glomx.cli import main
from glomx.config import ParamsError
from glomx.data.images import Preprocessing
from glomx.data.store import ArrayStore
from glomx.evaluation import gradcam
from glomx.models import load_classifier
from glomx.models.probe import ProbeClassifier
from glomx.tracking import REGISTERED_MODEL

PRE = Preprocessing(size=40, channels=3, method="pad", fill="white")
PARAMS = {"model": {"size": 32}, "fit": {"C": [0.01, 1.0], "batch_size": 8}}


def test_probe_picks_c_on_validation_and_is_one_keras_model(
    blob_store: Callable[[int, int], ArrayStore], tmp_path: Path
) -> None:
    train, val = blob_store(24, 0), blob_store(12, 1)
    classifier = ProbeClassifier.from_params(PARAMS, PRE)
    history = classifier.fit(train, val, {0: 0.75, 1: 1.5}).history_
    assert history["C"] == [0.01, 1.0] and len(history["val_loss"]) == 2
    chosen = history["C"].index(classifier.record.C)
    assert history["val_loss"][chosen] == min(history["val_loss"])  # select: log_loss
    assert classifier.record.weights == "imagenet"
    assert classifier.record.features == 1280

    # scaler + logistic regression folded into the Dense layer: same probabilities
    proba = classifier.predict_store(val)
    assert log_loss(val.labels, proba) == pytest.approx(history["val_loss"][chosen], abs=1e-4)

    classifier.save(tmp_path / "probe")
    loaded = load_classifier(tmp_path / "probe")
    assert isinstance(loaded, ProbeClassifier) and loaded.record.C == classifier.record.C
    np.testing.assert_allclose(loaded.predict_store(val), proba, atol=1e-5)
    assert "C = " in loaded.summary()


def test_probe_pools_an_inner_layer_and_keeps_it_through_save_and_grad_cam(
    blob_store: Callable[[int, int], ArrayStore], tmp_path: Path
) -> None:
    params = {
        "model": {"backbone": "efficientnet_lite0", "layer": "block15_expand_relu", "size": 64},
        "fit": {"C": [0.1], "batch_size": 8},
    }
    classifier = ProbeClassifier.from_params(params, PRE)
    train, val = blob_store(24, 0), blob_store(12, 1)
    classifier.fit(train, val)
    assert classifier.record.features == 1152  # the expansion, not the 1280-d head
    backbone = classifier.keras_model.get_layer("efficientnet_lite0")
    assert backbone.layers[-1].name == "block15_expand_relu"
    assert "block15_expand_relu features" in classifier.summary()

    classifier.save(tmp_path / "probe")
    loaded = load_classifier(tmp_path / "probe")
    np.testing.assert_allclose(loaded.predict_store(val), classifier.predict_store(val), atol=1e-5)
    if gradcam.unavailable_reason() is None:
        assert gradcam.feature_map(loaded.keras_model).shape[1:] == (2, 2, 1152)
        maps = gradcam.gradcam(loaded.keras_model, val.read([0, 1]), 64, 3)
        assert maps.shape == (2, 40, 40) and np.isfinite(maps).all()


def test_probe_names_an_unknown_layer() -> None:
    params = {"model": {"backbone": "efficientnet_lite0", "layer": "block99_add", "size": 32}}
    blocks = r"no layer 'block99_add'.*\(its blocks: stem, block0, .*, block15, head\)"
    with pytest.raises(ParamsError, match=blocks):
        ProbeClassifier.from_params(params, PRE).build_model()


def test_probe_views_multiply_the_training_rows(
    blob_store: Callable[[int, int], ArrayStore],
) -> None:
    params = {"model": {"size": 32}, "fit": {"C": [0.1], "views": 2, "batch_size": 8}}
    classifier = ProbeClassifier.from_params(params, PRE)
    classifier.fit(blob_store(24, 0), blob_store(12, 1))
    assert classifier.record.training_rows == 48


def test_probe_params_are_checked() -> None:
    with pytest.raises(ValueError, match="random features"):
        ProbeClassifier.from_params({"model": {"weights": "none"}}, PRE)
    with pytest.raises(ValueError, match=r"train_probe.fit.views must be less than or equal to 8"):
        ProbeClassifier.from_params({"fit": {"views": 9}}, PRE)
    with pytest.raises(ParamsError, match=r"train_probe.fit.epochs is not a known key; valid: C"):
        ProbeClassifier.from_params({"fit": {"epochs": 3}}, PRE)


@pytest.mark.slow
def test_train_probe_stage_with_stain_normalisation_end_to_end(
    run_stage: Callable[[str, dict], str],
    training_paths: dict[str, str],
    isolated_mlflow: str,
    tmp_path: Path,
    stage_runs: Callable[[Any, str], tuple[Any, list[Any]]],
) -> None:
    params = {**PARAMS, "model": {"size": 64}, "class_weight": "balanced", "stain": "reinhard"}
    stdout = run_stage("probe", params)
    assert "weights imagenet" in stdout

    bag = load_classifier(Path(training_paths["models"]) / "probe")
    for model in bag.members.values():  # each fold model fitted its own stain target
        assert model.record.stain["method"] == "reinhard"
        assert model.stain.method == "reinhard" and model.record.C in (0.01, 1.0)
    report = json.loads((Path(training_paths["metrics"]) / "probe.json").read_text())
    assert report["weights"] == "imagenet" and report["stain"] == "reinhard"

    client = MlflowClient(isolated_mlflow)
    run, trials = stage_runs(client, "train-probe")
    assert run.info.status == "FINISHED" and run.data.tags["stain"] == "reinhard"
    history = client.get_metric_history(trials[0].info.run_id, "epoch/C")
    assert [h.value for h in history] == [0.01, 1.0]
    (version,) = client.search_model_versions(f"name='{REGISTERED_MODEL}'")
    assert version.run_id == run.info.run_id and version.tags["family"] == "probe"

    # the served model and `glomx predict` give the same probability for the same PNG
    png = tmp_path / "SAS_1-3.png"
    pink = np.random.default_rng(5).integers(150, 230, (40, 40, 3)).astype(np.uint8)
    pink[12:28, 12:28] //= 3  # a dark centre, as class 1 of the training blobs
    Image.fromarray(pink).save(png)
    served = mlflow.pyfunc.load_model(f"models:/{REGISTERED_MODEL}/{version.version}")
    answer = served.predict(pd.DataFrame({"image": [base64.b64encode(png.read_bytes()).decode()]}))
    out = tmp_path / "predictions.csv"
    model_dir = Path(training_paths["models"]) / "probe"
    assert main(["predict", str(png), "--model", str(model_dir), "--out", str(out), "-q"]) == 0
    (row,) = csv.DictReader(out.open())
    assert answer["error"][0] is None
    assert float(row["probability"]) == pytest.approx(float(answer["probability"][0]), abs=1e-6)
