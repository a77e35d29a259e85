"""The choose stage on hand-made out-of-fold tables: the decision file, the report, the ROC
data and the MLflow run; one family when it is ahead, the registered ensemble when families
tie, and no stale ensemble left once one family is ahead again."""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from cv_layout import REPO, cv_layout
from mlflow import MlflowClient

from glomx.artifacts.decision import Decision
from glomx.artifacts.layout import DECISION_FILE as DECISION
from glomx.config import Params, read
from glomx.evaluation.selection import ENSEMBLE, OOF
from glomx.models import load_classifier
from glomx.pipeline.choose import choose
from glomx.tracking import EXPERIMENT, REGISTERED_MODEL

BOOT = {"n_resamples": 300, "confidence": 0.95, "seed": 0}
SLIDES, PER_SLIDE = 18, 12


def _oof(accuracy: float, seed: int, flips: int = 0) -> OOF:
    """18 slides of 12 patches, a quarter sclerotic, right on about ``accuracy`` of each class
    (the same draw for the same ``seed``; ``flips`` more calls turned over, one per slide)."""
    labels = (np.arange(SLIDES * PER_SLIDE) % 4 == 0).astype(np.int64)
    slides = np.repeat([f"S{i:02d}" for i in range(SLIDES)], PER_SLIDE)
    right = np.random.default_rng(seed).random(len(labels)) < accuracy
    right[np.arange(flips) * PER_SLIDE + 1] ^= True
    proba = np.where(right == (labels == 1), 0.8, 0.2)
    return OOF.of(
        [
            (f"{s}-{i}.png", s, i % 3, int(y), float(p), 0.5)
            for i, (s, y, p) in enumerate(zip(slides, labels, proba, strict=True))
        ]
    )


def _project(root: Path, oofs: dict[str, OOF], lr_dir: Path) -> Params:
    """Paths under ``root`` (prepare's store from cv_layout), each family's OOF table and a
    saved model per family (copies of one LR: the ensemble needs its members' folders)."""
    paths = {**read(REPO / "params.yaml")["paths"], **cv_layout(root)}
    for family, oof in oofs.items():
        oof.write(Path(paths["cv"]) / f"{family}.csv")
        shutil.copytree(lr_dir, Path(paths["models"]) / family, dirs_exist_ok=True)
    return Params.model_validate(
        {
            "paths": paths,
            "prepare": read(REPO / "params.yaml")[
                "prepare"
            ],  # its site_regex: the card's hospitals
            "choose": {"families": list(oofs)},
            "cv": {**read(REPO / "params.yaml")["cv"], "bootstrap": BOOT},
        }
    )


def _runs(uri: str) -> list:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(EXPERIMENT).experiment_id
    return client.search_runs([experiment], "attributes.run_name = 'choose'")


def test_the_family_ahead_is_the_candidate(
    tmp_path: Path, lr_dir: Path, isolated_mlflow: str
) -> None:
    params = _project(tmp_path, {"lr": _oof(0.65, 2), "cnn": _oof(0.97, 1)}, lr_dir)
    decision = choose(params)
    paths = params.need("paths")
    assert Decision.read(Path(paths.selection) / DECISION) == decision
    assert decision.candidate == "cnn" and decision.tied == ["cnn"]
    assert decision.ensemble_version is None
    assert [row["family"] for row in decision.ranking] == ["cnn", "lr"]
    assert not (Path(paths.selection) / ENSEMBLE).exists()
    report = json.loads((Path(paths.metrics) / "cv.json").read_text())
    assert set(report["families"]) == {"lr", "cnn"}
    oof = report["families"]["cnn"]["oof"]["balanced_accuracy"]
    assert oof["ci_low"] <= oof["value"] <= oof["ci_high"] and oof["value"] > 0.9
    assert set(report["families"]["lr"]["folds"]) == {"0", "1", "2"}
    roc = (Path(paths.plots) / "cv" / "roc.csv").read_text().splitlines()
    assert roc[0] == "model,fpr,tpr,threshold"
    assert {line.split(",")[0] for line in roc[1:]} == {"lr", "cnn"}
    (run,) = _runs(isolated_mlflow)
    assert run.data.tags["candidate"] == "cnn" and run.info.status == "FINISHED"


def test_tied_families_give_a_registered_ensemble_that_a_later_leader_removes(
    tmp_path: Path, lr_dir: Path, isolated_mlflow: str, caplog: pytest.LogCaptureFixture
) -> None:
    oofs = {"cnn": _oof(0.9, 1), "mobilenet": _oof(0.9, 1, flips=3), "lr": _oof(0.6, 3)}
    params = _project(tmp_path, oofs, lr_dir)
    caplog.set_level(logging.INFO, "glomx.pipeline.choose")
    decision = choose(params)
    # its long step, the ensemble, is announced, then timed
    said = [r.getMessage() for r in caplog.records if r.name == "glomx.pipeline.choose"]
    assert (
        said[0] == "choose: building the ensemble of cnn, mobilenet (copying, loading their bags)"
    )
    assert re.fullmatch(r"choose: ensemble built in \d+ s; logging and registering it", said[1])
    paths = params.need("paths")
    assert decision.candidate == ENSEMBLE and decision.tied == ["cnn", "mobilenet"]
    ensemble = load_classifier(Path(paths.selection) / ENSEMBLE)
    assert ensemble.meta.family == ENSEMBLE and len(ensemble.members) == 2
    version = MlflowClient().get_model_version(REGISTERED_MODEL, decision.ensemble_version)
    assert version.tags["family"] == ENSEMBLE and "cnn" in version.tags["members"]
    report = json.loads((Path(paths.metrics) / "cv.json").read_text())
    assert report["selection"]["candidate"] == ENSEMBLE

    _oof(0.99, 4).write(Path(paths.cv) / "cnn.csv")  # cnn pulls ahead: no ensemble now
    again = choose(params)
    assert again.candidate == "cnn" and again.ensemble_version is None
    assert not (Path(paths.selection) / ENSEMBLE).exists()
    assert Decision.read(Path(paths.selection) / DECISION) == again


def test_tables_of_different_patches_are_refused(tmp_path: Path, lr_dir: Path) -> None:
    short = _oof(0.9, 1)
    keep = slice(0, len(short.names) - 1)
    cut = OOF(*(getattr(short, k)[keep] for k in ("names", "slides", "folds", "labels")),
              short.proba[keep], short.thresholds[keep])  # fmt: skip
    params = _project(tmp_path, {"cnn": _oof(0.9, 2), "lr": cut}, lr_dir)
    with pytest.raises(ValueError, match="cnn and lr"):
        choose(params)
    assert not (Path(params.need("paths").selection) / DECISION).exists()
