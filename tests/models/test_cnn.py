"""The small CNN's own parts (what every family does: tests/models/test_family_checks.py): its
training history, its filter pictures, mixed precision, its architecture limits and stage."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
from family_zoo import SPECS, Zoo, build
from PIL import Image

from glomx.models.cnn_viz import save_cnn_figures

TINY = SPECS["cnn"].params


def test_fit_reports_training_loss_and_auc_beside_validation_scores(zoo: Zoo) -> None:
    history = zoo.fitted("cnn").classifier.history_
    for key in ("loss", "auc", "val_loss", "val_auc", "val_balanced_accuracy"):
        assert len(history[key]) == 1, key  # one epoch


def test_visualisations_show_first_layer_filters_and_maps(zoo: Zoo, tmp_path: Path) -> None:
    paths = save_cnn_figures(zoo.fitted("cnn").classifier.keras_model, zoo.train, tmp_path)
    assert [p.name for p in paths] == ["filters.png", "feature_maps.png"]
    for path in paths:
        with Image.open(path) as image:
            assert image.width > 300 and image.height > 100


def test_mixed_precision_computes_in_float16_and_predicts_float32(zoo: Zoo) -> None:
    params = {**TINY, "fit": {**TINY["fit"], "mixed_precision": True, "jit_compile": False}}
    classifier = build("cnn", params)
    classifier.fit(zoo.train, zoo.val)
    assert classifier.keras_model.get_layer("conv1").compute_dtype == "float16"
    proba = classifier.predict_proba(zoo.val.read(slice(0, 4)))
    assert proba.dtype == np.float32 and np.isfinite(proba).all()
    assert keras.config.dtype_policy().name == "float32"  # the global policy is left alone


def test_too_many_poolings_for_the_input_size_are_refused() -> None:
    with pytest.raises(ValueError, match="too small"):
        build("cnn", {"model": {"size": 8, "filters": [4, 4, 4, 4]}})


@pytest.mark.slow
def test_train_cnn_stage_records_the_run_model_and_pictures(
    train_stage: Callable[[str, dict], Any], training_paths: dict[str, str]
) -> None:
    params = {**TINY, "fit": {**TINY["fit"], "epochs": 2}, "class_weight": "balanced"}
    stage = train_stage("cnn", params)

    plots = Path(training_paths["plots"]) / "cnn"
    assert all((plots / n).is_file() for n in ("filters.png", "feature_maps.png"))
    assert stage.report["class_weight"] == "balanced"
    for metric in ("epoch/loss", "epoch/val_auc", "epoch/val_balanced_accuracy"):
        history = stage.client.get_metric_history(stage.trials[0].info.run_id, metric)
        assert [h.step for h in history] == [0, 1]
    artifacts = {a.path for a in stage.client.list_artifacts(stage.run.info.run_id, "plots")}
    assert {"plots/filters.png", "plots/feature_maps.png"} <= artifacts
