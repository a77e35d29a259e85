"""The evaluate stage end to end on tiny stores: metrics, reports, plots, promotion, MLflow."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mlflow import MlflowClient

from glomx.evaluate import EvaluateError, evaluate, sites_of
from glomx.evaluation.bootstrap import METRICS
from glomx.models import load_classifier
from glomx.models.cnn import CNNClassifier, build_cnn
from glomx.tracking.runs import REGISTERED_MODEL


def _params(root: Path, prepared: Path) -> dict[str, Any]:
    paths = {
        "prepared": str(prepared),
        "models": str(root / "models"),
        "metrics": str(root / "metrics"),
        "plots": str(root / "plots"),
        "reports": str(root / "reports"),
    }
    evaluate_cfg = {
        "families": ["lr", "cnn", "resnet"],
        "tta": True,
        "batch_size": 16,
        "baseline": True,
        "bootstrap": {"n_resamples": 200, "confidence": 0.95, "seed": 1},
        "calibration_bins": 5,
        "site_regex": "^(?P<site>[^_-]+)",
        "gradcam_per_case": 2,
        "promotion": {"metric": "balanced_accuracy", "tiebreak": "roc_auc", "margin": 0.01},
    }
    return {"paths": paths, "evaluate": evaluate_cfg}


@pytest.fixture
def params(
    tmp_path: Path,
    prepared: Path,
    lr_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> dict[str, Any]:
    """models/lr (a copy of ``lr_dir``) and an untrained, never registered models/cnn."""
    monkeypatch.chdir(tmp_path)
    shutil.copytree(lr_dir, tmp_path / "models" / "lr")
    pre = load_classifier(lr_dir).meta.preprocessing
    cnn = CNNClassifier.from_params({"model": {"size": 16, "filters": [4, 8]}}, pre)
    CNNClassifier(cnn.meta, cnn.fit_config, cnn.config, build_cnn(cnn.config)).save(
        tmp_path / "models" / "cnn"
    )
    return _params(tmp_path, prepared)


def test_evaluate_writes_everything_and_promotes_on_validation(
    params: dict[str, Any], registered_lr: str, tmp_path: Path
) -> None:
    result = evaluate(params)
    assert set(result["models"]) == {"lr", "cnn", "colour_baseline"}
    for name, metrics in result["models"].items():
        assert set(metrics) == set(METRICS)
        for metric, m in metrics.items():
            if not np.isnan(m["value"]):
                assert m["ci_low"] <= m["value"] <= m["ci_high"], (name, metric)
    assert result["models"]["lr"]["roc_auc"]["value"] > 0.9  # the dark cue is learnable
    # only lr is registered, so it is the champion; the unregistered cnn is no candidate
    assert result["champion"] == {"version": registered_lr, "family": "lr"}
    assert result["test"] == {"images": 32, "class_1": 11, "slides": 4}

    on_disk = json.loads((tmp_path / "metrics" / "evaluate.json").read_text())
    assert on_disk["data_kind"] == "synthetic" and "lr" in on_disk["models"]
    summary = (tmp_path / "reports" / "summary.md").read_text()
    assert "SYNTHETIC DATA" in summary and f"version {registered_lr} (lr)" in summary
    assert "| test | 32 | 11 | 4 |" in summary and "| SAS | lr |" in summary
    sites = json.loads((tmp_path / "reports" / "sites.json").read_text())
    assert set(sites["lr"]) == {"SAS", "VUHSK"}
    for name in ("lr", "cnn", "colour_baseline"):
        header = (tmp_path / "plots" / "evaluate" / name / "confusion.csv").read_text()
        assert header.startswith("actual,predicted") and len(header.splitlines()) == 33
        assert (tmp_path / "reports" / f"confusion_{name}.png").is_file()
    for figure in ("roc.png", "pr.png", "reliability.png", "gradcam_cnn.png"):
        assert (tmp_path / "reports" / figure).stat().st_size > 1000, figure

    client = MlflowClient()
    (run,) = client.search_runs(
        [client.get_experiment_by_name("glomx").experiment_id],
        "tags.`glomx.stage` = 'evaluate'",
    )
    assert run.data.tags["evaluated.lr.version"] == registered_lr
    assert run.data.tags["champion.version"] == registered_lr
    assert "evaluated.cnn.version" not in run.data.tags
    assert run.data.metrics["test.lr.roc_auc"] == pytest.approx(
        result["models"]["lr"]["roc_auc"]["value"]
    )

    # rerun with nothing changed: same numbers, no new version, no alias move
    again = evaluate(params)
    assert json.loads((tmp_path / "metrics" / "evaluate.json").read_text()) == on_disk
    assert again["champion"] == result["champion"]
    assert len(client.search_model_versions(f"name='{REGISTERED_MODEL}'")) == 1
    aliases = client.get_registered_model(REGISTERED_MODEL).aliases
    assert {k: str(v) for k, v in aliases.items()} == {"champion": registered_lr}


def test_nothing_to_evaluate_and_bad_site_regex(params: dict[str, Any], tmp_path: Path) -> None:
    shutil.rmtree(tmp_path / "models")
    with pytest.raises(EvaluateError, match="no trained model"):
        evaluate(params)
    with pytest.raises(EvaluateError, match="site"):
        sites_of(["SAS_1"], "^[A-Z]+")
    assert sites_of(["SAS_1", "S-2006-005094", "x"], "^(?P<site>[^_-]+)_").tolist() == [
        "SAS",
        "other",
        "other",
    ]
