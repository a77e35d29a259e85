"""Binary classification metrics, threshold choice, DVC plot data and matplotlib figures.

Counts-based metrics are computed from the confusion matrix directly, so a metric that is
undefined for the data at hand (recall without positives, precision without predicted
positives, AUCs with one class) is ``NaN`` instead of a crash or a silent 0.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import (
    average_precision_score,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

METRICS = (
    "accuracy",
    "balanced_accuracy",
    "precision",
    "recall",
    "specificity",
    "f1",
    "roc_auc",
    "pr_auc",
)
THRESHOLD_METRICS = METRICS[:6]  # the ones that depend on the threshold
CLASS_NAMES = {0: "non-sclerotic", 1: "sclerotic"}  # labels as figures name them

Curves = Mapping[str, tuple[np.ndarray, np.ndarray]]
Counts = (
    np.ndarray | float
)  # confusion counts (or sums of them): one threshold, or one per candidate


def _ratio(num: Counts, den: Counts) -> np.ndarray:
    """``num / den`` elementwise, NaN where ``den`` is 0."""
    num, den = np.asarray(num, float), np.asarray(den, float)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _from_counts(tp: Counts, fp: Counts, tn: Counts, fn: Counts) -> dict:
    """Threshold-dependent metrics from confusion counts (scalars or arrays of thresholds)."""
    recall = _ratio(tp, tp + fn)
    specificity = _ratio(tn, tn + fp)
    return {
        "accuracy": _ratio(tp + tn, tp + fp + tn + fn),
        "balanced_accuracy": (recall + specificity) / 2,
        "precision": _ratio(tp, tp + fp),
        "recall": recall,
        "specificity": specificity,
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
    }


def _check(y_true: np.ndarray, proba: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).astype(np.int64).ravel()
    p = np.asarray(proba, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"{len(y)} labels but {len(p)} probabilities")
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"labels must be 0 or 1, got {sorted(set(y.tolist()))}")
    return y, p


def _both_classes(y: np.ndarray) -> bool:
    return bool(y.any() and not y.all())


def confusion_counts(y_true: np.ndarray, pred: np.ndarray) -> dict[str, int]:
    """``{"tn", "fp", "fn", "tp"}`` for hard 0/1 predictions."""
    y, p = _check(y_true, pred)
    p = p.astype(np.int64)
    return {
        "tn": int(((y == 0) & (p == 0)).sum()),
        "fp": int(((y == 0) & (p == 1)).sum()),
        "fn": int(((y == 1) & (p == 0)).sum()),
        "tp": int(((y == 1) & (p == 1)).sum()),
    }


def classification_metrics(
    y_true: np.ndarray, proba: np.ndarray, threshold: float | np.ndarray = 0.5
) -> dict[str, float]:
    """Accuracy, balanced accuracy, precision, recall, specificity, F1 at ``threshold``
    (positive when ``proba >= threshold``; one per image for pooled out-of-fold predictions),
    plus ROC AUC and PR AUC (average precision)."""
    y, p = _check(y_true, proba)
    c = confusion_counts(y, (p >= threshold).astype(np.int64))
    out = {k: float(v) for k, v in _from_counts(c["tp"], c["fp"], c["tn"], c["fn"]).items()}
    both = _both_classes(y)
    out["roc_auc"] = float(roc_auc_score(y, p)) if both else math.nan
    out["pr_auc"] = float(average_precision_score(y, p)) if both else math.nan
    return out


def finite(values: Mapping[str, float]) -> dict[str, float]:
    """``values`` without the NaN ones (a metric undefined on one class), which MLflow and
    strict JSON cannot hold."""
    return {k: v for k, v in values.items() if not (isinstance(v, float) and math.isnan(v))}


def choose_threshold(
    y_true: np.ndarray,
    proba: np.ndarray,
    metric: str = "balanced_accuracy",
    ties: str = "nearest",
) -> float:
    """The threshold maximising ``metric`` on (validation) data.

    Candidates are midpoints between consecutive distinct probabilities, so the choice does not
    sit exactly on a validation score. With ``ties="nearest"`` ties go to the candidate closest
    to 0.5; with ``ties="interval"`` adjacent tied candidates form one interval of equally good
    thresholds and the choice is its midpoint (the interval nearest 0.5 when several), the
    choice least sensitive to where the few scores of a small calibration set happened to fall.
    """
    if ties not in ("nearest", "interval"):
        raise ValueError(f"ties must be 'nearest' or 'interval', got {ties!r}")
    if metric not in THRESHOLD_METRICS:
        raise ValueError(
            f"cannot tune the threshold for {metric!r}; use one of {THRESHOLD_METRICS}"
        )
    y, p = _check(y_true, proba)
    if not _both_classes(y):
        raise ValueError("choosing a threshold needs both classes in the validation data")
    values = np.unique(p)
    if len(values) == 1:
        return 0.5
    candidates = (values[:-1] + values[1:]) / 2
    order = np.argsort(p, kind="stable")
    # predicted positives per candidate, and the positives among the k highest scores
    k = len(p) - np.searchsorted(p[order], candidates, side="left")
    tp_at = np.concatenate([[0], np.cumsum(y[order][::-1])])
    tp = tp_at[k]
    fp = k - tp
    fn = y.sum() - tp
    tn = len(y) - k - fn
    score = np.nan_to_num(_from_counts(tp, fp, tn, fn)[metric], nan=-1.0)
    best = np.flatnonzero(np.isclose(score, score.max(), rtol=0, atol=1e-12))
    if ties == "interval":
        runs = np.split(best, np.flatnonzero(np.diff(best) > 1) + 1)
        mids = np.array([(values[run[0]] + values[run[-1] + 1]) / 2 for run in runs])
        return float(mids[np.argmin(np.abs(mids - 0.5))])
    return float(candidates[best[np.argmin(np.abs(candidates[best] - 0.5))]])


def _write_csv(path: Path, header: list[str], rows: object) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)  # type: ignore[arg-type]


def roc_points(y_true: np.ndarray, proba: np.ndarray) -> list[tuple[float, float, float]]:
    """``(fpr, tpr, threshold)`` along the ROC curve; the end point that no finite threshold
    reaches carries threshold 1.0. Empty with one class present (the curve is undefined)."""
    y, p = _check(y_true, proba)
    if not _both_classes(y):
        return []
    fpr, tpr, thr = roc_curve(y, p)
    return [(f, t, min(h, 1.0)) for f, t, h in zip(fpr, tpr, thr, strict=True)]


def write_plot_data(
    directory: str | Path, y_true: np.ndarray, proba: np.ndarray, threshold: float | np.ndarray
) -> None:
    """Write DVC plot data: ``confusion.csv`` (actual,predicted per image, for the ``confusion``
    template), ``roc.csv`` (fpr,tpr,threshold) and ``pr.csv`` (recall,precision,threshold).

    Curve end points that no finite threshold reaches carry threshold 1.0; with one class
    present the curves are undefined and their files hold only the header.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    y, p = _check(y_true, proba)
    pred = (p >= threshold).astype(np.int64)
    _write_csv(directory / "confusion.csv", ["actual", "predicted"], zip(y, pred, strict=True))
    roc_rows = roc_points(y, p)
    pr_rows: list[tuple[float, float, float]] = []
    if _both_classes(y):
        precision, recall, thr = precision_recall_curve(y, p)
        thr = np.append(thr, 1.0)
        pr_rows = list(zip(recall, precision, thr, strict=True))
    _write_csv(directory / "roc.csv", ["fpr", "tpr", "threshold"], _positional(roc_rows))
    _write_csv(directory / "pr.csv", ["recall", "precision", "threshold"], _positional(pr_rows))


def _positional(rows: list[tuple[float, float, float]]) -> list[list[str]]:
    """Values in [0, 1] with 6 significant digits and never an exponent (7.6e-06 is written
    0.0000076), so that sorting them as text, as DVC's plot data reaches its templates, is
    sorting them as numbers."""
    fmt = partial(np.format_float_positional, precision=6, fractional=False, trim="-")
    return [[fmt(v) for v in row] for row in rows]


def _figure(size: tuple[float, float] = (4.5, 4.0)) -> Figure:
    fig = Figure(figsize=size, dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _legend(ax: Axes, loc: Literal["lower right", "lower left"]) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc=loc, fontsize="small")


def confusion_figure(
    y_true: np.ndarray, pred: np.ndarray, title: str = "Confusion matrix"
) -> Figure:
    """Counts heat map, rows = actual, columns = predicted."""
    c = confusion_counts(y_true, pred)
    matrix = np.array([[c["tn"], c["fp"]], [c["fn"], c["tp"]]])
    fig = _figure()
    ax = fig.add_subplot()
    ax.imshow(matrix, cmap="Blues")
    for (i, j), v in np.ndenumerate(matrix):
        dark = v > matrix.max() / 2
        ax.text(j, i, str(v), ha="center", va="center", color="white" if dark else "black")
    ticks = [f"{k} {name}" for k, name in CLASS_NAMES.items()]
    ax.set(xticks=[0, 1], yticks=[0, 1], xlabel="predicted", ylabel="actual", title=title)
    ax.set_xticklabels(ticks)
    ax.set_yticklabels(ticks, rotation=90, va="center")
    return fig


def roc_figure(curves: Curves) -> Figure:
    """ROC curves, one per ``name: (y_true, proba)``, AUC in the legend."""
    fig = _figure()
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    for name, (y_true, proba) in curves.items():
        y, p = _check(y_true, proba)
        if _both_classes(y):
            fpr, tpr, _ = roc_curve(y, p)
            ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(y, p):.3f})")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC", xlim=(0, 1))
    _legend(ax, "lower right")
    return fig


def pr_figure(curves: Curves) -> Figure:
    """Precision-recall curves, one per ``name: (y_true, proba)``, AP in the legend."""
    fig = _figure()
    ax = fig.add_subplot()
    for name, (y_true, proba) in curves.items():
        y, p = _check(y_true, proba)
        if _both_classes(y):
            precision, recall, _ = precision_recall_curve(y, p)
            ap = average_precision_score(y, p)
            ax.step(recall, precision, where="post", label=f"{name} (AP {ap:.3f})")
    ax.set(
        xlabel="recall", ylabel="precision", title="Precision-recall", xlim=(0, 1), ylim=(0, 1.02)
    )
    _legend(ax, "lower left")
    return fig


def epoch_scores(labels: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    """Per-epoch validation scores for model selection: ``val_loss`` (binary cross-entropy),
    ``val_auc`` and ``val_balanced_accuracy`` at 0.5."""
    p = np.clip(np.asarray(proba, dtype=np.float64), 1e-7, 1 - 1e-7)
    loss = -np.mean(labels * np.log(p) + (1 - labels) * np.log1p(-p))
    m = classification_metrics(labels, proba)
    return {
        "val_loss": float(loss),
        "val_auc": m["roc_auc"],
        "val_balanced_accuracy": m["balanced_accuracy"],
    }
