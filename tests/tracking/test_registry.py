"""Promotion rules against a real (temporary SQLite) MLflow registry: the choose stage's
candidate against the sitting champion, on out-of-fold metrics."""

from __future__ import annotations

import contextlib
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from glomx.data.store import ArrayStore
from glomx.errors import UsageError
from glomx.models import load_classifier
from glomx.tracking import REGISTERED_MODEL, connect, registry, stage_run
from glomx.tracking.names import CALIBRATED_FROM, lab_alias


def _version(tmp_path: Path, family: str, bal_acc: float, auc: float, cv_data: str) -> str:
    """A registered version as training leaves it: OOF metrics as tags, CV store as run input."""
    connect()
    with mlflow.start_run() as run:
        dataset = mlflow.data.from_pandas(pd.DataFrame({"split": [cv_data]}), name="train")
        mlflow.log_input(dataset, context="cv")
        (tmp_path / "model").mkdir(exist_ok=True)
        mlflow.log_artifact(str(tmp_path / "model"))
    tags = {"family": family, "cv_balanced_accuracy": str(bal_acc), "cv_roc_auc": str(auc)}
    client = MlflowClient()
    with contextlib.suppress(MlflowException):  # exists after the first version
        client.create_registered_model(REGISTERED_MODEL)
    mv = client.create_model_version(
        REGISTERED_MODEL, f"runs:/{run.info.run_id}/model", run.info.run_id, tags=tags
    )
    return str(mv.version)


def _aliases() -> dict[str, str]:
    aliases = MlflowClient().get_registered_model(REGISTERED_MODEL).aliases
    return {k: str(v) for k, v in aliases.items()}


def _count() -> int:
    return len(MlflowClient().search_model_versions(f"name='{REGISTERED_MODEL}'"))


def test_promotion_rules_through_the_registry(tmp_path: Path) -> None:
    lr = _version(tmp_path, "lr", 0.70, 0.80, "A")
    first = registry.promote(lr, "lr is best.", margin=0.01)
    assert first.changed and first.version == lr
    assert _aliases() == {"champion": lr}
    mv = MlflowClient().get_model_version(REGISTERED_MODEL, lr)
    assert mv.description.startswith("lr is best. version")  # the selection's reason leads
    assert "first champion" in mv.description and mv.tags[registry.REASON_TAG] == mv.description

    # rerun with nothing changed: no new version, no alias move, no tag rewrite
    before = MlflowClient().get_model_version(REGISTERED_MODEL, lr).last_updated_timestamp
    again = registry.promote(lr, "lr is best.", margin=0.01)
    assert not again.changed and _aliases() == {"champion": lr} and _count() == 1
    assert MlflowClient().get_model_version(REGISTERED_MODEL, lr).last_updated_timestamp == before

    # a better candidate on the same folds wins; the old one stays reachable
    cnn = _version(tmp_path, "cnn", 0.80, 0.85, "A")
    better = registry.promote(cnn, margin=0.01)
    assert better.changed and better.version == cnn and better.previous == lr
    assert _aliases() == {"champion": cnn, "previous": lr}

    # within the margin: champion stays, the candidate is told why
    close = _version(tmp_path, "resnet", 0.805, 0.99, "A")
    kept = registry.promote(close, margin=0.01)
    assert not kept.changed and kept.version == cnn
    assert _aliases() == {"champion": cnn, "previous": lr}
    assert (
        "stays"
        in MlflowClient().get_model_version(REGISTERED_MODEL, close).tags[registry.REASON_TAG]
    )

    # different CV data: scores are not comparable, the new model wins even if lower
    moved = _version(tmp_path, "lr", 0.60, 0.70, "B")
    changed = registry.promote(moved, margin=0.01)
    assert changed.changed and "different data" in changed.reason
    assert _aliases() == {"champion": moved, "previous": cnn}
    assert _count() == 4

    report = registry.champion_report()
    assert f"models:/{REGISTERED_MODEL}/{moved}" in report and "balanced_accuracy 0.6000" in report


def test_margin_applies_to_out_of_fold_figures_on_the_same_folds() -> None:
    def cand(v: str, ba: float, data: str | None = "A") -> registry.Candidate:
        return registry.Candidate(v, "cnn", "", {"balanced_accuracy": ba}, data)

    metric = "balanced_accuracy"
    assert registry.decide(cand("2", 0.90), None, metric, 0.01).version == "2"
    within = registry.decide(cand("2", 0.905), cand("1", 0.90), metric, 0.01)
    assert not within.changed and within.version == "1" and within.candidate == "2"
    beyond = registry.decide(cand("2", 0.92), cand("1", 0.90), metric, 0.01, "Tied: ensemble.")
    assert beyond.changed and beyond.previous == "1" and beyond.reason.startswith("Tied")
    other_folds = registry.decide(cand("2", 0.5), cand("1", 0.9, "B"), metric, 0.01)
    assert other_folds.changed and "different data" in other_folds.reason
    unknown = registry.decide(cand("2", 0.5), cand("1", 0.9, None), metric, 0.01)
    assert unknown.changed and unknown.version == "2"


def test_unknown_model_uri_names_what_is_missing() -> None:
    with pytest.raises(LookupError, match="no MLflow registry"):
        registry.resolve("models:/glomx@champion")
    connect()
    MlflowClient().create_registered_model(REGISTERED_MODEL)
    with pytest.raises(LookupError, match="glomx@champion"):
        registry.resolve("models:/glomx@champion")
    with pytest.raises(LookupError, match="no alias"):
        registry.champion_report()
    with pytest.raises(ValueError, match="models:/NAME"):
        registry.resolve("models:/glomx")


def test_a_lab_version_never_moves_champion_nor_promotion_a_lab(
    registered_lr: str, lr_dir: Path, prepared: Path
) -> None:
    """A lab's calibrated copy gets its own alias only; a later promotion moves `champion` and
    `previous` but never `lab-<name>`; and a lab's copy is refused as a promotion candidate."""
    assert registry.promote(registered_lr).version == registered_lr
    example = ArrayStore(prepared / "val").read([0])
    alias = lab_alias("north")
    tags = {"lab": "north", CALIBRATED_FROM: registered_lr}
    lab = registry.register_calibrated(
        REGISTERED_MODEL, registered_lr, 0.25, alias, tags, example, "synthetic", {}
    )
    assert _aliases() == {"champion": registered_lr, alias: lab}
    card = MlflowClient().get_model_version(REGISTERED_MODEL, lab).description
    # an empty calibration report still gives the lab's card, from the version's tags
    assert "Lab **north**" in card and f"model files of version {registered_lr}," in card
    classifier, source = registry.load_registered(f"models:/{REGISTERED_MODEL}@{alias}")
    assert classifier.meta.threshold == 0.25 and source == f"models:/{REGISTERED_MODEL}/{lab}"
    assert (
        registry.load_registered(f"models:/{REGISTERED_MODEL}@champion")[0].meta.threshold != 0.25
    )

    with pytest.raises(UsageError, match=f"version {lab} is a lab's calibrated copy"):
        registry.promote(lab)
    with stage_run("train@lr", {}, "synthetic") as run:
        newer = registry.register(
            run, lr_dir, load_classifier(lr_dir), example, {"cv_balanced_accuracy": 0.99}
        )
    assert registry.promote(newer).changed
    assert _aliases() == {"champion": newer, "previous": registered_lr, alias: lab}
