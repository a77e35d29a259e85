"""End to end: `dvc repro` of the whole pipeline with tiny params on synthetic data.

Runs in a temporary git copy of this working tree, so the project's own outputs and MLflow
store are never touched. Slowest test of the suite (builds ResNet-50 once, and the pretrained
MobileNetV2 of the probe and mobilenet families).
"""

from __future__ import annotations

import base64
import csv
import json
import shutil
import urllib.request
from pathlib import Path

import pytest
from pipeline_copy import make_copy, run
from served_http import serving, strict_json

from glomx.models import FAMILIES
from glomx.models.exported import EXPORT_FILE, SPEC_FILE, has_export

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A git copy of the working tree's sources, synthetic data, tiny params; after `dvc repro`."""
    root = tmp_path_factory.mktemp("e2e") / "glomx"
    env = make_copy(root)
    run(["dvc", "repro"], root, env)
    return root, env


def _registry(root: Path) -> tuple[list[str], dict[str, str]]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=env_uri(root))
    versions = sorted(v.version for v in client.search_model_versions("name='glomx'"))
    aliases = client.get_registered_model("glomx").aliases
    return versions, dict(aliases)


def _json(root: Path, path: str) -> dict:
    return json.loads((root / path).read_text())


def test_repro_builds_every_output(project: tuple[Path, dict[str, str]]) -> None:
    root, _ = project
    for path in (
        "artifacts/prepared/split.csv",
        "artifacts/balanced/manifest.json",
        *(f"models/{f}/glomx.json" for f in FAMILIES),
        *(f"artifacts/cv/{f}.csv" for f in FAMILIES),
        "artifacts/select/decision.json",
        "plots/cv/roc.csv",
        "plots/cnn/filters.png",
        "plots/augment/grid.png",
        "reports/summary.md",
    ):
        assert (root / path).is_file(), path
    assert not (root / "artifacts" / "prepared" / "val").exists()
    decision = _json(root, "artifacts/select/decision.json")
    cv = _json(root, "metrics/cv.json")
    assert set(cv["families"]) == set(FAMILIES)
    assert cv["selection"]["candidate"] == decision["candidate"]
    assert decision["ranking"][0]["family"] == decision["tied"][0]
    evaluated = _json(root, "metrics/evaluate.json")
    extra = {"ensemble"} if decision["candidate"] == "ensemble" else set()
    assert set(evaluated["models"]) == {*FAMILIES, "colour_baseline", *extra}
    assert evaluated["champion"]["family"] == decision["candidate"]
    assert "synthetic" in (root / "reports" / "summary.md").read_text().lower()
    # train@resnet's params ask for no pretrained weights (weights: none): recorded as random
    assert _json(root, "metrics/resnet.json")["weights"] == "random"
    for family in ("probe", "mobilenet"):  # pretrained, never a silent random init
        assert _json(root, f"metrics/{family}.json")["weights"] == "imagenet"
    for family in FAMILIES:
        report = _json(root, f"metrics/{family}.json")
        oof = cv["families"][family]["oof"]
        assert report["oof"]["balanced_accuracy"] == oof["balanced_accuracy"]  # one source
        assert set(report["folds"]) == {"0", "1"}  # TINY's 2 folds
    versions, aliases = _registry(root)
    assert len(versions) == len(FAMILIES) + len(extra) and "champion" in aliases


def test_a_family_param_reruns_that_family_only(project: tuple[Path, dict[str, str]]) -> None:
    """Of the training stages, a train_lr param changes train@lr's alone (choose and evaluate
    follow once its model has changed); no other family's cross-validation reruns."""
    root, env = project
    params = (root / "params.yaml").read_text()
    try:
        (root / "params.yaml").write_text(params.replace("alpha: 1.0", "alpha: 0.5", 1))
        out = run(["dvc", "status", "--json"], root, env)
        status = json.loads(out[out.index("{") : out.rindex("}") + 1])
        assert status == {"train@lr": [{"changed deps": {"params.yaml": {"train_lr": "modified"}}}]}
    finally:
        (root / "params.yaml").write_text(params)


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


def _predicted(root: Path, env: dict[str, str], patches: Path, model: str) -> dict[str, float]:
    """``glomx predict patches --model model``'s probabilities by file name."""
    out = root / f"pred-{len(list(root.glob('pred-*.csv')))}.csv"
    run(["glomx", "predict", str(patches), "--model", model, "--out", str(out), "-q"], root, env)
    with open(out, newline="") as f:
        return {r["name"]: float(r["probability"]) for r in csv.DictReader(f)}


def test_the_exports_predict_as_the_keras_models_on_real_patches(
    project: tuple[Path, dict[str, str]], real_data: Path, tmp_path: Path
) -> None:
    """Every Keras bag is saved with its ONNX export, and the export (what predict, the
    registry and serving now load) gives the probabilities of the Keras models it was made
    from within 1e-4, on real patches: through ``glomx predict`` and over HTTP."""
    root, env = project
    assert {f: has_export(root / "models" / f) for f in FAMILIES} == {
        f: f != "lr" for f in FAMILIES
    }
    patches = tmp_path / "patches"
    patches.mkdir()
    for folder in ("globally_sclerotic_glomeruli", "non_globally_sclerotic_glomeruli"):
        for path in sorted((real_data / folder).glob("*.png"))[:5]:
            shutil.copy(path, patches / path.name)
    decision = _json(root, "artifacts/select/decision.json")
    candidate = decision["candidate"]
    champion = root / ("artifacts/select" if candidate == "ensemble" else "models") / candidate
    today: dict[str, dict[str, float]] = {}
    for model in (root / "models" / "cnn", champion):
        native = tmp_path / "native" / model.name  # the folder as it was before exports
        shutil.copytree(model, native, ignore=shutil.ignore_patterns(EXPORT_FILE, SPEC_FILE))
        today[model.name] = _predicted(root, env, patches, str(native))
        exported = _predicted(root, env, patches, str(model))
        assert exported.keys() == today[model.name].keys() and len(exported) == 10
        assert max(abs(exported[k] - today[model.name][k]) for k in exported) <= 1e-4

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=env_uri(root))
    (cnn,) = (
        v.version
        for v in client.search_model_versions("name='glomx'")
        if v.tags.get("family") == "cnn"
    )
    served_env = {**env, "MLFLOW_TRACKING_URI": env_uri(root)}
    names = sorted(today["cnn"])
    rows = [[base64.b64encode((patches / n).read_bytes()).decode()] for n in names]
    body = json.dumps({"dataframe_split": {"columns": ["image"], "data": rows}}).encode()
    with serving(served_env, tmp_path / "serve.log", "--model", f"models:/glomx/{cnn}") as base:
        request = urllib.request.Request(
            f"{base}/invocations", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            predictions = strict_json(response.read().decode())["predictions"]
    served = [p["probability"] for p in predictions]
    assert max(abs(p - today["cnn"][n]) for p, n in zip(served, names, strict=True)) <= 1e-4


def env_uri(root: Path) -> str:
    """The copy's own MLflow store."""
    return f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"
