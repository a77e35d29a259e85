"""End to end: `dvc repro` of the whole pipeline with tiny params on synthetic data.

Runs in a temporary git copy of this working tree, so the project's own outputs and MLflow
store are never touched. Slowest test of the suite (builds ResNet-50 once, and the pretrained
MobileNetV2 of the probe and mobilenet families).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from glomx.data.synth import make_dataset
from glomx.models import FAMILIES

REPO = Path(__file__).resolve().parents[1]
OUTPUTS = ("artifacts/", "models/", "metrics/", "plots/", "reports/", "mlruns/", "dvc.lock")

TINY = {
    "prepare": {"image": {"size": 32}},
    "augment": {"workers": 1},
    "train_lr": {"model": {"size": 16}, "fit": {"epochs": 2}},
    "train_cnn": {
        "model": {"size": 32, "filters": [8, 16]},
        "fit": {"epochs": 1, "batch_size": 16, "jit_compile": False},
    },
    "train_resnet": {
        "model": {"size": 32, "weights": "none", "finetune_epochs": 0},
        "fit": {"epochs": 1, "batch_size": 16},
    },
    "train_probe": {"model": {"size": 32}, "fit": {"C": [0.1], "batch_size": 16}, "stain": "none"},
    "train_mobilenet": {
        "model": {"size": 32, "finetune_epochs": 1},
        "fit": {"epochs": 1, "batch_size": 16},
        "stain": "none",
    },
    "evaluate": {"bootstrap": {"n_resamples": 50}, "gradcam_per_case": 1},
}


def _merge(base: dict, override: dict) -> dict:
    for key, value in override.items():
        base[key] = _merge(base[key], value) if isinstance(value, dict) else value
    return base


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, (
        f"{' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    )
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A git copy of the working tree's sources, synthetic data, tiny params; after `dvc repro`."""
    root = tmp_path_factory.mktemp("e2e") / "glomx"
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for name in files:
        if (REPO / name).is_file() and not name.startswith(OUTPUTS):
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, root / name)
    params = yaml.safe_load((root / "params.yaml").read_text())
    (root / "params.yaml").write_text(yaml.safe_dump(_merge(params, TINY), sort_keys=False))
    make_dataset(root / "data", 90, seed=5, size_range=(40, 80), n_slides=12, workers=1)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)  # the copy's own mlruns/, as a user gets it
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    _run(["git", "init", "-q"], root, env)
    _run([*git, "add", "-A"], root, env)
    _run([*git, "commit", "-qm", "e2e"], root, env)
    _run(["dvc", "repro"], root, env)
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
    out = _run(["dvc", "repro"], root, env)
    assert "Running stage" not in out
    _run(["dvc", "repro", "-f", "-s", "evaluate"], root, env)
    assert _registry(root) == before


def test_predict_with_the_champion(project: tuple[Path, dict[str, str]]) -> None:
    root, env = project
    folder = root / "data" / "globally_sclerotic_glomeruli"
    _run(["glomx", "predict", str(folder), "--out", "pred.csv"], root, env)
    with open(root / "pred.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(list(folder.glob("*.png")))
    assert all(r["error"] == "" and 0.0 <= float(r["probability"]) <= 1.0 for r in rows)
    assert rows[0]["model"].startswith("models:/glomx/")
    assert (root / "pred_slides.csv").is_file()
