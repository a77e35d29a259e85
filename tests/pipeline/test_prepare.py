"""The prepare stage end to end: synthetic challenge-format data and the real shared data."""

from __future__ import annotations

import copy
import json
import runpy
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow import MlflowClient
from PIL import Image

from glomx.config import Prepare, read
from glomx.data.catalogue import FOLDERS, CatalogueError
from glomx.data.split import read_split_csv
from glomx.data.store import ArrayStore
from glomx.data.synth import make_dataset
from glomx.pipeline.prepare import PrepareError, prepare
from glomx.tracking import EXPERIMENT

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def params() -> dict:
    """The project's prepare params at a test-sized image."""
    p = copy.deepcopy(read(REPO / "params.yaml")["prepare"])
    p["image"]["size"] = 32
    p["chunk_size"] = 8
    return p


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "data"
    make_dataset(out, 60, seed=3, size_range=(40, 90), n_slides=12, workers=1)
    return out


def _check_outputs(out: Path, metrics: Path, expected_kind: str) -> dict:
    counts = json.loads(metrics.read_text())
    rows = read_split_csv(out / "split.csv")
    assert counts["total"] == len(rows) and counts["data_kind"] == expected_kind
    slides_by_split = {s: {r.slide for r in rows if r.split == s} for s in ("train", "test")}
    assert not slides_by_split["train"] & slides_by_split["test"]
    assert not (out / "val").exists()  # no validation store: the folds replace it
    folds = {r.slide: r.fold for r in rows if r.split == "train"}
    assert all(r.fold == folds[r.slide] for r in rows if r.split == "train")  # slide-grouped
    assert {r.fold for r in rows if r.split == "test"} == {-1}
    for fold, c in counts["folds"].items():
        held = [r for r in rows if r.fold == int(fold)]
        assert c["images"] == len(held) and c["class_1"] == sum(r.label for r in held) > 0
    assert len(counts["folds"]) == 3
    for split in ("train", "test"):
        store = ArrayStore(out / split)
        expected = [r for r in rows if r.split == split]
        assert store.names == [r.name for r in expected]
        assert list(store.labels) == [r.label for r in expected]
        assert counts["splits"][split]["images"] == len(store)
        assert counts["splits"][split]["class_1"] == int(store.labels.sum()) > 0
        assert store.manifest["data_kind"] == expected_kind
    return counts


def test_prepare_synthetic_challenge_format(synth_data: Path, params: dict, tmp_path: Path) -> None:
    counts = prepare(
        synth_data, tmp_path / "prep", tmp_path / "prepare.json", Prepare.model_validate(params)
    )
    assert counts["total"] == 60
    _check_outputs(tmp_path / "prep", tmp_path / "prepare.json", "synthetic")
    train = ArrayStore(tmp_path / "prep" / "train")
    assert train.image_shape == (32, 32, 3)
    assert train.read(slice(0, 4)).std() > 5  # real content, not blank fill


def test_prepare_is_deterministic_and_worker_independent(
    synth_data: Path, params: dict, tmp_path: Path
) -> None:
    prepare(synth_data, tmp_path / "a", tmp_path / "a.json", Prepare.model_validate(params))
    prepare(
        synth_data,
        tmp_path / "b",
        tmp_path / "b.json",
        Prepare.model_validate({**params, "workers": 1}),
    )
    assert (tmp_path / "a" / "split.csv").read_bytes() == (
        tmp_path / "b" / "split.csv"
    ).read_bytes()
    for split in ("train", "test"):
        a = np.load(tmp_path / "a" / split / "images.npy")
        b = np.load(tmp_path / "b" / split / "images.npy")
        assert (a == b).all()


def test_unreadable_image_policy(
    synth_data: Path, params: dict, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "data"
    shutil.copytree(synth_data, data)
    victim = sorted((data / "globally_sclerotic_glomeruli").glob("*.png"))[0]
    victim.write_bytes(victim.read_bytes()[:200])  # truncated PNG
    grey = sorted((data / "non_globally_sclerotic_glomeruli").glob("*.png"))[0]
    with Image.open(grey) as colour:
        colour.convert("L").save(grey)  # a greyscale export of a colour patch
    with pytest.raises(PrepareError, match=victim.name) as err:
        prepare(data, tmp_path / "p", tmp_path / "p.json", Prepare.model_validate(params))
    assert "unreadable_image: skip" in str(err.value)
    report = (tmp_path / "p" / "problems.csv").read_text()
    assert victim.name in report
    assert grey.name in report and "greyscale image (PIL mode L)" in report

    params["policy"] = {**params["policy"], "unreadable_image": "skip"}
    counts = prepare(data, tmp_path / "q", tmp_path / "q.json", Prepare.model_validate(params))
    assert counts["total"] == 58 and counts["skipped"] == 2
    split_csv = (tmp_path / "q" / "split.csv").read_text()
    assert victim.name not in split_csv and grey.name not in split_csv
    report = tmp_path / "q" / "problems.csv"
    assert f"2 skipped under prepare.policy (2 unreadable_image), see {report}" in caplog.text


def test_catalogue_errors_are_all_written_to_the_problem_report(
    synth_data: Path, params: dict, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    shutil.copytree(synth_data, data)
    csv = data / "public.csv"
    csv.write_text("\n".join(csv.read_text().splitlines()[:-30]) + "\n")  # 30 rows fewer
    with pytest.raises(CatalogueError, match=r"30 problem\(s\)") as err:
        prepare(data, tmp_path / "p", tmp_path / "p.json", Prepare.model_validate(params))
    report = tmp_path / "p" / "problems.csv"
    assert err.value.__notes__ == [f"All 30 problem(s) are listed in {report}."]
    assert len(report.read_text().splitlines()) == 1 + 30


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_prepare_stage_logs_its_run_and_writes_what_prepare_alone_writes(
    synth_data: Path,
    params: dict,
    tmp_path: Path,
    isolated_mlflow: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = tmp_path / "data"
    shutil.copytree(synth_data, data)
    (data / FOLDERS[0] / "stray-1.png").write_bytes(b"")
    params["policy"] = {**params["policy"], "unlisted_file": "skip"}
    paths = {**read(REPO / "params.yaml")["paths"], "data": str(data), "prepared": "prep"}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"paths": paths, "prepare": params}))
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(REPO / "stages" / "prepare.py"), run_name="__main__")  # as DVC runs it
    assert "train: " in capsys.readouterr().out

    counts = prepare(
        data, tmp_path / "alone", tmp_path / "alone.json", Prepare.model_validate(params)
    )
    assert _tree(tmp_path / "prep") == _tree(tmp_path / "alone")  # MLflow adds no output
    assert (tmp_path / "metrics" / "prepare.json").read_bytes() == (
        tmp_path / "alone.json"
    ).read_bytes()
    client = MlflowClient(isolated_mlflow)
    (run,) = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    run_id = run.info.run_id
    assert run.info.run_name == "prepare" and run.info.status == "FINISHED"
    assert run.data.tags["glomx.stage"] == "prepare" and run.data.tags["data.kind"] == "synthetic"
    assert run.data.params["split.strategy"] == "grouped"
    metrics = run.data.metrics
    assert metrics["images"] == counts["total"] == 60 and metrics["skipped"] == 1
    for split, c in counts["splits"].items():
        for key in ("images", "class_0", "class_1", "slides"):
            assert metrics[f"{split}_{key}"] == c[key] > 0
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert artifacts == {"prepare.json", "split.csv", "problems.csv"}
    split_csv = Path(client.download_artifacts(run_id, "split.csv", str(tmp_path / "dl")))
    assert split_csv.read_bytes() == (tmp_path / "alone" / "split.csv").read_bytes()
    contexts = [
        next(tag.value for tag in d.tags if tag.key == "mlflow.data.context")
        for d in client.get_run(run_id).inputs.dataset_inputs
    ]
    assert sorted(contexts) == ["test", "train"]
    assert metrics["fold0_images"] == counts["folds"]["0"]["images"] > 0


def test_prepare_real_shared_data(real_data: Path, params: dict, tmp_path: Path) -> None:
    counts = prepare(
        real_data, tmp_path / "prep", tmp_path / "prepare.json", Prepare.model_validate(params)
    )
    assert counts["total"] == 772 and counts["skipped"] == 0
    checked = _check_outputs(tmp_path / "prep", tmp_path / "prepare.json", "real")
    assert {s["split"] for s in checked["slides"].values()} == {"train", "test"}
    assert len(checked["slides"]) == 24
    assert checked["splits"]["train"] == {
        "images": 618,
        "class_0": 489,
        "class_1": 129,
        "slides": 18,
    }
    assert sorted(c["slides"] for c in checked["folds"].values()) == [6, 6, 6]
