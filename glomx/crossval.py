"""Slide-grouped cross-validation of one model family, one Ray task per fold.

Prepare divides the non-test slides into K folds (``split.csv``). For fold k, a trial:

1. trains on the (augmented, balanced) training rows of every *other* fold's slides, except a
   few inner-validation slides (:func:`glomx.data.split.inner_validation`, about
   ``cv.inner_val`` of them) on which the family makes its fit-time choices: best epoch and
   early stopping, C, the threshold when ``threshold.tune`` is on; with ``cv.restyle`` on, a
   share of those training rows is first moved onto stain styles drawn from the spread of its
   own training slides (RandStainNA-style; :func:`training_subset`);
2. scores fold k's *original* patches once: its out-of-fold (OOF) predictions.

:func:`fold_indices` is where that separation is decided, so that is what the leak test
checks: no row of a held-out slide (original or augmented copy) reaches a fold's training or
inner-validation data, and held-out scoring reads originals only.

Trials are Ray tasks with declared CPUs (and GPUs where the cluster has them): a local Ray
instance sized to the machine by default, the cluster at ``RAY_ADDRESS`` when set (its workers
must see the same data paths, e.g. on a shared file system, and have glomx installed). Each
trial logs a run nested under its stage's run and returns its fitted model as bytes, so
nothing but the data needs to be shared.
"""

from __future__ import annotations

import logging
import resource
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from glomx.artifacts.model_folder import archive
from glomx.config import CV, Restyle, TrainSection
from glomx.data.classes import class_weights
from glomx.data.images import Preprocessing
from glomx.data.split import inner_validation
from glomx.data.stain import StyleDistribution, fit_sample
from glomx.data.store import ArrayStore, write_subset
from glomx.errors import GlomxError
from glomx.evaluation import metrics as m
from glomx.evaluation.selection import OOF
from glomx.models import family_class
from glomx.models.base import Classifier
from glomx.progress import Progress, duration
from glomx.ray_session import ray_session
from glomx.tracking.runs import RunRef, nested_run

log = logging.getLogger(__name__)


class CVError(GlomxError, RuntimeError):
    """A fold's trial failed, or the folds cannot be built from the data."""


@dataclass(frozen=True)
class Trial:
    """Everything a fold's trial needs, as plain picklable values."""

    family: str
    fold: int
    section: TrainSection  # the family's params section (``model:``, ``fit:``, ...)
    preprocessing: Preprocessing
    balanced: str  # absolute path of the training store (augmented, balanced)
    originals: str  # absolute path of prepared/train: original patches of every CV slide
    folds: dict[str, int]  # slide -> fold
    inner: tuple[str, ...]  # this fold's inner-validation slides
    parent: RunRef
    restyle: Restyle  # cv.restyle
    seed: int  # cv.seed


@dataclass(frozen=True)
class FoldResult:
    """A trial's out-of-fold predictions and fitted model."""

    fold: int
    names: list[str]
    slides: list[str]
    labels: np.ndarray
    proba: np.ndarray
    threshold: float
    inner: list[str]
    model: bytes  # the saved model folder as a tar archive
    seconds: float
    peak_rss_mib: float


def fold_indices(
    training: ArrayStore, originals: ArrayStore, folds: dict[str, int], fold: int, inner: set[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows of fold ``fold``'s (training store, inner validation, held-out) data.

    Training: rows of ``training`` from other folds' slides outside ``inner``. Inner
    validation and held-out: rows of ``originals`` (never augmented) from the ``inner``
    slides and from ``fold``'s slides. A training row whose slide has no fold (e.g. a SMOTE
    image mixing two slides) could carry a held-out slide, so it is refused."""
    unknown = sorted({s for s in training.slides if s not in folds})
    if unknown:
        raise CVError(
            f"{training.path} has rows of slide(s) {unknown[:5]} that belong to no fold (SMOTE "
            "mixes images of different slides, so it could leak a held-out slide into training); "
            "use balance.strategy none, oversample or undersample"
        )
    if held_inner := sorted(s for s in inner if folds.get(s) == fold):
        raise CVError(f"inner-validation slide(s) {held_inner} belong to held-out fold {fold}")
    train = [i for i, s in enumerate(training.slides) if folds[s] != fold and s not in inner]
    val = [i for i, s in enumerate(originals.slides) if s in inner]
    held = [i for i, s in enumerate(originals.slides) if folds.get(s) == fold]
    return np.array(train, dtype=np.int64), np.array(val, np.int64), np.array(held, np.int64)


def inner_slides(
    originals: ArrayStore, folds: dict[str, int], fold: int, cfg: CV, site_regex: str | None
) -> set[str]:
    """Fold ``fold``'s inner-validation slides, drawn from the other folds' original rows."""
    rows = [
        (s, int(y))
        for s, y in zip(originals.slides, originals.labels, strict=True)
        if s in folds and folds[s] != fold
    ]
    return inner_validation(
        [s for s, _ in rows], [y for _, y in rows], cfg.inner_val, cfg.seed + fold, site_regex
    )


def fold_trials(
    family: str,
    section: TrainSection,
    preprocessing: Preprocessing,
    training: ArrayStore,
    originals: ArrayStore,
    folds: dict[str, int],
    cfg: CV,
    site_regex: str | None,
    parent: RunRef,
) -> list[Trial]:
    """One trial of ``family`` per fold of ``folds`` (slide → fold: prepare's folds for a
    training stage, the hospitals for ``bench/calibrate.py``), nested under ``parent``."""
    return [
        Trial(
            family,
            fold,
            section,
            preprocessing,
            str(training.path.resolve()),
            str(originals.path.resolve()),
            folds,
            tuple(sorted(inner_slides(originals, folds, fold, cfg, site_regex))),
            parent,
            cfg.restyle,
            cfg.seed,
        )
        for fold in sorted(set(folds.values()))
    ]


def out_of_fold(results: Sequence[FoldResult]) -> OOF:
    """Every trial's held-out predictions as one table: the out-of-fold predictions."""
    return OOF.of(
        [
            (n, s, r.fold, int(y), float(p), r.threshold)
            for r in results
            for n, s, y, p in zip(r.names, r.slides, r.labels, r.proba, strict=True)
        ]
    )


def training_subset(
    trial: Trial, training: ArrayStore, originals: ArrayStore, rows: np.ndarray, path: Path
) -> ArrayStore:
    """The fold's training ``rows`` of ``training`` as a store at ``path``; with ``cv.restyle``
    on, a share of them moved onto stain styles drawn from the spread of this trial's own
    training originals, so no held-out or inner-validation slide lends its colours."""
    cfg = trial.restyle
    if not cfg.enabled:
        return write_subset(training, rows, path)
    start = time.perf_counter()
    own = np.array(
        [
            i
            for i, s in enumerate(originals.slides)
            if s in trial.folds and trial.folds[s] != trial.fold and s not in trial.inner
        ]
    )
    style = StyleDistribution.fit(originals.read(own[fit_sample(len(own))]))
    recorded = {"restyle": asdict(style) | cfg.model_dump()}
    restyle = style.restyler(cfg.probability, cfg.spread, (trial.seed, trial.fold))
    out = write_subset(training, rows, path, recorded, transform=restyle)
    log.info("restyled %d training images in %.1f s", len(out), time.perf_counter() - start)
    return out


def threshold(section: TrainSection, classifier: Classifier, val: ArrayStore) -> float:
    """0.5, or with ``threshold.tune`` the one maximising ``threshold.metric`` on ``val`` (the
    fold's inner-validation slides; only then are they scored)."""
    if not section.threshold.tune:
        return 0.5
    proba = classifier.predict_store(val)
    return m.choose_threshold(val.labels, proba, section.threshold.metric)


def fold_weights(section: TrainSection, labels: np.ndarray) -> dict[int, float] | None:
    """``class_weight: balanced`` → scikit-learn's balanced weights of the fold's own labels."""
    if section.class_weight == "none":
        return None
    return {int(k): v for k, v in class_weights(labels).items()}


def run_trial(trial: Trial) -> FoldResult:
    """Fit the family on one fold and score its held-out slides (runs in a Ray worker)."""
    start = time.perf_counter()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    name = f"{trial.family} fold {trial.fold}"
    with tempfile.TemporaryDirectory(prefix=f"glomx-{trial.family}-fold{trial.fold}-") as tmp:
        training, originals = ArrayStore(trial.balanced), ArrayStore(trial.originals)
        rows = fold_indices(training, originals, trial.folds, trial.fold, set(trial.inner))
        train = training_subset(trial, training, originals, rows[0], Path(tmp) / "train")
        val = write_subset(originals, rows[1], Path(tmp) / "inner_val")
        held = write_subset(originals, rows[2], Path(tmp) / "heldout")
        heldout_slides = sorted(set(held.slides))
        tags = {
            "glomx.family": trial.family,
            "cv.fold": str(trial.fold),
            "cv.heldout_slides": ",".join(heldout_slides),
            "cv.inner_val_slides": ",".join(trial.inner),
        }
        classifier: Classifier = family_class(trial.family).from_params(
            trial.section, trial.preprocessing
        )
        with nested_run(trial.parent, name, tags) as run:
            sizes = {
                "train_images": len(train),
                "inner_val_images": len(val),
                "heldout_images": len(held),
            }
            run.log_params({"cv.fold": trial.fold, **{f"cv.{k}": v for k, v in sizes.items()}})
            run.log_dataset(train, "training")
            run.log_dataset(val, "inner_validation")
            run.log_dataset(held, "heldout")
            log.info(
                "%s: training on %d images, choosing on %d, scoring %d (%s)",
                name,
                len(train),
                len(val),
                len(held),
                ", ".join(heldout_slides),
            )
            fitting = time.perf_counter()
            classifier.fit_stain(trial.section.stain, train)
            classifier.fit(train, val, fold_weights(trial.section, train.labels), run.log_epoch)
            classifier.set_threshold(threshold(trial.section, classifier, val))
            scoring = time.perf_counter()
            log.info(
                "%s: fitted in %s; scoring its held-out slides", name, duration(scoring - fitting)
            )
            proba = classifier.predict_store(held)
            log.info(
                "%s: %d held-out images scored in %.1f s",
                name,
                len(held),
                time.perf_counter() - scoring,
            )
            scores = m.classification_metrics(held.labels, proba, classifier.meta.threshold)
            run.log_metrics({f"oof_{k}": v for k, v in m.finite(scores).items()})
            run.set_tags(classifier.tags())
            classifier.save(Path(tmp) / "model")
            model = archive(Path(tmp) / "model")
    return FoldResult(
        fold=trial.fold,
        names=list(held.names),
        slides=list(held.slides),
        labels=held.labels.astype(np.int64),
        proba=np.asarray(proba, dtype=np.float64),
        threshold=float(classifier.meta.threshold),
        inner=list(trial.inner),
        model=model,
        seconds=time.perf_counter() - start,
        peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    )


def _reason(err: Exception) -> str:
    """What went wrong in a trial, without Ray's wrapping."""
    cause = getattr(err, "cause", None)
    if isinstance(cause, GlomxError | ValueError | FileNotFoundError):
        return str(cause)
    if cause is not None:
        return f"{type(cause).__name__}: {cause}"
    return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}".strip()


def _resources(ray: Any, cfg: CV) -> dict[str, float]:
    """The CPUs and GPUs one trial asks for, within what the cluster has (asking for more
    than any node has would leave the trials pending forever)."""
    total = ray.cluster_resources()
    cpus = min(float(cfg.cpus_per_trial), total.get("CPU", 1.0))
    gpus = cfg.gpus_per_trial
    if gpus == "auto":
        gpus = 1.0 if total.get("GPU", 0.0) >= 1 else 0.0
    return {"num_cpus": cpus, "num_gpus": float(gpus)}


def run_trials(
    trials: Sequence[Trial], cfg: CV, what: str = "cross-validation"
) -> list[FoldResult]:
    """Every trial as a Ray task; results in fold order. The first failure cancels the rest
    and raises ``<family> fold <k>: <reason>``. Progress (``what``: folds done of all, the
    time elapsed) is shown as each trial ends, and every 30 s while none does; the trials
    log their own steps (Ray forwards them)."""
    with ray_session() as ray, Progress(what, len(trials), "folds", rate=False) as bar:
        resources = _resources(ray, cfg)
        task = ray.remote(max_calls=1, max_retries=0, **resources)(run_trial)
        log.info("cross-validation: %d trials on Ray, %s each", len(trials), resources)
        fold_of = {task.remote(t): t for t in trials}
        pending, results = list(fold_of), []
        while pending:
            # a timeout, so that SIGTERM's handler gets to run while the trials do
            done, pending = ray.wait(pending, num_returns=1, timeout=1.0)
            if not done:
                bar.update(0)  # still training: a line when one is due
                continue
            try:
                results.append(ray.get(done[0]))
            except Exception as err:  # a Ray error wrapping the trial's
                for ref in pending:
                    ray.cancel(ref, force=True)
                failed = fold_of[done[0]]
                raise CVError(f"{failed.family} fold {failed.fold}: {_reason(err)}") from None
            r = results[-1]
            took = f"fold {r.fold} done in {duration(r.seconds)}"
            bar.update(1, note=f"{took}, peak RSS {r.peak_rss_mib:.0f} MiB")
    return sorted(results, key=lambda r: r.fold)
