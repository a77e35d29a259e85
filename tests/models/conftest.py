"""Tiny synthetic array stores for the model tests (40 px, a few dozen images)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from glomx.config import read
from glomx.data.catalogue import Record
from glomx.data.images import Preprocessing
from glomx.data.split import assign_folds, write_split_csv
from glomx.data.store import ArrayStore, StoreWriter
from glomx.errors import CorruptModelError
from glomx.models import load_classifier

PREPROCESSING = Preprocessing(size=40, channels=3, method="pad", fill="white")
REPO = Path(__file__).resolve().parents[2]
STAGES = REPO / "stages"


def blob_images(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Noisy pink tiles; class 1 carries a dark disc in the middle (an easy, learnable cue)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(150, 230, (len(labels), size, size, 3)).astype(np.uint8)
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 4) ** 2
    images[labels == 1] = np.where(disc[..., None], images[labels == 1] // 3, images[labels == 1])
    return images


def write_store(path: Path, images: np.ndarray, labels: np.ndarray) -> ArrayStore:
    """A finished store of ``images`` with names ``img<i>`` on two slides."""
    with StoreWriter(path, images.shape[1:], {"image": asdict(PREPROCESSING)}) as writer:
        names = [f"img{i}" for i in range(len(images))]
        writer.append(images, labels, names, [f"slide{i % 2}" for i in range(len(images))])
        return writer.close({"data_kind": "synthetic"})


@pytest.fixture
def make_store(tmp_path: Path) -> Callable[[str, np.ndarray, np.ndarray], ArrayStore]:
    """``make(name, images, labels)``: a store under the test's tmp dir."""
    return lambda name, images, labels: write_store(tmp_path / name, images, labels)


def blob_store_at(path: Path, n: int, seed: int) -> ArrayStore:
    """A store of ``n`` 40 px blob images at ``path``, every third one (from 0) class 1."""
    labels = (np.arange(n) % 3 == 0).astype(np.uint8)
    return write_store(path, blob_images(labels, PREPROCESSING.size, seed), labels)


@pytest.fixture(scope="session")
def blob_store(tmp_path_factory: pytest.TempPathFactory) -> Callable[[int, int], ArrayStore]:
    """``make(n, seed)``: :func:`blob_store_at` in a fresh directory."""
    return lambda n, seed: blob_store_at(tmp_path_factory.mktemp(f"blobs{n}_{seed}"), n, seed)


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


def _assert_damage_is_named(directory: Path, filename: str, stage: str, damage: str) -> None:
    path = directory / filename
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"<html>oops</html>")
    with pytest.raises(CorruptModelError) as err:
        load_classifier(directory)
    message = str(err.value)
    assert message.startswith(f"{path} exists but cannot be loaded")
    assert "corrupt" in message and "File not found" not in message
    assert f"`dvc repro {stage}`" in message and f"`dvc checkout {directory}`" in message


@pytest.fixture
def assert_damage_is_named() -> Callable[[Path, str, str, str], None]:
    """``check(directory, filename, stage, damage)``: damage a saved model's ``filename``
    (``truncated`` or ``garbage``); loading it must name the file, say it is corrupt and how
    to rebuild it, not fail somewhere inside."""
    return _assert_damage_is_named


def _stage_runs(client: Any, stage: str) -> tuple[Any, list[Any]]:
    exp = client.get_experiment_by_name("glomx").experiment_id
    (run,) = client.search_runs([exp], f"attributes.run_name = '{stage}'")
    trials = client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{run.info.run_id}'")
    return run, sorted(trials, key=lambda t: int(t.data.tags["cv.fold"]))


@pytest.fixture
def stage_runs() -> Callable[[Any, str], tuple[Any, list[Any]]]:
    """``find(client, stage)``: a training stage's run and its fold trials' nested runs, in
    fold order."""
    return _stage_runs
