"""The choose stage: choose the champion candidate on out-of-fold predictions, never on test.

It reads every family's OOF predictions (written by its ``train-<family>`` stage), applies the
rule of :mod:`glomx.evaluation.selection` and writes:

- ``metrics/cv.json``: per family the pooled OOF metrics with slide-bootstrap intervals and the
  per-fold values; the ensemble's when there is one; the rule's ranking, intervals, ties and
  decision;
- ``plots/cv/roc.csv``: the OOF ROC curves, one colour per family (DVC plot ``cv_roc``);
- ``<selection>/decision.json``, which evaluate reads to promote;
- when families tie, ``<selection>/ensemble/``: the mean of the tied families' bags (copied
  bit for bit from ``models/``), registered as its own version with its members' versions.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from glomx.config import Params, Paths
from glomx.data.store import ArrayStore
from glomx.evaluation.metrics import roc_figure, roc_points
from glomx.evaluation.report import strict
from glomx.evaluation.selection import ENSEMBLE, OOF, Selection, select
from glomx.files import write_json
from glomx.models import load_classifier
from glomx.models.base import META_FILE
from glomx.models.mean import MeanModel, copy_member
from glomx.pipeline.cv import finite
from glomx.pipeline.train import model_folder, prepared_preprocessing
from glomx.tracking import StageRun, stage_run
from glomx.tracking.registry import register, version_of

log = logging.getLogger(__name__)
DECISION = "decision.json"


def read_oofs(paths: Paths, families: list[str]) -> dict[str, OOF]:
    """Each family's OOF predictions, checked to cover the same patches."""
    oofs = {f: OOF.read(Path(paths.cv) / f"{f}.csv") for f in families}
    first = families[0]
    for f in families[1:]:
        oofs[first].check_same_patches(oofs[f], f"{first} and {f}")
    return oofs


def write_roc(path: Path, curves: Mapping[str, OOF]) -> None:
    """One CSV of every model's OOF ROC curve (``model,fpr,tpr,threshold``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["model,fpr,tpr,threshold"]
    for name, oof in curves.items():
        lines += [
            f"{name},{f:.6f},{t:.6f},{h:.6f}" for f, t, h in roc_points(oof.labels, oof.proba)
        ]
    path.write_text("\n".join(lines) + "\n")


def build_ensemble(members: list[str], paths: Paths, directory: Path) -> MeanModel:
    """The tied families' bags, copied under ``directory``, as one mean model."""
    with model_folder(directory) as build:
        for family in members:
            copy_member(Path(paths.models) / family, build / family)
        loaded = {f: load_classifier(build / f) for f in members}
        ensemble = MeanModel.of(ENSEMBLE, loaded, prepared_preprocessing(paths))
        ensemble.save_meta(build)
    return ensemble


def _register(
    run: StageRun, selection: Selection, oof: OOF, paths: Paths, out: Path, site_regex: str | None
) -> str:
    """Build, log and register the ensemble; returns its version."""
    members = selection.tied
    versions = {}
    for family in members:
        found = version_of(Path(paths.models) / family)
        versions[family] = found.version if found else "unregistered"
    ensemble = build_ensemble(members, paths, out / ENSEMBLE)
    scores = {f"cv_{k}": v for k, v in finite(oof.metrics()).items()}
    run.set_tags({"members": ",".join(members)} | {f"member.{f}": v for f, v in versions.items()})
    example = ArrayStore(Path(paths.prepared) / "train").read([0])
    tags = {"members": ", ".join(f"{f} v{v}" for f, v in versions.items())}
    return register(run, out / ENSEMBLE, ensemble, example, scores, tags, site_regex)


def choose_stage(params: Params) -> dict[str, Any]:
    """Run the whole stage; returns what ``decision.json`` holds."""
    paths, families = params.need("paths"), params.need("choose").families
    boot = params.need("cv").bootstrap.model_dump()
    oofs = read_oofs(paths, families)
    selection = select(oofs, boot)
    out = Path(paths.selection)
    shutil.rmtree(out / ENSEMBLE, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    curves = dict(oofs)
    if selection.ensemble_oof is not None:
        curves[ENSEMBLE] = selection.ensemble_oof
    report = {
        "families": {
            f: {"oof": selection.intervals[f], "folds": o.per_fold()} for f, o in oofs.items()
        },
        "selection": selection.as_dict(),
    }
    write_json(Path(paths.metrics) / "cv.json", strict(report))
    write_roc(Path(paths.plots) / "cv" / "roc.csv", curves)
    kind = ArrayStore(Path(paths.prepared) / "train").data_kind
    logged = {"choose": params.need("choose").model_dump(), "cv": {"bootstrap": boot}}
    with stage_run("choose", logged, kind) as run:
        run.log_dataset(ArrayStore(Path(paths.prepared) / "train"), "cv")
        run.log_dict(strict(report), "cv.json")
        run.log_figure(
            roc_figure({n: (o.labels, o.proba) for n, o in curves.items()}), "plots/roc.png"
        )
        run.log_metrics(
            {
                f"cv_{f}_{k}": v
                for f, o in oofs.items()
                for k, v in finite(o.metrics()).items()
                if k in ("balanced_accuracy", "roc_auc")
            }
        )
        run.set_tags({"candidate": selection.candidate, "tied": ",".join(selection.tied)})
        run.set_note(selection.reason)
        decision = {**selection.as_dict(), "ensemble_version": None}
        if selection.candidate == ENSEMBLE:
            decision["ensemble_version"] = _register(
                run, selection, curves[ENSEMBLE], paths, out, params.need("prepare").site_regex
            )
    write_json(out / DECISION, strict(decision))
    log.info("choose: %s", selection.reason)
    return decision


def run(params: Params) -> str:
    """The choose stage; returns its summary: each family's out-of-fold scores, the candidate."""
    decision = choose_stage(params)
    lines = []
    for row in decision["ranking"]:
        ba, auc = row["balanced_accuracy"], row["roc_auc"]
        lines.append(
            f"{row['family']:>10}: out-of-fold balanced accuracy {ba['value']:.3f} "
            f"[{ba['ci_low']:.3f}, {ba['ci_high']:.3f}], ROC-AUC {auc['value']:.3f}"
        )
    return "\n".join(
        [*lines, f"candidate: {decision['candidate']} ({', '.join(decision['tied'])})"]
    )


def candidate_dir(paths: Paths, decision: Mapping[str, Any]) -> Path:
    """The saved model folder of the candidate the choose stage chose."""
    name = decision["candidate"]
    base = Path(paths.selection) if name == ENSEMBLE else Path(paths.models)
    directory = base / name
    if not (directory / META_FILE).is_file():
        raise FileNotFoundError(f"{directory} holds no model; rerun `dvc repro choose`")
    return directory


def read_decision(paths: Paths) -> dict[str, Any]:
    path = Path(paths.selection) / DECISION
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; run the choose stage (`dvc repro choose`)")
    return json.loads(path.read_text())
