"""Model cards against a real (temporary SQLite) registry: the card of a version holds its
own out-of-fold figures per hospital, its test figures once evaluate has logged them, and a
lab's calibration for a calibrated copy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient
from mlflow.artifacts import download_artifacts

from glomx.data.store import ArrayStore
from glomx.evaluation.bootstrap import bootstrap_metrics
from glomx.evaluation.selection import OOF
from glomx.models import load_classifier
from glomx.tracking import REGISTERED_MODEL, stage_run
from glomx.tracking.model_card import CARD_FILE
from glomx.tracking.registry import refresh_cards, register, register_calibrated

SITE_REGEX = r"^(?P<site>[^_-]+)"


def _oof(seed: int = 0) -> OOF:
    """120 patches of 12 slides, 6 at each of SAS and VUHSK, scored with some overlap."""
    rng = np.random.default_rng(seed)
    slides = [f"{'SAS' if k < 6 else 'VUHSK'}_{k}" for k in range(12) for _ in range(10)]
    labels = (rng.random(120) < 0.35).astype(int)
    proba = np.clip(0.3 * labels + rng.normal(0.35, 0.15, 120), 0, 1).round(6)
    rows = [(f"{s}-{i}.png", s, i % 3, int(y), float(p), 0.5)
            for i, (s, y, p) in enumerate(zip(slides, labels, proba, strict=True))]  # fmt: skip
    return OOF.of(rows)


def _cell(m: dict[str, float]) -> str:
    return f"{m['value']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}]"


def _registered(lr_dir: Path, prepared: Path, oof: OOF, tmp_path: Path) -> str:
    """``lr_dir`` registered as train@lr does: its OOF predictions logged under cv/ first."""
    oof.write(tmp_path / "lr.csv")
    with stage_run("train@lr", {}, "real") as run:
        run.log_artifact(tmp_path / "lr.csv", "cv")
        images = ArrayStore(prepared / "val").read([0])
        return register(run, lr_dir, load_classifier(lr_dir), images, site_regex=SITE_REGEX)


def test_card_holds_the_versions_own_figures_and_is_among_its_artifacts(
    lr_dir: Path, prepared: Path, tmp_path: Path
) -> None:
    oof = _oof()
    version = _registered(lr_dir, prepared, oof, tmp_path)
    card = MlflowClient().get_model_version(REGISTERED_MODEL, version).description
    sections = [
        "## Model details",
        "## Intended uses",
        "### Out-of-scope uses",
        "## Training data",
        "## Evaluation",
        "## Calibration",
        "## Limitations",
    ]
    assert all(section in card for section in sections)
    pooled = bootstrap_metrics(oof.labels, oof.proba, oof.slides, oof.thresholds)
    assert f"| all | 12 | {_cell(pooled['balanced_accuracy'])} | {_cell(pooled['roc_auc'])}" in card
    sas = np.char.startswith(oof.slides.astype(str), "SAS")
    site = bootstrap_metrics(oof.labels[sas], oof.proba[sas], oof.slides[sas], 0.5)
    assert f"| hospital SAS | 6 | {_cell(site['balanced_accuracy'])}" in card
    assert f"| SAS | 6 | 60 | {int(oof.labels[sas].sum())} |" in card  # training data
    assert "CC BY-NC-SA 4.0" in card  # real data: its licence
    assert "Not yet evaluated" in card
    assert "SAS " in card.split("## Limitations")[1]  # threshold transfer, per hospital
    logged = download_artifacts(f"models:/{REGISTERED_MODEL}/{version}/{CARD_FILE}")
    assert Path(logged).read_text() == card

    # evaluate logs the version's test figures, then rewrites its card
    rows = [
        {"model": "lr", "scope": scope, "slides": n, "metric": metric, "value": value,
         "ci_low": low, "ci_high": high}
        for scope, n, value, low, high in (("test", 6, 0.8125, 0.70, 0.91),
                                           ("site SAS", 3, 0.9375, None, None))
        for metric in ("balanced_accuracy", "roc_auc")
    ]  # fmt: skip
    with (
        stage_run("evaluate", {}, "real") as run,
        run.child("lr", {"evaluated.version": version}) as child,
    ):
        child.log_table(rows, "test_metrics.json")
    refresh_cards([version], SITE_REGEX)
    card = MlflowClient().get_model_version(REGISTERED_MODEL, version).description
    assert "| test | 6 | 0.812 [0.700, 0.910] | 0.812 [0.700, 0.910]" in card
    assert "| site SAS | 3 | 0.938 † |" in card and "Not yet evaluated" not in card


def test_a_calibrated_versions_card_names_the_lab_and_its_calibration(
    lr_dir: Path, prepared: Path, tmp_path: Path
) -> None:
    version = _registered(lr_dir, prepared, _oof(), tmp_path)
    report = {
        "counts": {"patches": 30, "sclerotic": 12, "non_sclerotic": 18, "slides": 5},
        "metrics": {"calibrated": {"balanced_accuracy": {"value": 0.9, "ci_low": 0.8,
                                                         "ci_high": 1.0}}},
        "warnings": ["only 12 sclerotic"],
    }  # fmt: skip
    tags = {"lab": "north", "calibrated_from": version, "calibration.threshold": "0.31",
            "calibration.n_patches": "30", "calibration.n_sclerotic": "12",
            "calibration.n_slides": "5"}  # fmt: skip
    example = ArrayStore(prepared / "val").read([0])
    new = register_calibrated(REGISTERED_MODEL, version, 0.31, "lab-north", tags, example,
                              "real", report, SITE_REGEX)  # fmt: skip
    card = MlflowClient().get_model_version(REGISTERED_MODEL, new).description
    assert (
        "Lab **north**: threshold 0.31 for the model files" in card
        and "30 patches (12 sclerotic) from 5" in card
    )
    assert (
        "| threshold | slides |" in card and "| calibrated 0.31 | 5 | 0.900 [0.800, 1.000]" in card
    )
    assert "**Warning:** only 12 sclerotic" in card
    assert "`lab-north`" in card and "Not evaluated at the lab's threshold" in card
    assert "| hospital VUHSK | 6 |" in card  # the source's out-of-fold figures


@pytest.mark.parametrize("weights", ["random", "random-fallback"])
def test_random_initial_weights_are_a_stated_limit(
    weights: str, lr_dir: Path, prepared: Path
) -> None:
    images = ArrayStore(prepared / "val").read([0])
    with stage_run("train@resnet", {}, "real") as run:
        version = register(run, lr_dir, load_classifier(lr_dir), images, tags={"weights": weights})
    card = MlflowClient().get_model_version(REGISTERED_MODEL, version).description
    assert f"**Random initial weights** (`weights={weights}`)" in card
    assert "Not recorded: the registering run logged no out-of-fold predictions." in card
