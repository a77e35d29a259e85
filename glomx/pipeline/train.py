"""The one training-stage flow, shared by every ``train@<family>`` stage.

:func:`train` cross-validates the family over prepare's slide-grouped folds
(:mod:`glomx.crossval`, one Ray task per fold), then:

- writes its out-of-fold (OOF) predictions of every cross-validated patch
  (``<cv>/<family>.csv``), the pooled OOF metrics with slide-bootstrap intervals and the
  per-fold ones (``metrics/<family>.json``) and the OOF plot data (``plots/<family>/``);
- saves the family's model, the *bag* of its K fold models (their mean probability,
  :class:`~glomx.models.mean.MeanModel`), into ``models/<family>/``, replacing the old one
  only once it is complete;
- logs one MLflow run, the fold trials nested under it, ending in a registered version tagged
  with its ``cv_<metric>`` scores, which promotion reads.

The test split is never read here. Every family's section has the same shape
(:class:`~glomx.config.TrainSection`): its model's own ``model:`` and ``fit:`` parts, then
``class_weight``, ``stain`` and ``threshold``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from glomx.artifacts.layout import Layout
from glomx.artifacts.model_folder import check_replaceable, write_bag
from glomx.config import CV, TRAIN_PREFIX, Params, Paths, TrainSection
from glomx.crossval import FoldResult, fold_trials, out_of_fold, run_trials
from glomx.data.images import Preprocessing
from glomx.data.split import read_split_csv, slide_folds
from glomx.data.store import ArrayStore
from glomx.errors import UsageError
from glomx.evaluation import metrics as m
from glomx.evaluation.report import strict
from glomx.evaluation.selection import OOF, SHOWN
from glomx.files import write_json
from glomx.models import FAMILIES, family_class, family_section
from glomx.models.base import Predictor
from glomx.models.mean import CVRecord, MeanModel, fitted_models
from glomx.tracking import StageRun, stage_run
from glomx.tracking.names import OOF_DIR
from glomx.tracking.registry import cv_tags, register

log = logging.getLogger(__name__)


def stage_name(family: str) -> str:
    """The DVC stage that trains ``family``, one per family from dvc.yaml's ``train`` template
    (``dvc repro train@cnn``); its MLflow run is named and tagged so."""
    return f"train@{family}"


@dataclass(frozen=True)
class Inputs:
    """What a train stage reads, opened once: the augmented, balanced training store, the
    cross-validated slides' originals, and the preprocessing prepare recorded."""

    training: ArrayStore
    originals: ArrayStore
    preprocessing: Preprocessing

    @classmethod
    def of(cls, layout: Layout) -> Inputs:
        training, originals = ArrayStore(layout.balanced), ArrayStore(layout.prepared("train"))
        return cls(training, originals, layout.preprocessing())


@dataclass(frozen=True)
class CrossValidated:
    """One family cross-validated: its out-of-fold predictions, the bag of its fold models
    (saved) and the report ``metrics/<family>.json`` holds."""

    family: str
    oof: OOF
    bag: MeanModel
    report: dict[str, Any]

    @property
    def pooled(self) -> dict[str, float]:
        """The pooled out-of-fold metrics, as the registry's ``cv_<metric>`` tags."""
        return cv_tags(self.oof.metrics())


def cv_report(oof: OOF, results: list[FoldResult], boot: dict[str, Any]) -> dict[str, Any]:
    """Pooled OOF metrics with intervals, then each fold's metrics and what it cost."""
    per_fold = oof.per_fold()
    return {
        "oof": {
            "images": len(oof.names),
            "slides": len(set(oof.slides.tolist())),
            **{k: v for k, v in oof.intervals(boot).items() if k in SHOWN},
        },
        "folds": {
            str(r.fold): {
                **{k: per_fold[str(r.fold)][k] for k in SHOWN},
                "images": int(np.sum(oof.folds == r.fold)),
                "heldout_slides": sorted(set(r.slides)),
                "inner_val_slides": r.inner,
                "seconds": round(r.seconds, 1),
                "peak_rss_mib": round(r.peak_rss_mib),
            }
            for r in results
        },
    }


def _log_oof(run: StageRun, classifier: Predictor, oof: OOF) -> None:
    """Summary text, confusion matrix (PNG + JSON), ROC and PR figures of the OOF predictions."""
    pred = (oof.proba >= oof.thresholds).astype(np.uint8)
    run.log_text(classifier.summary(), "model/summary.txt")
    run.log_dict(
        {"threshold": classifier.meta.threshold, **m.confusion_counts(oof.labels, pred)},
        "plots/confusion.json",
    )
    family = classifier.meta.family
    for fig, name in (
        (m.confusion_figure(oof.labels, pred, f"{family}: out-of-fold"), "confusion"),
        (m.roc_figure({family: (oof.labels, oof.proba)}), "roc"),
        (m.pr_figure({family: (oof.labels, oof.proba)}), "pr"),
    ):
        run.log_figure(fig, f"plots/{name}.png")


def cross_validate(
    family: str,
    section: TrainSection,
    layout: Layout,
    inputs: Inputs,
    cfg: CV,
    site_regex: str | None,
    run: StageRun,
) -> CrossValidated:
    """``family``'s fold trials on Ray, their trials' runs nested under ``run``; the bag of
    the fold models is saved into its model folder."""
    training, originals, preprocessing = inputs.training, inputs.originals, inputs.preprocessing
    folds = slide_folds(read_split_csv(layout.split_csv))
    trials = fold_trials(
        family, section, preprocessing, training, originals, folds, cfg, site_regex, run.ref()
    )
    log.info("%s: %d-fold cross-validation (%s data)", family, len(trials), originals.data_kind)
    results = run_trials(trials, cfg, stage_name(family))
    oof = out_of_fold(results)
    bag = write_bag(
        family,
        {r.fold: r.model for r in results},
        preprocessing,
        float(np.mean([r.threshold for r in results])),
        CVRecord(len(results), {str(r.fold): sorted(set(r.slides)) for r in results}),
        layout.model(family),
    )
    facts = {
        "threshold": bag.meta.threshold,
        "data_kind": originals.data_kind,
        "class_weight": section.class_weight,
        **bag.tags(),
    }
    report = {**cv_report(oof, results, cfg.bootstrap.model_dump()), **facts}
    return CrossValidated(family, oof, bag, report)


def record(
    done: CrossValidated, layout: Layout, inputs: Inputs, run: StageRun, site_regex: str | None
) -> str:
    """Write the family's out-of-fold table, metrics file and plot data, log them all to
    ``run`` and register the bag; returns its registry version."""
    family, oof, bag = done.family, done.oof, done.bag
    oof.write(layout.oof(family))
    write_json(layout.metrics(family), strict(done.report))
    m.write_plot_data(layout.plots(family), oof.labels, oof.proba, oof.thresholds)
    run.log_selected({**done.pooled, "threshold": bag.meta.threshold})
    _log_oof(run, bag, oof)
    run.log_artifact(layout.oof(family), OOF_DIR)
    run.log_dict(strict(done.report), "cv.json")
    run.set_tags(bag.tags())
    for figure in next(fitted_models(bag)).write_figures(inputs.training, layout.plots(family)):
        run.log_artifact(figure, "plots")
    example = inputs.originals.read([0])
    return register(run, layout.model(family), bag, example, done.pooled, site_regex=site_regex)


def train(
    stage: str, family: str, section: TrainSection, paths: Paths, cfg: CV, site_regex: str | None
) -> CrossValidated:
    """The ``stage`` of ``family``: cross-validate it, then record it everywhere."""
    layout = Layout(paths)
    check_replaceable(layout.model(family))
    inputs = Inputs.of(layout)
    family_class(family).from_params(section, inputs.preprocessing)  # fails before Ray
    training, originals = inputs.training, inputs.originals
    logged = {
        f"{TRAIN_PREFIX}{family}": section.logged(),
        "cv": cfg.model_dump(),
        "data": {"train": training.params, "cv": originals.params},
    }
    with stage_run(stage, logged, originals.data_kind) as run:
        run.log_dataset(training, "training")
        run.log_dataset(originals, "cv")
        done = cross_validate(family, section, layout, inputs, cfg, site_regex, run)
        version = record(done, layout, inputs, run, site_regex)
        log.info("%s: registered version %s (run %s)", stage, version, run.run_id)
    return done


def run(params: Params, family: str) -> str:
    """The ``train@<family>`` stage; returns its summary: the pooled out-of-fold scores."""
    if family not in FAMILIES:
        raise UsageError(f"stages/train.py FAMILY: {family!r} is none of {', '.join(FAMILIES)}")
    section = family_section(params, family)
    site_regex = params.need("prepare").site_regex
    report = train(
        stage_name(family), family, section, params.need("paths"), params.need("cv"), site_regex
    ).report
    oof = report["oof"]
    shown = ", ".join(
        f"{k} {oof[k]['value']:.3f} [{oof[k]['ci_low']:.3f}, {oof[k]['ci_high']:.3f}]"
        for k in ("balanced_accuracy", "roc_auc")
    )
    tags = ", ".join(f"{k} {report[k]}" for k in ("weights", "stain") if k in report)
    counts = f"{oof['images']} images, {oof['slides']} slides"
    return f"{stage_name(family)} out-of-fold ({counts}): {shown}" + (f"; {tags}" if tags else "")
