"""The linear probe's own parts: C chosen on validation, folded into one Keras model, inner
layers, views, its params and its stage end to end (what every family does:
tests/models/test_family_checks.py)."""

from __future__ import annotations

import base64
import csv
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
from family_zoo import SPECS, Zoo, build
from PIL import Image
from sklearn.metrics import log_loss

from glomx.cli import main
from glomx.config import ParamsError
from glomx.evaluation import gradcam
from glomx.models import load_classifier
from glomx.tracking import REGISTERED_MODEL

PARAMS = SPECS["probe"].params


def test_probe_picks_c_on_validation_and_is_one_keras_model(zoo: Zoo) -> None:
    classifier, val = zoo.fitted("probe").classifier, zoo.val
    history = classifier.history_
    assert history["C"] == [0.01, 1.0] and len(history["val_loss"]) == 2
    chosen = history["C"].index(classifier.record.C)
    assert history["val_loss"][chosen] == min(history["val_loss"])  # select: log_loss
    assert classifier.record.weights == "imagenet"
    assert classifier.record.features == 1280

    # scaler + logistic regression folded into the Dense layer: same probabilities
    proba = classifier.predict_store(val)
    assert log_loss(val.labels, proba) == pytest.approx(history["val_loss"][chosen], abs=1e-4)


def test_probe_pools_an_inner_layer_and_keeps_it_through_save_and_grad_cam(
    zoo: Zoo, tmp_path: Path
) -> None:
    params = {
        "model": {"backbone": "efficientnet_lite0", "layer": "block15_expand_relu", "size": 64},
        "fit": {"C": [0.1], "batch_size": 8},
    }
    classifier = build("probe", params)
    val = zoo.val
    classifier.fit(zoo.train, val)
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
        build("probe", params).build_model()


def test_probe_views_multiply_the_training_rows(zoo: Zoo) -> None:
    params = {"model": {"size": 32}, "fit": {"C": [0.1], "views": 2, "batch_size": 8}}
    classifier = build("probe", params)
    classifier.fit(zoo.train, zoo.val)
    assert classifier.record.training_rows == 48


def test_probe_params_are_checked() -> None:
    with pytest.raises(ValueError, match="random features"):
        build("probe", {"model": {"weights": "none"}})
    with pytest.raises(ValueError, match=r"train_probe.fit.views must be less than or equal to 8"):
        build("probe", {"fit": {"views": 9}})
    with pytest.raises(ParamsError, match=r"train_probe.fit.epochs is not a known key; valid: C"):
        build("probe", {"fit": {"epochs": 3}})


@pytest.mark.slow
def test_train_probe_stage_with_stain_normalisation_end_to_end(
    train_stage: Callable[[str, dict], Any], training_paths: dict[str, str], tmp_path: Path
) -> None:
    params = {**PARAMS, "model": {"size": 64}, "class_weight": "balanced", "stain": "reinhard"}
    stage = train_stage("probe", params)
    assert "weights imagenet" in stage.stdout

    for model in stage.bag.members.values():  # each fold model fitted its own stain target
        assert model.record.stain["method"] == "reinhard"
        assert model.stain.method == "reinhard" and model.record.C in (0.01, 1.0)
    assert stage.report["weights"] == "imagenet" and stage.report["stain"] == "reinhard"
    assert stage.run.data.tags["stain"] == "reinhard"
    history = stage.client.get_metric_history(stage.trials[0].info.run_id, "epoch/C")
    assert [h.value for h in history] == [0.01, 1.0]

    # the served model and `glomx predict` give the same probability for the same PNG
    png = tmp_path / "SAS_1-3.png"
    pink = np.random.default_rng(5).integers(150, 230, (40, 40, 3)).astype(np.uint8)
    pink[12:28, 12:28] //= 3  # a dark centre, as class 1 of the training blobs
    Image.fromarray(pink).save(png)
    served = mlflow.pyfunc.load_model(f"models:/{REGISTERED_MODEL}/{stage.version.version}")
    answer = served.predict(pd.DataFrame({"image": [base64.b64encode(png.read_bytes()).decode()]}))
    out = tmp_path / "predictions.csv"
    model_dir = Path(training_paths["models"]) / "probe"
    assert main(["predict", str(png), "--model", str(model_dir), "--out", str(out), "-q"]) == 0
    (row,) = csv.DictReader(out.open())
    assert answer["error"][0] is None
    assert float(row["probability"]) == pytest.approx(float(answer["probability"][0]), abs=1e-6)
