"""glomx calibrate against a real (temporary SQLite) registry, on real PNG files of a lab whose
scans come out brighter than the training data's, so the model's 0.5 misses its sclerotic
patches while still ranking them first."""

from __future__ import annotations

import base64
import csv
import json
import re
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from PIL import Image
from synthetic_images import images_for, write_png

from glomx.cli import main
from glomx.data.catalogue import FOLDERS
from glomx.tracking import REGISTERED_MODEL
from glomx.tracking.registry import load_registered

SHIFT = 40  # grey levels brighter: every sclerotic patch falls below the LR model's 0.5


def write_lab(root: Path, per_class: int, n_slides: int, labels: tuple[int, ...] = (0, 1)) -> Path:
    """A lab folder in the challenge layout: ``per_class`` patches of each of ``labels``, dealt
    over ``n_slides`` slides ``NORTH_<k>``, all ``SHIFT`` brighter."""
    y = np.repeat(np.array(labels, dtype=np.uint8), per_class)
    images = np.clip(images_for(y, seed=9).astype(int) + SHIFT, 0, 255).astype(np.uint8)
    rows = []
    for i, (label, image) in enumerate(zip(y, images, strict=True)):
        name = f"NORTH_{i % n_slides}-{i}.png"
        write_png(root / FOLDERS[int(label)] / name, image)
        rows.append(f"{name},{label}")
    for folder in FOLDERS.values():
        (root / folder).mkdir(parents=True, exist_ok=True)
    (root / "public.csv").write_text("name,ground truth\n" + "\n".join(rows) + "\n")
    return root


@pytest.fixture
def champion(registered_lr: str) -> str:
    MlflowClient().set_registered_model_alias(REGISTERED_MODEL, "champion", registered_lr)
    return registered_lr


def _glomx(*argv: str) -> int:
    """``glomx ARGV`` in this process → its exit status."""
    try:
        return main(list(argv))
    except SystemExit as exit_:
        return int(exit_.code or 0)


def _calibrate(lab: Path, reports: Path, *extra: str) -> int:
    return _glomx("calibrate", str(lab), "--reports", str(reports), "--workers", "1", *extra)


def _progress(err: str) -> list[str]:
    """The progress lines on stderr, checked for their elapsed time and rate, without them."""
    found = re.findall(r"^(calibrate: .*), \d+ s elapsed, [\d.]+ images/s$", err, re.MULTILINE)
    assert len(found) == err.count("calibrate: "), err
    return found


def _aliases() -> dict[str, str]:
    aliases = MlflowClient().get_registered_model(REGISTERED_MODEL).aliases
    return {k: str(v) for k, v in aliases.items()}


def _versions() -> int:
    return len(MlflowClient().search_model_versions(f"name='{REGISTERED_MODEL}'"))


def test_calibration_restores_balanced_accuracy_and_moves_only_the_lab_alias(
    champion: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lab, reports = write_lab(tmp_path / "lab", 15, 6), tmp_path / "reports"
    assert _calibrate(lab, reports, "--lab", "north") == 0
    out, err = capsys.readouterr()
    assert _progress(err) == ["calibrate: scoring the lab's patches: 30/30 images"]
    report = json.loads((reports / "calibration_north.json").read_text())
    assert (reports / "calibration_north.md").read_text() in out  # printed as written
    metrics = report["metrics"]
    assert metrics["0.5"]["balanced_accuracy"]["value"] <= 0.6  # the shift defeats 0.5
    calibrated = metrics["calibrated"]["balanced_accuracy"]
    assert calibrated["value"] == 1.0 and calibrated["ci_low"] is not None  # 6 slides: CI
    assert metrics["calibrated"]["roc_auc"]["value"] == 1.0
    assert report["counts"] == {"patches": 30, "sclerotic": 15, "non_sclerotic": 15, "slides": 6}
    assert report["warnings"] == [] and "Warning" not in out
    threshold = report["threshold"]["calibrated"]
    assert threshold < 0.5

    first = report["version"]
    assert _aliases() == {"champion": champion, "lab-north": first}
    mv = MlflowClient().get_model_version(REGISTERED_MODEL, first)
    assert mv.tags["lab"] == "north" and mv.tags["calibrated_from"] == champion
    assert mv.tags["family"] == "lr" and mv.tags["stage"] == "calibrate"
    assert (mv.tags["calibration.n_patches"], mv.tags["calibration.n_slides"]) == ("30", "6")
    classifier, source = load_registered("models:/glomx@lab-north")
    assert classifier.meta.threshold == pytest.approx(threshold)
    assert source == f"models:/glomx/{first}"
    # the source version is untouched
    assert load_registered(f"models:/glomx/{champion}")[0].meta.threshold == 0.5

    # recalibrating the lab, and calibrating another, each moves only its own alias
    assert _calibrate(lab, reports, "--lab", "north") == 0
    assert _calibrate(lab, reports, "--lab", "south", "--model", f"models:/glomx/{champion}") == 0
    aliases = _aliases()
    assert aliases["champion"] == champion and "previous" not in aliases
    assert int(aliases["lab-north"]) == int(first) + 1
    assert int(aliases["lab-south"]) == int(first) + 2
    capsys.readouterr()
    assert main(["champion", "--lab", "north"]) == 0
    shown = capsys.readouterr().out
    assert f"models:/glomx/{aliases['lab-north']}" in shown
    assert f"calibrated from version {champion} on 30 patches" in shown
    assert _glomx("champion", "--lab", "east") == 1
    assert "no alias 'lab-east'" in capsys.readouterr().err


def test_calibrated_version_predicts_and_serves_alike(champion: str, tmp_path: Path) -> None:
    lab = write_lab(tmp_path / "lab", 6, 3)
    assert _calibrate(lab, tmp_path / "reports", "--lab", "north") == 0
    version = _aliases()["lab-north"]
    out = tmp_path / "pred.csv"
    uri = "models:/glomx@lab-north"
    argv = ["predict", str(lab), "--model", uri, "--out", str(out), "--workers", "1", "-q"]
    assert main(argv) == 0
    with open(out, newline="") as f:
        rows = sorted(csv.DictReader(f), key=lambda r: r["name"])
    assert {r["model"] for r in rows} == {f"models:/glomx/{version}"}
    labels = {r["name"]: int(r["label"]) for r in rows}
    with open(lab / "public.csv", newline="") as f:
        truth = {r["name"]: int(r["ground truth"]) for r in csv.DictReader(f)}
    assert labels == truth  # the calibrated threshold separates the lab's patches

    with open(tmp_path / "pred_slides.csv", newline="") as f:
        slides = list(csv.DictReader(f))
    assert [r["slide"] for r in slides] == ["NORTH_0", "NORTH_1", "NORTH_2"]
    for row in slides:  # its calibration figures (perfect on these patches) correct %GS
        assert row["accuracy_source"] == f"calibration of version {version} on lab north"
        assert row["percent_gs"] == row["percent_sclerotic"] == "50.0"
        assert row["flags"].startswith("fewer than 25 glomeruli")

    served = mlflow.pyfunc.load_model(uri)
    request = pd.DataFrame(
        {"image": [base64.b64encode(Path(r["path"]).read_bytes()).decode() for r in rows]}
    )
    answer = served.predict(request)
    assert answer["label"].tolist() == [int(r["label"]) for r in rows]
    np.testing.assert_allclose(
        answer["probability"].astype(float), [float(r["probability"]) for r in rows], atol=1e-5
    )


def _without(lab: Path, what: str) -> Path:
    """The lab folder broken one way."""
    if what == "missing file":
        next((lab / FOLDERS[1]).iterdir()).unlink()
    elif what == "wrong folder":
        moved = next((lab / FOLDERS[1]).iterdir())
        shutil.move(moved, lab / FOLDERS[0] / moved.name)
    elif what == "no csv":
        (lab / "public.csv").unlink()
    return lab


@pytest.mark.parametrize(
    ("what", "message"),
    [
        ("missing file", "[missing_file]"),
        ("wrong folder", "[wrong_folder]"),
        ("no csv", "labels CSV"),
        ("one class", f"has no patch in {FOLDERS[1]}/"),
        ("lab name", "lab name '../x' is not usable"),
        ("model folder", "calibration makes a new registry version"),
    ],
)
def test_bad_input_is_a_clear_error_and_writes_nothing(
    champion: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], what: str, message: str
) -> None:
    labels = (0,) if what == "one class" else (0, 1)
    lab = _without(write_lab(tmp_path / "lab", 4, 2, labels), what)
    extra = {
        "lab name": ["--lab", "../x"],
        "model folder": ["--lab", "north", "--model", str(tmp_path)],
    }
    reports = tmp_path / "reports"
    refused_argument = what in extra  # exit status 2; bad data 1
    assert _calibrate(lab, reports, *extra.get(what, ["--lab", "north"])) == 1 + refused_argument
    err = capsys.readouterr().err
    assert err.startswith("glomx calibrate failed: ") and message in err
    assert "Traceback" not in err
    assert not reports.exists() and _versions() == 1 and _aliases() == {"champion": champion}


def test_too_few_patches_warn_that_the_threshold_is_not_to_be_trusted(
    champion: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lab, reports = write_lab(tmp_path / "lab", 4, 2), tmp_path / "reports"
    assert _calibrate(lab, reports, "--lab", "tiny") == 0
    out = capsys.readouterr().out
    assert "this threshold is not to be trusted yet" in out
    report = json.loads((reports / "calibration_tiny.json").read_text())
    assert "not to be trusted" in report["warnings"][0]
    assert report["metrics"]["calibrated"]["balanced_accuracy"]["ci_low"] is None  # 2 slides
    assert "No intervals: fewer than 5 slides" in (reports / "calibration_tiny.md").read_text()


def test_suggested_patches_once_labelled_calibrate_like_any_labels(
    champion: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lab = write_lab(tmp_path / "lab", 15, 6)
    truth = {r["name"]: r["ground truth"] for r in csv.DictReader((lab / "public.csv").open())}
    pool = tmp_path / "pool"  # the lab's unlabelled folder: every patch, no labels
    pool.mkdir()
    for png in lab.rglob("*.png"):
        shutil.copy(png, pool / png.name)
    out = tmp_path / "to_label"
    args = ["calibrate", str(pool), "--lab", "north", "--workers", "1"]
    assert main([*args, "--suggest", "12", "--out", str(out)]) == 0
    shown = capsys.readouterr()
    assert f"glomx calibrate {out} --lab north" in shown.out
    assert _progress(shown.err) == ["calibrate: scoring the unlabelled patches: 30/30 images"]
    with open(out / "public.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 12 and {r["ground truth"] for r in rows} == {""}
    assert sorted(p.name for p in (out / "unlabelled").iterdir()) == sorted(r["name"] for r in rows)
    assert len({r["name"].split("-")[0] for r in rows}) == 6  # every slide
    assert Image.open(out / "contact_sheet.png").size == (5 * 180, 3 * 210)  # 12 tiles, 5 a row
    # refused while unlabelled; nothing moved, nothing registered
    before = _versions()
    assert _calibrate(out, tmp_path / "reports", "--lab", "north") == 1
    assert "fill the ground truth with 1" in capsys.readouterr().err
    assert len(list((out / "unlabelled").iterdir())) == 12 and _versions() == before
    # labelled (the truth, as a pathologist would): it calibrates on those 12
    lines = ["name,ground truth", *(f"{r['name']},{truth[r['name']]}" for r in rows)]
    (out / "public.csv").write_text("\n".join(lines) + "\n")
    assert _calibrate(out, tmp_path / "reports", "--lab", "north") == 0
    report = json.loads((tmp_path / "reports" / "calibration_north.json").read_text())
    assert report["counts"]["patches"] == 12 and report["counts"]["slides"] == 6
    assert not (out / "unlabelled").exists()
    assert sum(1 for _ in (out / FOLDERS[1]).iterdir()) == report["counts"]["sclerotic"]
