"""The choose stage: choose the champion candidate on out-of-fold predictions, never on test.

It reads every family's OOF predictions (written by its ``train@<family>`` stage), applies the
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

import logging
import shutil
import time
from collections.abc import Mapping
from pathlib import Path

from glomx.artifacts.decision import Decision
from glomx.artifacts.layout import Layout
from glomx.artifacts.model_folder import write_ensemble
from glomx.config import Params
from glomx.data.store import ArrayStore
from glomx.evaluation.metrics import finite, roc_figure, roc_points
from glomx.evaluation.report import strict
from glomx.evaluation.selection import ENSEMBLE, OOF, Selection, select
from glomx.files import write_json
from glomx.progress import duration
from glomx.tracking import StageRun, stage_run
from glomx.tracking.names import MEMBER_PREFIX, MEMBERS_TAG
from glomx.tracking.registry import cv_tags, register, version_of

log = logging.getLogger(__name__)


def read_oofs(layout: Layout, families: list[str]) -> dict[str, OOF]:
    """Each family's OOF predictions, checked to cover the same patches."""
    oofs = {f: OOF.read(layout.oof(f)) for f in families}
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


def _register(
    run: StageRun, selection: Selection, oof: OOF, layout: Layout, site_regex: str | None
) -> str:
    """Build, log and register the ensemble; returns its version."""
    members = selection.tied
    start = time.perf_counter()
    log.info(
        "choose: building the ensemble of %s (copying, loading their bags)", ", ".join(members)
    )
    versions = {}
    for family in members:
        found = version_of(layout.model(family))
        versions[family] = found.version if found else "unregistered"
    bags = {f: layout.model(f) for f in members}
    ensemble = write_ensemble(bags, layout.preprocessing(), layout.ensemble)
    log.info(
        "choose: ensemble built in %s; logging and registering it",
        duration(time.perf_counter() - start),
    )
    scores = cv_tags(oof.metrics())
    run.set_tags(
        {MEMBERS_TAG: ",".join(members)} | {f"{MEMBER_PREFIX}{f}": v for f, v in versions.items()}
    )
    example = ArrayStore(layout.prepared("train")).read([0])
    tags = {MEMBERS_TAG: ", ".join(f"{f} v{v}" for f, v in versions.items())}
    return register(run, layout.ensemble, ensemble, example, scores, tags, site_regex)


def choose(params: Params) -> Decision:
    """Run the whole stage; returns what ``decision.json`` holds."""
    layout, families = Layout(params.need("paths")), params.need("choose").families
    boot = params.need("cv").bootstrap.model_dump()
    oofs = read_oofs(layout, families)
    selection = select(oofs, boot)
    shutil.rmtree(layout.ensemble, ignore_errors=True)
    layout.selection.mkdir(parents=True, exist_ok=True)
    curves = dict(oofs)
    if selection.ensemble_oof is not None:
        curves[ENSEMBLE] = selection.ensemble_oof
    report = {
        "families": {
            f: {"oof": selection.intervals[f], "folds": o.per_fold()} for f, o in oofs.items()
        },
        "selection": selection.as_dict(),
    }
    write_json(layout.metrics("cv"), strict(report))
    write_roc(layout.plots("cv") / "roc.csv", curves)
    kind = ArrayStore(layout.prepared("train")).data_kind
    logged = {"choose": params.need("choose").model_dump(), "cv": {"bootstrap": boot}}
    with stage_run("choose", logged, kind) as run:
        run.log_dataset(ArrayStore(layout.prepared("train")), "cv")
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
        version = None
        if selection.candidate == ENSEMBLE:
            site_regex = params.need("prepare").site_regex
            version = _register(run, selection, curves[ENSEMBLE], layout, site_regex)
    decision = Decision.of(selection, version)
    decision.write(layout.decision)
    log.info("choose: %s", selection.reason)
    return decision


def run(params: Params) -> str:
    """The choose stage; returns its summary: each family's out-of-fold scores, the candidate."""
    decision = choose(params)
    lines = []
    for row in decision.ranking:
        ba, auc = row["balanced_accuracy"], row["roc_auc"]
        lines.append(
            f"{row['family']:>10}: out-of-fold balanced accuracy {ba['value']:.3f} "
            f"[{ba['ci_low']:.3f}, {ba['ci_high']:.3f}], ROC-AUC {auc['value']:.3f}"
        )
    return "\n".join([*lines, f"candidate: {decision.candidate} ({', '.join(decision.tied)})"])
