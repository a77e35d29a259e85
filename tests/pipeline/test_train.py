"""run_training end to end on tiny stores: outputs on disk and what lands in MLflow."""

from __future__ import annotations

import csv
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

from glomx.data.store import StoreWriter
from glomx.models import load_classifier
from glomx.models.base import Preprocessing
from glomx.models.logistic import LogisticClassifier
from glomx.pipeline.train import class_weights, prepared_preprocessing, run_training
from glomx.tracking import EXPERIMENT, REGISTERED_MODEL

PRE = Preprocessing(size=24, channels=3, method="pad", fill="white")
PARAMS = {
    "model": {"size": 12, "channels": 3},
    "fit": {"epochs": 3, "alpha": 0.1, "seed": 1},
    "class_weight": "balanced",
    "threshold": {"tune": True, "metric": "balanced_accuracy"},
}


def centre_images(labels: np.ndarray, seed: int, size: int = PRE.size) -> np.ndarray:
    """Noisy tiles; class 1 has a dark centre, class 0 a bright one."""
    rng = np.random.default_rng(seed)
    images = rng.integers(90, 170, (len(labels), size, size, 3))
    c = slice(size // 4, 3 * size // 4)
    images[:, c, c] += np.where(labels == 1, -70, 70)[:, None, None, None]
    return images.astype(np.uint8)


def write_store(path: Path, n: int, seed: int, positives: int) -> None:
    labels = (np.arange(n) < positives).astype(np.uint8)
    with StoreWriter(path, (PRE.size, PRE.size, 3), {"image": asdict(PRE)}, "src") as w:
        w.append(centre_images(labels, seed), labels, [f"s{seed}-{i}.png" for i in range(n)],
                 [f"s{seed}_{i % 3}" for i in range(n)])  # fmt: skip
        w.close({"data_kind": "synthetic"})


@pytest.fixture
def paths(tmp_path: Path) -> dict[str, str]:
    """The pipeline layout: prepared val store, balanced store with class weights."""
    p = {k: str(tmp_path / k) for k in ("prepared", "balanced", "models", "metrics", "plots")}
    write_store(Path(p["prepared"]) / "val", 16, seed=1, positives=5)
    write_store(Path(p["balanced"]), 40, seed=0, positives=12)
    (Path(p["balanced"]) / "class_weights.json").write_text('{"0": 0.71, "1": 1.67}')
    return p


def test_run_training_writes_outputs_and_logs_a_registered_run(
    paths: dict[str, str], isolated_mlflow: str
) -> None:
    classifier = LogisticClassifier.from_params(PARAMS, prepared_preprocessing(paths))
    scores = run_training("train-lr", classifier, PARAMS, paths)
    assert scores["roc_auc"] == 1.0  # the centre cue separates the classes

    report = json.loads((Path(paths["metrics"]) / "lr.json").read_text())
    assert report["data_kind"] == "synthetic" and report["class_weight"] == "balanced"
    assert report["balanced_accuracy"] == pytest.approx(scores["balanced_accuracy"])
    model = load_classifier(Path(paths["models"]) / "lr")
    assert model.meta.threshold == report["threshold"] != 0.5  # tuned on validation
    with open(Path(paths["plots"]) / "lr" / "confusion.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 16
    assert (Path(paths["plots"]) / "lr" / "roc.csv").is_file()

    client = MlflowClient(isolated_mlflow)
    exp = client.get_experiment_by_name(EXPERIMENT)
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.run_name == "train-lr" and run.info.status == "FINISHED"
    tags = run.data.tags
    assert tags["glomx.stage"] == "train-lr" and tags["data.kind"] == "synthetic"
    assert {"git.commit", "git.dirty", "data.dvc_md5", "params.md5"} <= set(tags)
    params = run.data.params
    assert params["train_lr.fit.alpha"] == "0.1" and params["train_lr.class_weight"] == "balanced"
    assert params["data.val.image.method"] == "pad"
    metrics = run.data.metrics
    assert metrics["selected/val_roc_auc"] == 1.0
    assert metrics["selected/threshold"] == report["threshold"]
    history = client.get_metric_history(run.info.run_id, "epoch/val_auc")
    assert [h.step for h in history] == [0, 1, 2]

    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert {f"plots/{n}" for n in ("confusion.png", "confusion.json", "roc.png", "pr.png")} <= (
        artifacts
    )
    summary = client.download_artifacts(run.info.run_id, "model/summary.txt")
    assert "SGDClassifier" in Path(summary).read_text()
    inputs = {
        next(t.value for t in i.tags if t.key == "mlflow.data.context"): i.dataset
        for i in run.inputs.dataset_inputs
    }
    assert set(inputs) == {"training", "validation"}
    assert inputs["validation"].name == "val"

    (version,) = client.search_model_versions(f"name='{REGISTERED_MODEL}'")
    assert version.run_id == run.info.run_id
    assert version.tags["family"] == "lr" and version.tags["stage"] == "train-lr"
    assert float(version.tags["val_roc_auc"]) == 1.0 and version.tags["data_kind"] == "synthetic"


def test_run_training_refuses_a_model_built_for_other_preprocessing(
    paths: dict[str, str],
) -> None:
    other = Preprocessing(size=64, channels=3, method="resize", fill="white")
    classifier = LogisticClassifier.from_params(PARAMS, other)
    with pytest.raises(ValueError, match="preprocessing"):
        run_training("train-lr", classifier, PARAMS, paths)


def test_class_weights_follow_params(paths: dict[str, str]) -> None:
    assert class_weights({"class_weight": "none"}, paths) is None
    assert class_weights({}, paths) is None
    assert class_weights({"class_weight": "balanced"}, paths) == {0: 0.71, 1: 1.67}
    (Path(paths["balanced"]) / "class_weights.json").write_text('{"0": 1.0}')
    with pytest.raises(ValueError, match=r"class_weights\.json"):
        class_weights({"class_weight": "balanced"}, paths)
    with pytest.raises(ValueError, match="none or balanced"):
        class_weights({"class_weight": "auto"}, paths)
