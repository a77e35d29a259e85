"""The small CNN: trains on a tiny store, predicts any image size, reloads, draws its filters."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
from mlflow import MlflowClient
from PIL import Image

from glomx.data.images import Preprocessing
from glomx.data.store import ArrayStore
from glomx.models import load_classifier
from glomx.models.cnn import CNNClassifier
from glomx.models.cnn_viz import save_cnn_figures
from glomx.tracking import REGISTERED_MODEL

PRE = Preprocessing(size=40, channels=3, method="pad", fill="white")
TINY = {"model": {"size": 32, "filters": [8, 16]}, "fit": {"epochs": 1, "batch_size": 8}}


@pytest.fixture(scope="module")
def trained(blob_store: Callable[[int, int], ArrayStore]) -> dict[str, Any]:
    train, val = blob_store(24, 0), blob_store(12, 1)
    classifier = CNNClassifier.from_params(TINY, PRE)
    epochs: list[dict[str, float]] = []
    fitted = classifier.fit(train, val, {0: 0.75, 1: 1.5}, epochs.append)
    assert fitted is classifier
    return {"clf": classifier, "train": train, "val": val, "epochs": epochs}


def test_fit_reports_validation_metrics_to_history_and_on_epoch(trained: dict) -> None:
    history, epochs = trained["clf"].history_, trained["epochs"]
    for key in ("loss", "auc", "val_loss", "val_auc", "val_balanced_accuracy"):
        assert len(history[key]) == 1, key
    assert len(epochs) == 1
    assert epochs[0]["val_balanced_accuracy"] == history["val_balanced_accuracy"][0]
    assert trained["clf"].record.best_epoch == 1


def test_predict_proba_takes_any_size_and_channels(trained: dict) -> None:
    clf = trained["clf"]
    rgba = np.random.default_rng(0).integers(0, 256, (5, 50, 50, 4), np.uint8)
    proba = clf.predict_proba(rgba)
    assert proba.shape == (5,) and proba.dtype == np.float32
    assert ((proba >= 0) & (proba <= 1)).all()
    assert clf.predict_proba(np.empty((0, 40, 40, 3), np.uint8)).shape == (0,)
    assert clf.predict_store(trained["val"], batch_size=5).shape == (12,)


def test_save_and_load_round_trip(trained: dict, tmp_path: Path) -> None:
    clf, val = trained["clf"], trained["val"]
    clf.save(tmp_path / "cnn")
    assert {p.name for p in (tmp_path / "cnn").iterdir()} == {"model.keras", "glomx.json"}
    loaded = load_classifier(tmp_path / "cnn")
    assert isinstance(loaded, CNNClassifier) and loaded.meta == clf.meta
    images = val.read(slice(0, 12))
    np.testing.assert_allclose(loaded.predict_proba(images), clf.predict_proba(images), atol=1e-6)
    assert "conv1" in loaded.summary() and "p_sclerotic" in loaded.summary()


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_model_file_is_named_with_how_to_rebuild_it(
    trained: dict, tmp_path: Path, damage: str, assert_damage_is_named: Callable[..., None]
) -> None:
    trained["clf"].save(tmp_path / "cnn")
    assert_damage_is_named(tmp_path / "cnn", "model.keras", "train-cnn", damage)


def test_visualisations_show_first_layer_filters_and_maps(trained: dict, tmp_path: Path) -> None:
    paths = save_cnn_figures(trained["clf"].keras_model, trained["train"], tmp_path / "plots")
    assert [p.name for p in paths] == ["filters.png", "feature_maps.png"]
    for path in paths:
        with Image.open(path) as image:
            assert image.width > 300 and image.height > 100


def test_refits_repeat_with_the_seed(trained: dict) -> None:
    again = CNNClassifier.from_params(TINY, PRE)
    again.fit(trained["train"], trained["val"], {0: 0.75, 1: 1.5})
    images = trained["val"].read(slice(0, 12))
    np.testing.assert_allclose(
        again.predict_proba(images), trained["clf"].predict_proba(images), atol=1e-5
    )


def test_mixed_precision_computes_in_float16_and_predicts_float32(trained: dict) -> None:
    params = {**TINY, "fit": {**TINY["fit"], "mixed_precision": True, "jit_compile": False}}
    classifier = CNNClassifier.from_params(params, PRE)
    classifier.fit(trained["train"], trained["val"])
    assert classifier.keras_model.get_layer("conv1").compute_dtype == "float16"
    proba = classifier.predict_proba(trained["val"].read(slice(0, 4)))
    assert proba.dtype == np.float32 and np.isfinite(proba).all()
    assert keras.config.dtype_policy().name == "float32"  # the global policy is left alone


def test_bad_settings_and_unfitted_use_fail_clearly(blob_store: Callable) -> None:
    with pytest.raises(ValueError, match=r"train_cnn.model.layers is not a known key"):
        CNNClassifier.from_params({"model": {"layers": 3}}, PRE)
    with pytest.raises(ValueError, match="too small"):
        CNNClassifier.from_params({"model": {"size": 8, "filters": [4, 4, 4, 4]}}, PRE)
    with pytest.raises(RuntimeError, match="not fitted"):
        CNNClassifier.from_params(TINY, PRE).predict_proba(np.zeros((1, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="needs both classes"):  # one image: one class
        CNNClassifier.from_params(TINY, PRE).fit(blob_store(24, 0), blob_store(1, 3))


@pytest.mark.slow
def test_train_cnn_stage_records_the_run_model_and_pictures(
    run_stage: Callable[[str, dict], str],
    training_paths: dict[str, str],
    isolated_mlflow: str,
    stage_runs: Callable[[Any, str], tuple[Any, list[Any]]],
) -> None:
    params = {**TINY, "fit": {**TINY["fit"], "epochs": 2}, "class_weight": "balanced"}
    run_stage("cnn", params)

    plots = Path(training_paths["plots"]) / "cnn"
    names = ("confusion.csv", "roc.csv", "pr.csv", "filters.png", "feature_maps.png")
    assert all((plots / n).is_file() for n in names)
    report = json.loads((Path(training_paths["metrics"]) / "cnn.json").read_text())
    assert report["class_weight"] == "balanced"
    assert 0 <= report["oof"]["balanced_accuracy"]["value"] <= 1 and report["oof"]["images"] == 36
    bag = load_classifier(Path(training_paths["models"]) / "cnn")
    assert [type(m) for m in bag.members.values()] == [CNNClassifier, CNNClassifier]  # one per fold

    client = MlflowClient(isolated_mlflow)
    run, trials = stage_runs(client, "train-cnn")
    assert run.info.status == "FINISHED" and len(trials) == 2
    for metric in ("epoch/loss", "epoch/val_auc", "epoch/val_balanced_accuracy"):
        assert [h.step for h in client.get_metric_history(trials[0].info.run_id, metric)] == [0, 1]
    summary = client.download_artifacts(run.info.run_id, "model/summary.txt")
    assert "conv1_bn" in Path(summary).read_text()  # the bag's summary shows its members
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert {"plots/confusion.png", "plots/confusion.json"} <= artifacts
    assert {"plots/filters.png", "plots/feature_maps.png"} <= artifacts
    (version,) = client.search_model_versions(f"name='{REGISTERED_MODEL}'")
    assert version.run_id == run.info.run_id and version.tags["family"] == "cnn"
