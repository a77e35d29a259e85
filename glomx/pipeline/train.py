"""The one training-stage flow, shared by every ``train-<family>`` stage.

:func:`run_training` cross-validates the family over prepare's slide-grouped folds
(:mod:`glomx.pipeline.cv`, one Ray task per fold), then:

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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from glomx.config import CV, Params, Paths, TrainSection
from glomx.data.images import Preprocessing
from glomx.data.split import read_split_csv, slide_folds
from glomx.data.store import ArrayStore
from glomx.errors import GlomxError, UsageError
from glomx.evaluation import metrics as m
from glomx.evaluation.report import strict
from glomx.evaluation.selection import OOF, SHOWN
from glomx.files import discard, put_in_place, temporary_sibling, write_json
from glomx.models import FAMILIES, family_class, family_section, load_classifier
from glomx.models.base import META_FILE, Predictor
from glomx.models.mean import CVRecord, MeanModel, fitted_models
from glomx.pipeline.cv import FoldResult, finite, fold_trials, out_of_fold, run_trials, unpack
from glomx.tracking import StageRun, stage_run
from glomx.tracking.registry import register

log = logging.getLogger(__name__)
SPLIT_FILE = "split.csv"


def prepared_preprocessing(paths: Paths) -> Preprocessing:
    """The image homogenisation the prepare stage recorded in the cross-validation store."""
    store = ArrayStore(Path(paths.prepared) / "train")
    image = store.params.get("image", {})
    try:
        return Preprocessing(*(image[k] for k in ("size", "channels", "method", "fill")))
    except KeyError as err:
        raise ValueError(
            f"{store.path}/manifest.json lacks params.image.{err.args[0]}; "
            "rerun `dvc repro prepare`"
        ) from None


class ForeignFolderError(GlomxError, FileExistsError):
    """The model folder holds something that is not a glomx model, which saving would lose."""


def check_replaceable(directory: Path) -> None:
    """Refuse a ``directory`` that a model must not replace: one that exists and is neither
    empty nor a glomx model (nor a partial one, which holds a member's meta). Checked at the
    stage's door, before any fold trains, and again just before the swap."""
    if directory.is_file() or (
        directory.is_dir() and any(directory.iterdir()) and not any(directory.rglob(META_FILE))
    ):
        raise ForeignFolderError(
            f"{directory} exists and is not a glomx model; move it away (the model is saved there)"
        )


def replace_model(build: Path, directory: Path) -> None:
    """Swap the finished model folder ``build`` (a sibling) into ``directory``, replacing a
    previous model there (or a partial folder an interrupted run left), but nothing else."""
    check_replaceable(directory)
    put_in_place(build, directory)


@contextmanager
def model_folder(directory: Path) -> Iterator[Path]:
    """A temporary sibling of ``directory`` to build a model folder in: it replaces
    ``directory`` when the block completes, and is removed whatever happens."""
    build = temporary_sibling(directory, directory=True)
    try:
        yield build
        replace_model(build, directory)
    finally:
        discard(build)


def build_bag(
    family: str, results: list[FoldResult], preprocessing: Preprocessing, directory: Path
) -> MeanModel:
    """The bag of the fold models, saved into ``directory``."""
    with model_folder(directory) as build:
        members: dict[str, Predictor] = {}
        for r in results:
            unpack(r.model, build / f"fold-{r.fold}")
            members[f"fold-{r.fold}"] = load_classifier(build / f"fold-{r.fold}")
        threshold = float(np.mean([r.threshold for r in results]))
        cv = CVRecord(
            folds=len(results),
            heldout_slides={str(r.fold): sorted(set(r.slides)) for r in results},
        )
        bag = MeanModel.of(family, members, preprocessing, threshold, cv)
        bag.save_meta(build)  # the members are already saved, as the trials wrote them
    return bag


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


def run_training(
    stage: str, family: str, section: TrainSection, paths: Paths, cfg: CV, site_regex: str | None
) -> dict[str, Any]:
    """Cross-validate ``family`` for ``stage`` and record it everywhere; returns the CV report
    (what ``metrics/<family>.json`` holds)."""
    check_replaceable(Path(paths.models) / family)
    prepared = Path(paths.prepared)
    originals = ArrayStore(prepared / "train")
    training = ArrayStore(paths.balanced)
    folds = slide_folds(read_split_csv(prepared / SPLIT_FILE))
    preprocessing = prepared_preprocessing(paths)
    family_class(family).from_params(section.model_dump(), preprocessing)  # fails before Ray
    kind = originals.data_kind
    logged = {
        stage.replace("-", "_"): section.model_dump(),
        "cv": cfg.model_dump(),
        "data": {"train": training.params, "cv": originals.params},
    }
    with stage_run(stage, logged, kind) as run:
        run.log_dataset(training, "training")
        run.log_dataset(originals, "cv")
        trials = fold_trials(
            family,
            section,
            preprocessing,
            training,
            originals,
            folds,
            cfg,
            site_regex,
            run.ref(),
        )
        log.info("%s: %d-fold cross-validation of %s (%s data)", stage, len(trials), family, kind)
        results = run_trials(trials, cfg)
        oof = out_of_fold(results)
        oof.write(Path(paths.cv) / f"{family}.csv")
        bag = build_bag(family, results, preprocessing, Path(paths.models) / family)
        report = cv_report(oof, results, cfg.bootstrap.model_dump())
        facts = {
            "threshold": bag.meta.threshold,
            "data_kind": kind,
            "class_weight": section.class_weight,
            **bag.tags(),
        }
        report = {**report, **facts}
        write_json(Path(paths.metrics) / f"{family}.json", strict(report))
        m.write_plot_data(Path(paths.plots) / family, oof.labels, oof.proba, oof.thresholds)

        pooled = {f"cv_{k}": v for k, v in finite(oof.metrics()).items()}
        run.log_selected({**pooled, "threshold": bag.meta.threshold})
        _log_oof(run, bag, oof)
        run.log_artifact(Path(paths.cv) / f"{family}.csv", "cv")
        run.log_dict(strict(report), "cv.json")
        run.set_tags(bag.tags())
        for figure in next(fitted_models(bag)).write_figures(training, Path(paths.plots) / family):
            run.log_artifact(figure, "plots")
        version = register(
            run,
            Path(paths.models) / family,
            bag,
            originals.read([0]),
            pooled,
            site_regex=site_regex,
        )
        log.info("%s: registered version %s (run %s)", stage, version, run.run_id)
    return report


def run(params: Params, family: str) -> str:
    """The ``train-<family>`` stage; returns its summary: the pooled out-of-fold scores."""
    if family not in FAMILIES:
        raise UsageError(f"stages/train.py FAMILY: {family!r} is none of {', '.join(FAMILIES)}")
    section = family_section(params, family)
    site_regex = params.need("prepare").site_regex
    report = run_training(
        f"train-{family}", family, section, params.need("paths"), params.need("cv"), site_regex
    )
    oof = report["oof"]
    shown = ", ".join(
        f"{k} {oof[k]['value']:.3f} [{oof[k]['ci_low']:.3f}, {oof[k]['ci_high']:.3f}]"
        for k in ("balanced_accuracy", "roc_auc")
    )
    tags = ", ".join(f"{k} {report[k]}" for k in ("weights", "stain") if k in report)
    return (
        f"train-{family} out-of-fold ({oof['images']} images, {oof['slides']} slides): {shown}"
        + (f"; {tags}" if tags else "")
    )
