"""Tiny synthetic array stores for the model tests (40 px, a few dozen images), the session's
tiny fit of every family, and a training stage run as DVC would."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from family_zoo import PREPROCESSING, Zoo, blob_images, blob_store_at, spec, write_store
from mlflow import MlflowClient

from glomx.config import read
from glomx.data.catalogue import Record
from glomx.data.split import assign_folds, write_split_csv
from glomx.data.store import ArrayStore, StoreWriter
from glomx.models import family_class, load_classifier
from glomx.models.mean import MeanModel
from glomx.tracking import EXPERIMENT, REGISTERED_MODEL

REPO = Path(__file__).resolve().parents[2]
STAGES = REPO / "stages"


@pytest.fixture
def make_store(tmp_path: Path) -> Callable[[str, np.ndarray, np.ndarray], ArrayStore]:
    """``make(name, images, labels)``: a store under the test's tmp dir."""
    return lambda name, images, labels: write_store(tmp_path / name, images, labels)


@pytest.fixture(scope="session")
def blob_store(tmp_path_factory: pytest.TempPathFactory) -> Callable[[int, int], ArrayStore]:
    """``make(n, seed)``: :func:`blob_store_at` in a fresh directory."""
    return lambda n, seed: blob_store_at(tmp_path_factory.mktemp(f"blobs{n}_{seed}"), n, seed)


@pytest.fixture(scope="session")
def zoo(blob_store: Callable[[int, int], ArrayStore]) -> Zoo:
    """Every family's tiny fit on 24 training and 12 validation blobs, once a session."""
    return Zoo(blob_store(24, 0), blob_store(12, 1))


@pytest.fixture
def training_paths(tmp_path: Path) -> dict[str, str]:
    """The pipeline layout a training stage reads: prepare's store of 36 blob images on six
    slides (two sclerotic each) in two slide-grouped folds, and the training store (here the
    same images); models, metrics, plots and out-of-fold predictions go beside them."""
    names = ("prepared", "balanced", "models", "metrics", "plots", "cv")
    paths = {k: str(tmp_path / k) for k in names}
    labels = (np.arange(36) % 3 == 0).astype(np.uint8)
    images = blob_images(labels, PREPROCESSING.size, seed=0)
    slides = [f"S_{i // 6}" for i in range(36)]
    records = [Record(f"img{i}", Path(f"img{i}"), int(y), s) for i, (y, s) in
               enumerate(zip(labels, slides, strict=True))]  # fmt: skip
    for store in (tmp_path / "prepared" / "train", tmp_path / "balanced"):
        with StoreWriter(store, images.shape[1:], {"image": asdict(PREPROCESSING)}) as w:
            w.append(images, labels, [r.name for r in records], slides)
            w.close({"data_kind": "synthetic"})
    splits = ["train"] * len(records)
    folds = assign_folds(records, splits, 2, 0, "grouped")
    write_split_csv(tmp_path / "prepared" / "split.csv", records, splits, folds)
    return paths


CV = {"cpus_per_trial": 1, "bootstrap": {"n_resamples": 100, "confidence": 0.95, "seed": 0}}


@pytest.fixture
def run_stage(training_paths: dict[str, str], tmp_path: Path) -> Callable[[str, Any], str]:
    """``run(family, params)``: run stage ``train@<family>`` as DVC would, in a directory whose
    params.yaml is the repository's with ``training_paths``, a quick ``cv`` section and
    ``params`` as ``train_<family>``; returns its stdout."""

    def run(family: str, params: dict[str, Any]) -> str:
        repo = read(REPO / "params.yaml")
        config = {
            **repo,
            "paths": {**repo["paths"], **training_paths},
            "prepare": {**repo["prepare"], "site_regex": None},
            "cv": {**repo["cv"], **CV},
            f"train_{family}": params,
        }
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(config))
        done = subprocess.run(
            [sys.executable, str(STAGES / "train.py"), family],
            cwd=tmp_path, capture_output=True, text=True, timeout=900, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-4000:]
        return done.stdout

    return run


@dataclass
class StageRecord:
    """What a ``train@<family>`` stage left: its stdout, metrics report, bag of fold models,
    MLflow run, fold trials (in fold order) and registered model version."""

    stdout: str
    report: dict[str, Any]
    bag: MeanModel
    client: MlflowClient
    run: Any
    trials: list[Any]
    version: Any


@pytest.fixture
def train_stage(
    run_stage: Callable[[str, Any], str], training_paths: dict[str, str], isolated_mlflow: str
) -> Callable[[str, Any], StageRecord]:
    """``record(family, params)``: :func:`run_stage`, then what every training stage must
    leave: a bag of one family model per fold, out-of-fold metrics and plots of the 36 images,
    a finished run with one trial per fold, the bag's summary (its members') and plots logged,
    and the model registered from that run with its family."""

    def record(family: str, params: Any) -> StageRecord:
        stdout = run_stage(family, params)
        bag = load_classifier(Path(training_paths["models"]) / family)
        assert isinstance(bag, MeanModel)
        assert [type(m) for m in bag.members.values()] == [family_class(family)] * 2  # one per fold
        report = json.loads((Path(training_paths["metrics"]) / f"{family}.json").read_text())
        assert 0 <= report["oof"]["balanced_accuracy"]["value"] <= 1
        assert report["oof"]["images"] == 36
        plots = Path(training_paths["plots"]) / family
        assert all((plots / f"{name}.csv").is_file() for name in ("confusion", "roc", "pr"))

        client = MlflowClient(isolated_mlflow)
        exp = client.get_experiment_by_name(EXPERIMENT).experiment_id
        (run,) = client.search_runs([exp], f"attributes.run_name = 'train@{family}'")
        trials = client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{run.info.run_id}'")
        assert run.info.status == "FINISHED" and len(trials) == 2
        summary = Path(client.download_artifacts(run.info.run_id, "model/summary.txt"))
        assert all(words in summary.read_text() for words in spec(family).summary_says)
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
        assert {"plots/confusion.png", "plots/confusion.json"} <= artifacts
        (version,) = client.search_model_versions(f"name='{REGISTERED_MODEL}'")
        assert version.run_id == run.info.run_id and version.tags["family"] == family
        trials.sort(key=lambda t: int(t.data.tags["cv.fold"]))
        return StageRecord(stdout, report, bag, client, run, trials, version)

    return record
