"""End to end: `dvc repro` of the whole pipeline with tiny params on synthetic data.

Runs in a temporary git copy of this working tree, so the project's own outputs and MLflow
store are never touched. Slowest test of the suite (builds ResNet-50 once, and the pretrained
MobileNetV2 of the probe and mobilenet families).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from pipeline_copy import make_copy, run

from glomx.models import FAMILIES


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A git copy of the working tree's sources, synthetic data, tiny params; after `dvc repro`."""
    root = tmp_path_factory.mktemp("e2e") / "glomx"
    env = make_copy(root)
    run(["dvc", "repro"], root, env)
    return root, env


def _registry(root: Path) -> tuple[list[str], dict[str, str]]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")
    versions = sorted(v.version for v in client.search_model_versions("name='glomx'"))
    aliases = client.get_registered_model("glomx").aliases
    return versions, dict(aliases)


def test_repro_builds_every_output(project: tuple[Path, dict[str, str]]) -> None:
    root, _ = project
    for path in (
        "artifacts/prepared/split.csv",
        "artifacts/balanced/manifest.json",
        "models/lr/glomx.json",
        "models/cnn/glomx.json",
        "models/resnet/glomx.json",
        "models/probe/glomx.json",
        "models/mobilenet/glomx.json",
        "plots/cnn/filters.png",
        "plots/augment/grid.png",
        "reports/summary.md",
    ):
        assert (root / path).is_file(), path
    evaluated = json.loads((root / "metrics" / "evaluate.json").read_text())
    assert set(FAMILIES) <= set(json.dumps(evaluated).split('"'))
    assert "synthetic" in (root / "reports" / "summary.md").read_text().lower()
    resnet = json.loads((root / "metrics" / "resnet.json").read_text())
    assert "none" in json.dumps(resnet) or "random" in json.dumps(resnet)
    versions, aliases = _registry(root)
    assert len(versions) == len(FAMILIES) and "champion" in aliases
    for family in ("probe", "mobilenet"):  # pretrained, never a silent random init
        assert (
            json.loads((root / "metrics" / f"{family}.json").read_text())["weights"] == "imagenet"
        )


def test_rerun_changes_nothing(project: tuple[Path, dict[str, str]]) -> None:
    root, env = project
    before = _registry(root)
    out = run(["dvc", "repro"], root, env)
    assert "Running stage" not in out
    run(["dvc", "repro", "-f", "-s", "evaluate"], root, env)
    assert _registry(root) == before


def test_predict_with_the_champion(project: tuple[Path, dict[str, str]]) -> None:
    root, env = project
    folder = root / "data" / "globally_sclerotic_glomeruli"
    run(["glomx", "predict", str(folder), "--out", "pred.csv"], root, env)
    with open(root / "pred.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(list(folder.glob("*.png")))
    assert all(r["error"] == "" and 0.0 <= float(r["probability"]) <= 1.0 for r in rows)
    assert rows[0]["model"].startswith("models:/glomx/")
    assert (root / "pred_slides.csv").is_file()
