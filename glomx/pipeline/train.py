"""The one training-stage flow, shared by train-lr, train-cnn and train-resnet.

:func:`run_training` reads the balanced training store and the prepared validation store
(never test), fits, picks the decision threshold, saves ``models/<family>/``, writes the DVC
metrics and plot files, and logs everything to one MLflow run that ends with a registered
model version. A stage's params section may hold, besides its model's own keys::

    class_weight: none        # none | balanced: weight classes by <balanced>/class_weights.json
    threshold:
      tune: false             # true: the threshold maximising `metric` on validation
      metric: balanced_accuracy
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from glomx.data.store import ArrayStore
from glomx.evaluation import metrics as m
from glomx.models import family_class
from glomx.models.base import META_FILE, Classifier, Preprocessing
from glomx.params import load_params
from glomx.tracking import StageRun, stage_run

CLASS_WEIGHTS_FILE = "class_weights.json"
log = logging.getLogger(__name__)


def prepared_preprocessing(paths: dict[str, str]) -> Preprocessing:
    """The image homogenisation the prepare stage recorded in the validation store."""
    store = ArrayStore(Path(paths["prepared"]) / "val")
    image = store.params.get("image", {})
    try:
        return Preprocessing(*(image[k] for k in ("size", "channels", "method", "fill")))
    except KeyError as err:
        raise ValueError(
            f"{store.path}/manifest.json lacks params.image.{err.args[0]}; "
            "rerun `dvc repro prepare`"
        ) from None


def class_weights(params: dict[str, Any], paths: dict[str, str]) -> dict[int, float] | None:
    """``{0: w0, 1: w1}`` from the balance stage when ``params.class_weight`` is ``balanced``."""
    mode = params.get("class_weight", "none")
    if mode in (None, "none"):
        return None
    path = Path(paths["balanced"]) / CLASS_WEIGHTS_FILE
    if mode != "balanced":
        raise ValueError(f"class_weight must be none or balanced, got {mode!r}")
    try:
        raw = json.loads(path.read_text())
        return {int(k): float(raw[k]) for k in ("0", "1")}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(
            f"{path}: cannot read class weights {{'0': w0, '1': w1}} ({err}); "
            "rerun `dvc repro balance`"
        ) from None


def _threshold(params: dict[str, Any], labels: np.ndarray, proba: np.ndarray) -> float:
    spec = params.get("threshold") or {}
    if not spec.get("tune", False):
        return 0.5
    return m.choose_threshold(labels, proba, spec.get("metric", "balanced_accuracy"))


def _save(classifier: Classifier, directory: Path) -> None:
    """Save into ``directory``, replacing a previous model there but nothing else."""
    if directory.is_dir() and any(directory.iterdir()):
        if not (directory / META_FILE).is_file():
            raise FileExistsError(f"{directory} exists and is not a glomx model; move it away")
        shutil.rmtree(directory)
    classifier.save(directory)


def _finite(values: dict[str, float]) -> dict[str, float | None]:
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in values.items()}


def _log_evaluation(
    run: StageRun, classifier: Classifier, labels: np.ndarray, proba: np.ndarray
) -> None:
    """Summary text, confusion matrix (PNG + JSON), ROC and PR figures."""
    pred = (proba >= classifier.meta.threshold).astype(np.uint8)
    run.log_text(classifier.summary(), "model/summary.txt")
    run.log_dict(
        {"threshold": classifier.meta.threshold, **m.confusion_counts(labels, pred)},
        "plots/confusion.json",
    )
    family = classifier.meta.family
    for fig, name in (
        (m.confusion_figure(labels, pred, f"{family}: validation"), "confusion"),
        (m.roc_figure({family: (labels, proba)}), "roc"),
        (m.pr_figure({family: (labels, proba)}), "pr"),
    ):
        run.log_figure(fig, f"plots/{name}.png")


def run_training(
    stage: str,
    classifier: Classifier,
    params: dict[str, Any],
    paths: dict[str, str],
    class_weight: dict[int, float] | None = None,
) -> dict[str, float]:
    """Fit ``classifier`` for ``stage`` and record it everywhere; returns validation metrics.

    ``params`` is the stage's params section; ``class_weight`` overrides its ``class_weight``.
    """
    train = ArrayStore(paths["balanced"])
    val = ArrayStore(Path(paths["prepared"]) / "val")
    if classifier.meta.preprocessing != prepared_preprocessing(paths):
        raise ValueError(
            f"{stage}: the model's preprocessing {classifier.meta.preprocessing} differs from "
            f"the prepared data's; build it with glomx.pipeline.train.prepared_preprocessing(paths)"
        )
    family = classifier.meta.family
    kind = val.data_kind
    weights = class_weight if class_weight is not None else class_weights(params, paths)
    logged = {stage.replace("-", "_"): params, "data": {"train": train.params, "val": val.params}}
    with stage_run(stage, logged, kind) as run:
        run.log_dataset(train, "training")
        run.log_dataset(val, "validation")
        log.info("%s: fitting %s on %d images (%s data)", stage, family, len(train), kind)
        classifier.fit_stain(params.get("stain", "none"), train)
        live = classifier.live_history
        history = classifier.fit(train, val, weights, [run.keras_callback()] if live else None)
        if not live:
            run.log_history(history)

        proba = classifier.predict_store(val)
        classifier.meta.threshold = _threshold(params, val.labels, proba)
        classifier.meta.extra["class_weight"] = weights
        model_dir = Path(paths["models"]) / family
        _save(classifier, model_dir)
        scores = m.classification_metrics(val.labels, proba, classifier.meta.threshold)
        report = {
            **_finite(scores),
            "threshold": classifier.meta.threshold,
            "images": len(val),
            "data_kind": kind,
            "class_weight": "balanced" if weights else "none",
            **classifier.tags(),
        }
        metrics_file = Path(paths["metrics"]) / f"{family}.json"
        metrics_file.parent.mkdir(parents=True, exist_ok=True)
        metrics_file.write_text(json.dumps(report, indent=2) + "\n")
        m.write_plot_data(Path(paths["plots"]) / family, val.labels, proba, report["threshold"])

        final = {f"val_{k}": v for k, v in scores.items()}
        run.log_selected({**final, "threshold": classifier.meta.threshold})
        _log_evaluation(run, classifier, val.labels, proba)
        run.set_tags(classifier.tags())
        for figure in classifier.write_figures(train, Path(paths["plots"]) / family):
            run.log_artifact(figure, "plots")
        version = run.log_and_register(model_dir, classifier, val.read([0]), final)
        log.info("%s: registered version %s (run %s)", stage, version, run.run_id)
    return scores


def train_stage(family: str) -> dict[str, float]:
    """The whole ``train-<family>`` DVC stage, from ``params.yaml``'s ``train_<family>`` section."""
    params = load_params()
    paths, section = params["paths"], params[f"train_{family}"]
    classifier = family_class(family).from_params(section, prepared_preprocessing(paths))
    scores = run_training(f"train-{family}", classifier, section, paths)
    facts = {**classifier.tags(), **{k: f"{v:.3f}" for k, v in scores.items()}}
    print(f"train-{family} validation:", ", ".join(f"{k} {v}" for k, v in facts.items()))
    return scores
