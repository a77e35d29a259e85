"""The train stage end to end on tiny stores, on a local Ray instance: the out-of-fold outputs,
the bag of fold models, and what lands in MLflow."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
from cv_layout import SITE_REGEX, TEST_CV, cv_layout, typed
from mlflow import MlflowClient

from glomx.artifacts.model_folder import replace_model
from glomx.config import parse
from glomx.data.store import ArrayStore
from glomx.evaluation.selection import OOF
from glomx.family_params import LRSection
from glomx.models import load_classifier
from glomx.models.mean import MeanModel
from glomx.pipeline.train import train
from glomx.tracking import EXPERIMENT, REGISTERED_MODEL

PARAMS = parse(
    LRSection,
    {
        "model": {"size": 12, "channels": 3},
        "fit": {"epochs": 3, "alpha": 0.1, "seed": 1},
        "class_weight": "balanced",
        "threshold": {"tune": True, "metric": "balanced_accuracy"},
    },
    "train_lr",
)


@pytest.fixture
def paths(tmp_path: Path) -> dict[str, str]:
    return cv_layout(tmp_path)


@pytest.mark.slow  # a cross-validated bag trained and registered
def test_train_cross_validates_saves_the_bag_and_logs_a_registered_run(
    paths: dict[str, str], isolated_mlflow: str, capsys: pytest.CaptureFixture[str]
) -> None:
    report = train("train@lr", "lr", PARAMS, typed(paths), TEST_CV, SITE_REGEX).report
    # the driver's progress on stderr: a line as each fold's trial ends, with the time elapsed
    done = re.compile(
        r"train@lr: (\d)/3 folds, \d+ s elapsed; "
        r"fold (\d) done in \d+ (?:min \d+ )?s, peak RSS \d+ MiB"
    )
    err = capsys.readouterr().err
    ends = [m.groups() for line in err.splitlines() if (m := done.fullmatch(line))]
    assert [n for n, _ in ends] == ["1", "2", "3"], err
    assert sorted(fold for _, fold in ends) == ["0", "1", "2"]
    oof = OOF.read(Path(paths["cv"]) / "lr.csv")
    originals = ArrayStore(Path(paths["prepared"]) / "train")
    assert sorted(oof.names) == sorted(originals.names)  # every original once, no copy
    assert report["oof"]["images"] == 72 and report["oof"]["slides"] == 12
    assert report["oof"]["roc_auc"]["value"] == pytest.approx(oof.metrics()["roc_auc"])
    assert report["oof"]["roc_auc"]["value"] > 0.9  # the centre cue separates the classes
    assert set(report["folds"]) == {"0", "1", "2"}
    for k, fold in report["folds"].items():
        assert set(fold["heldout_slides"]) == set(oof.slides[oof.folds == int(k)].tolist())
        assert not set(fold["inner_val_slides"]) & set(fold["heldout_slides"])
    written = json.loads((Path(paths["metrics"]) / "lr.json").read_text())
    assert written["oof"]["balanced_accuracy"] == report["oof"]["balanced_accuracy"]
    assert written["data_kind"] == "synthetic" and written["class_weight"] == "balanced"

    bag = load_classifier(Path(paths["models"]) / "lr")
    assert isinstance(bag, MeanModel) and bag.meta.family == "lr"
    assert list(bag.members) == ["fold-0", "fold-1", "fold-2"]
    thresholds = [m.meta.threshold for m in bag.members.values()]
    assert len(set(thresholds)) > 1 or thresholds[0] != 0.5  # tuned on inner validation
    assert bag.meta.threshold == pytest.approx(sum(thresholds) / 3)
    images = originals.read([0, 1, 2])
    expected = sum(m.predict_proba(images) for m in bag.members.values()) / 3
    assert bag.predict_proba(images) == pytest.approx(expected)
    with open(Path(paths["plots"]) / "lr" / "confusion.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 72  # out-of-fold, every original

    client = MlflowClient(isolated_mlflow)
    exp = client.get_experiment_by_name(EXPERIMENT).experiment_id
    (run,) = client.search_runs([exp], "attributes.run_name = 'train@lr'")
    assert run.info.status == "FINISHED" and run.data.tags["glomx.stage"] == "train@lr"
    assert run.data.params["train_lr.fit.alpha"] == "0.1" and run.data.params["cv.inner_val"]
    metrics = run.data.metrics
    assert metrics["selected/cv_roc_auc"] == pytest.approx(oof.metrics()["roc_auc"])
    trials = client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{run.info.run_id}'")
    assert len(trials) == 3
    history = client.get_metric_history(trials[0].info.run_id, "epoch/val_auc")
    assert [h.step for h in history] == [0, 1, 2]  # each fold's epochs, on its inner slides
    inputs = {
        next(t.value for t in i.tags if t.key == "mlflow.data.context")
        for i in run.inputs.dataset_inputs
    }
    assert inputs == {"training", "cv"}
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert {f"plots/{n}" for n in ("confusion.png", "roc.png", "pr.png")} <= artifacts

    (version,) = client.search_model_versions(f"name='{REGISTERED_MODEL}'")
    assert version.run_id == run.info.run_id and version.tags["family"] == "lr"
    assert float(version.tags["cv_roc_auc"]) == pytest.approx(oof.metrics()["roc_auc"], 1e-5)


def test_a_partial_model_folder_is_replaced_and_a_foreign_one_refused(tmp_path: Path) -> None:
    build, target = tmp_path / "build", tmp_path / "models" / "lr"
    (build / "fold-0").mkdir(parents=True)
    (build / "glomx.json").write_text("{}")
    (target / "fold-0").mkdir(parents=True)  # an interrupted save: members, no top-level meta
    (target / "fold-0" / "glomx.json").write_text("{}")
    replace_model(build, target)
    assert (target / "glomx.json").is_file() and not build.exists()

    foreign = tmp_path / "models" / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    (tmp_path / "again").mkdir()
    with pytest.raises(FileExistsError, match="not a glomx model"):
        replace_model(tmp_path / "again", foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"
