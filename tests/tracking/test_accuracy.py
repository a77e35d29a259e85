"""Where %GS gets the classifier's sensitivity and specificity from, and what predict writes
per slide with them (real registry, real PNG files)."""

from __future__ import annotations

import csv
from pathlib import Path

from mlflow import MlflowClient

from glomx.data.store import ArrayStore
from glomx.models import load_classifier
from glomx.predict import collect_files, load_model, predict_files
from glomx.tracking import REGISTERED_MODEL, stage_run
from glomx.tracking.registry import register, version_accuracy


def _register(lr_dir: Path, prepared: Path, metrics: dict[str, float]) -> str:
    """``lr_dir`` registered as training does, its cross-validated store logged as its input."""
    val = ArrayStore(prepared / "val")
    with stage_run("train@lr", {}, "synthetic") as run:
        run.log_dataset(val, "cv")
        return register(run, lr_dir, load_classifier(lr_dir), val.read([0]), metrics)


def test_accuracy_from_cv_tags_calibration_tags_or_none(lr_dir: Path, prepared: Path) -> None:
    version = _register(lr_dir, prepared, {"cv_recall": 0.75, "cv_specificity": 0.9})
    acc = version_accuracy(f"models:/glomx/{version}")
    labels = ArrayStore(prepared / "val").labels
    assert (acc.sensitivity, acc.specificity) == (0.75, 0.9)
    assert (acc.n_positive, acc.n_negative) == (int(labels.sum()), int((labels == 0).sum()))
    assert acc.source == f"cross-validation of version {version}"

    client = MlflowClient()
    for key, value in {"lab": "north", "calibration.sensitivity": "0.8",
                       "calibration.specificity": "0.95", "calibration.n_sclerotic": "12",
                       "calibration.n_non_sclerotic": "30"}.items():  # fmt: skip
        client.set_model_version_tag(REGISTERED_MODEL, version, key, value)
    acc = version_accuracy(f"models:/glomx/{version}")
    assert (acc.sensitivity, acc.specificity, acc.n_positive, acc.n_negative) == (0.8, 0.95, 12, 30)
    assert acc.source == f"calibration of version {version} on lab north"

    bare = _register(lr_dir, prepared, {"cv_balanced_accuracy": 0.9})
    assert not version_accuracy(f"models:/glomx/{bare}").known


def test_predict_writes_corrected_percent_with_interval_and_flags(
    png_folder: Path, lr_dir: Path, prepared: Path, tmp_path: Path
) -> None:
    version = _register(lr_dir, prepared, {"cv_recall": 1.0, "cv_specificity": 1.0})
    files = collect_files([png_folder, png_folder / "notes.txt"])  # notes.txt: no slide id
    out = tmp_path / "pred.csv"
    summary = predict_files(files, load_model(f"models:/glomx/{version}"), out, workers=1,
                            progress=False)  # fmt: skip
    with open(out.with_name("pred_slides.csv"), newline="") as f:
        slides = {r["slide"]: r for r in csv.DictReader(f)}
    sas = slides["SAS_1"]
    assert sas["accuracy_source"] == f"cross-validation of version {version}"
    raw = float(sas["percent_sclerotic"])
    assert float(sas["percent_gs"]) == raw  # a perfect classifier corrects nothing
    assert float(sas["percent_gs_low"]) <= raw <= float(sas["percent_gs_high"])
    assert "fewer than 25 glomeruli" in sas["flags"]
    assert slides["(no slide id)"]["percent_gs"] == ""  # nothing predicted there
    assert {row.slide for row in summary.slides} == set(slides)

    overridden = tmp_path / "thr.csv"
    predict_files(files, load_model(f"models:/glomx/{version}"), overridden, threshold=0.3,
                  workers=1, progress=False)  # fmt: skip
    with open(overridden.with_name("thr_slides.csv"), newline="") as f:
        row = next(r for r in csv.DictReader(f) if r["slide"] == "SAS_1")
    assert row["accuracy_source"].startswith("none (--threshold 0.3 is not the model's)")
