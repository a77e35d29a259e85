"""The evaluate stage end to end on tiny stores: metrics, reports, plots, promotion of the
choose stage's candidate, MLflow; and the ensemble scored from its members."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mlflow import MlflowClient

from glomx.artifacts.decision import Decision
from glomx.artifacts.layout import Layout
from glomx.config import Params, parse, read
from glomx.data.store import ArrayStore
from glomx.evaluation.bootstrap import METRICS
from glomx.evaluation.tta import score_store
from glomx.family_params import CNNSection
from glomx.models import load_classifier
from glomx.models.cnn import CNNClassifier, build_cnn
from glomx.models.mean import MeanModel, copy_member
from glomx.pipeline.evaluate import EvaluateError, evaluate, score_models, trained_models
from glomx.tracking import REGISTERED_MODEL
from glomx.tracking.registry import MODEL_DESCRIPTION

REPO = Path(__file__).resolve().parents[2]
DECISION = Decision(
    rule="the rule",
    ranking=[
        {"family": f, "balanced_accuracy": {"value": v, "ci_low": v - 0.1, "ci_high": v + 0.05},
         "roc_auc": {"value": v, "ci_low": v - 0.1, "ci_high": 1.0}}
        for f, v in (("lr", 0.9), ("cnn", 0.6))
    ],
    differences={"cnn": {"value": 0.3, "ci_low": 0.2, "ci_high": 0.4, "tied": False}},
    tied=["lr"],
    candidate="lr",
    reason="lr leads every family beyond its interval.",
    ensemble={},
)  # fmt: skip


def _params(root: Path, prepared: Path) -> Params:
    paths = {
        "prepared": str(prepared),
        "models": str(root / "models"),
        "metrics": str(root / "metrics"),
        "plots": str(root / "plots"),
        "reports": str(root / "reports"),
        "selection": str(root / "select"),
    }
    evaluate_cfg = {
        "families": ["lr", "cnn", "resnet"],
        "tta": True,
        "batch_size": 16,
        "baseline": True,
        "bootstrap": {"n_resamples": 200, "confidence": 0.95, "seed": 1},
        "calibration_bins": 5,
        "gradcam_per_case": 2,
        "promotion": {"metric": "balanced_accuracy", "margin": 0.01},
    }
    repo = read(REPO / "params.yaml")
    raw = {
        "paths": {**repo["paths"], **paths},
        "prepare": {**repo["prepare"], "site_regex": "^(?P<site>[^_-]+)"},
        "evaluate": evaluate_cfg,
    }
    return Params.model_validate(raw)


@pytest.fixture
def params(
    tmp_path: Path,
    prepared: Path,
    lr_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Params:
    """models/lr (a copy of ``lr_dir``), an untrained, never registered models/cnn, and the
    choose stage's decision: lr is the candidate."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "select").mkdir()
    DECISION.write(tmp_path / "select" / "decision.json")
    shutil.copytree(lr_dir, tmp_path / "models" / "lr")
    pre = load_classifier(lr_dir).meta.preprocessing
    cnn = CNNClassifier.from_params(
        parse(CNNSection, {"model": {"size": 16, "filters": [4, 8]}}, "train_cnn"), pre
    )
    CNNClassifier(cnn.meta, cnn.record, cnn.fit_config, cnn.config, build_cnn(cnn.config)).save(
        tmp_path / "models" / "cnn"
    )
    return _params(tmp_path, prepared)


def test_evaluate_writes_everything_and_promotes_the_candidate(
    params: Params, registered_lr: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = evaluate(params).result
    # off a terminal, within the interval: each long step's last line, on stderr
    progress = [line for line in capsys.readouterr().err.splitlines() if ": " in line]
    assert [re.sub(r", \d+ s elapsed.*", "", line) for line in progress] == [
        "evaluate: scoring lr (1 of 3 models): 32/32 images",
        "evaluate: scoring cnn (2 of 3 models): 32/32 images",
        "evaluate: scoring colour_baseline (3 of 3 models): 32/32 images",
        "evaluate: Grad-CAM overlays: 1/1 models",
    ]
    assert all(line.endswith(" images/s") for line in progress[:3]), progress
    assert set(result["models"]) == {"lr", "cnn", "colour_baseline"}
    for name, metrics in result["models"].items():
        assert set(metrics) == set(METRICS)
        for metric, m in metrics.items():
            if not np.isnan(m["value"]):
                assert m["ci_low"] <= m["value"] <= m["ci_high"], (name, metric)
    assert result["models"]["lr"]["roc_auc"]["value"] > 0.9  # the dark cue is learnable
    # only lr is registered, so it is the champion; the unregistered cnn is no candidate
    assert result["champion"] == {"version": registered_lr, "family": "lr"}
    assert result["test"] == {"images": 32, "class_1": 11, "slides": 6}

    on_disk = json.loads((tmp_path / "metrics" / "evaluate.json").read_text())
    assert on_disk["data_kind"] == "synthetic" and "lr" in on_disk["models"]
    summary = (tmp_path / "reports" / "summary.md").read_text()
    assert "SYNTHETIC DATA" in summary and f"version {registered_lr} (lr)" in summary
    assert "| test | 32 | 11 | 6 |" in summary and "| SAS | lr | 16 | 6 | 3 |" in summary
    assert "| lr | 0.900 [0.800, 0.950] | 0.900 [0.800, 1.000] | — | best |" in summary
    assert "lr leads every family beyond its interval. version" in summary
    # three slides per site: point values only, marked, and the report says why
    assert "No interval: fewer than 5 test slides" in summary
    sas_row = next(line for line in summary.splitlines() if line.startswith("| SAS | lr |"))
    assert sas_row.count("†") == 4 and "[" not in sas_row
    sites = json.loads((tmp_path / "reports" / "sites.json").read_text())
    assert set(sites["lr"]) == {"SAS", "VUHSK"}
    assert sites["lr"]["SAS"]["roc_auc"]["ci_low"] is None
    for name in ("lr", "cnn", "colour_baseline"):
        header = (tmp_path / "plots" / "evaluate" / name / "confusion.csv").read_text()
        assert header.startswith("actual,predicted") and len(header.splitlines()) == 33
        assert (tmp_path / "reports" / f"confusion_{name}.png").is_file()
    for figure in ("roc.png", "pr.png", "reliability.png", "gradcam_cnn.png"):
        assert (tmp_path / "reports" / figure).stat().st_size > 1000, figure

    _check_mlflow_shape(result, registered_lr)

    # rerun with nothing changed: same numbers, no new version, no alias move
    again = evaluate(params).result
    assert json.loads((tmp_path / "metrics" / "evaluate.json").read_text()) == on_disk
    assert again["champion"] == result["champion"]
    client = MlflowClient()
    assert len(client.search_model_versions(f"name='{REGISTERED_MODEL}'")) == 1
    aliases = client.get_registered_model(REGISTERED_MODEL).aliases
    assert {k: str(v) for k, v in aliases.items()} == {"champion": registered_lr}


def _check_mlflow_shape(result: dict[str, Any], version: str) -> None:
    """One evaluate run with one child per model: the same test_<metric> names, intervals in
    a table, the test store as input, links to the scored version and its training run."""
    client = MlflowClient()
    exp = client.get_experiment_by_name("glomx").experiment_id
    runs = client.search_runs([exp], "tags.`glomx.stage` = 'evaluate'")
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = {r.info.run_name: r for r in runs if r is not parent}
    assert set(children) == {"lr", "cnn", "colour_baseline"}
    assert {r.data.tags["mlflow.parentRunId"] for r in children.values()} == {parent.info.run_id}
    assert parent.data.metrics == {}  # no flat test.<model>.<metric>.ci_low metrics any more
    assert parent.data.tags["evaluated.lr.version"] == version
    assert parent.data.tags["champion.version"] == version
    assert "evaluated.cnn.version" not in parent.data.tags

    lr = children["lr"]
    assert set(lr.data.metrics) == {f"test_{m}" for m in METRICS}
    assert lr.data.metrics["test_roc_auc"] == pytest.approx(
        result["models"]["lr"]["roc_auc"]["value"]
    )
    for run in (*children.values(), parent):
        (dataset,) = run.inputs.dataset_inputs
        assert dataset.dataset.name == "test"
        assert {t.key: t.value for t in dataset.tags}["mlflow.data.context"] == "test"
    assert set(children["colour_baseline"].data.metrics) <= set(lr.data.metrics)

    # links: the version and its training run, as MLflow UI routes, in tags and notes
    mv = client.get_model_version("glomx", version)
    assert client.get_registered_model("glomx").description == MODEL_DESCRIPTION
    train_link = f"(#/experiments/{exp}/runs/{mv.run_id}?workflowType=machine_learning)"
    version_link = f"(#/models/glomx/versions/{version}?workflowType=machine_learning)"
    assert lr.data.tags["evaluated.run_id"] == mv.run_id
    for note in (lr.data.tags["mlflow.note.content"], parent.data.tags["mlflow.note.content"]):
        assert version_link in note and train_link in note
    # the test scores also sit on the version's logged model, tied to the test dataset
    logged = client.get_logged_model(mv.source.removeprefix("models:/"))
    scores = {m.key: m for m in logged.metrics if m.run_id == lr.info.run_id}
    assert scores["test_roc_auc"].value == lr.data.metrics["test_roc_auc"]
    assert scores["test_roc_auc"].dataset_name == "test"

    table = client.load_table(exp, "test_metrics.json", run_ids=[lr.info.run_id])
    overall = table[(table.scope == "test") & (table.metric == "roc_auc")].iloc[0]
    assert overall.slides == 6 and overall.ci_low <= overall.value <= overall.ci_high
    site = table[(table.scope == "site SAS") & (table.metric == "roc_auc")].iloc[0]
    assert site.slides == 3 and np.isnan(site.ci_low)
    both = client.load_table(exp, "test_metrics.json", run_ids=[parent.info.run_id])
    assert set(both.model) == set(children)
    # evaluate rewrote the version's card with these test figures
    card = mv.description
    m = result["models"]["lr"]["balanced_accuracy"]
    assert f"| test | 6 | {m['value']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}] |" in card
    assert "Not yet evaluated" not in card and "Aliases: `champion`." in card


def test_without_a_site_regex_the_split_is_reported_whole(
    params: Params, registered_lr: str, tmp_path: Path
) -> None:
    prepare = params.need("prepare").model_copy(update={"site_regex": None})
    result = evaluate(params.model_copy(update={"prepare": prepare})).result
    assert result["champion"] == {"version": registered_lr, "family": "lr"}
    assert json.loads((tmp_path / "reports" / "sites.json").read_text()) == {}
    assert "| SAS |" not in (tmp_path / "reports" / "summary.md").read_text()


def test_nothing_to_evaluate(params: Params, tmp_path: Path) -> None:
    shutil.rmtree(tmp_path / "models")
    with pytest.raises(EvaluateError, match="no trained model"):
        evaluate(params)


def test_the_ensemble_is_scored_as_the_mean_of_its_members_without_a_second_pass(
    params: Params, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    models = tmp_path / "models"
    members = {f: load_classifier(models / f) for f in ("lr", "cnn")}
    directory = tmp_path / "select" / "ensemble"
    for family in members:
        copy_member(models / family, directory / family)
    ensemble = MeanModel.of("ensemble", members, members["lr"].meta.preprocessing)
    ensemble.save_meta(directory)
    decision = dataclasses.replace(DECISION, candidate="ensemble")
    layout = Layout(params.need("paths"))
    trained = trained_models(layout, ["lr", "cnn"], decision)
    assert [t.family for t in trained] == ["lr", "cnn", "ensemble"]
    stores = {s: ArrayStore(Path(params.need("paths").prepared) / s) for s in ("train", "test")}
    cfg = params.need("evaluate").model_copy(update={"baseline": False})
    scored = score_models(trained, stores, cfg, layout, every=0)
    # a line per batch of 16 for the models scored; none for the ensemble, scored from them
    lines = capsys.readouterr().err.splitlines()
    assert [re.sub(r" images, .*", "", line) for line in lines] == [
        f"evaluate: scoring {family} ({rank} of 3 models): {done}/32"
        for rank, family in enumerate(("lr", "cnn"), 1)
        for done in (16, 32)
    ]
    mean = (scored["lr"].proba + scored["cnn"].proba) / 2
    assert scored["ensemble"].proba == pytest.approx(mean)
    direct = score_store(trained[2].classifier, stores["test"], True, 16)  # the long way
    assert scored["ensemble"].proba == pytest.approx(direct, abs=1e-6)
