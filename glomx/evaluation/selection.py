"""Choosing the champion on out-of-fold (OOF) predictions of the non-test slides.

The rule was fixed before anybody saw its outcome, and is not to be tuned afterwards:

1. Rank the families by pooled OOF balanced accuracy, ROC-AUC breaking ties.
2. For the best family against each other one, take the 95 % interval of the difference in
   OOF balanced accuracy from a *paired* slide bootstrap: the same resampled slides for both,
   so what the two families share (hard slides, easy slides) cancels out.
3. Families whose interval contains 0 are tied with the best (so is one whose interval is
   undefined: fewer slides than a bootstrap needs cannot separate anything).
4. No tie: the best family is the candidate. Otherwise the candidate is ``ensemble``, the
   equal-weight mean of the tied families' probabilities (the best included) at threshold 0.5;
   its OOF figures come from its members' OOF predictions.

Patches of one slide share stain and tissue, hence resampling slides, not patches.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from glomx.errors import GlomxError
from glomx.evaluation import bootstrap as b
from glomx.evaluation.metrics import classification_metrics

ENSEMBLE = "ensemble"
METRIC, TIEBREAK = "balanced_accuracy", "roc_auc"
COLUMNS = ("name", "slide", "fold", "label", "probability", "threshold")
SHOWN = ("balanced_accuracy", "roc_auc", "recall", "specificity")  # in cv.json and reports


class SelectionError(GlomxError, ValueError):
    """OOF predictions that are missing, malformed, or not of the same patches."""


@dataclass(frozen=True)
class OOF:
    """One model's out-of-fold predictions: every cross-validated patch once, in name order."""

    names: np.ndarray
    slides: np.ndarray
    folds: np.ndarray
    labels: np.ndarray
    proba: np.ndarray
    thresholds: np.ndarray  # the threshold of the fold model that scored each patch

    @classmethod
    def of(cls, rows: Sequence[tuple[str, str, int, int, float, float]]) -> OOF:
        """From ``(name, slide, fold, label, probability, threshold)`` rows, any order."""
        ordered = sorted(rows)
        columns = list(zip(*ordered, strict=True)) if ordered else [()] * len(COLUMNS)
        names = np.array(columns[0], dtype=str)
        if len(set(names.tolist())) != len(names):
            raise SelectionError("a patch has more than one out-of-fold prediction")
        return cls(
            names,
            np.array(columns[1], dtype=str),
            np.array(columns[2], dtype=np.int64),
            np.array(columns[3], dtype=np.int64),
            np.array(columns[4], dtype=np.float64),
            np.array(columns[5], dtype=np.float64),
        )

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(COLUMNS)
            for row in zip(
                self.names,
                self.slides,
                self.folds,
                self.labels,
                self.proba,
                self.thresholds,
                strict=True,
            ):
                writer.writerow(
                    [
                        row[0],
                        row[1],
                        int(row[2]),
                        int(row[3]),
                        repr(float(row[4])),
                        repr(float(row[5])),
                    ]
                )

    @classmethod
    def read(cls, path: Path) -> OOF:
        if not path.is_file():
            raise SelectionError(f"{path} not found: run that family's training stage first")
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if tuple(reader.fieldnames or ()) != COLUMNS:
                raise SelectionError(f"{path} has columns {reader.fieldnames}, expected {COLUMNS}")
            try:
                rows = [
                    (
                        r["name"],
                        r["slide"],
                        int(r["fold"]),
                        int(r["label"]),
                        float(r["probability"]),
                        float(r["threshold"]),
                    )
                    for r in reader
                ]
            except ValueError as err:
                raise SelectionError(f"{path} line {reader.line_num}: {err}") from None
        return cls.of(rows)

    def metrics(self) -> dict[str, float]:
        """Pooled metrics at each patch's own fold threshold."""
        return classification_metrics(self.labels, self.proba, self.thresholds)

    def per_fold(self) -> dict[str, dict[str, float]]:
        return {
            str(k): classification_metrics(
                self.labels[self.folds == k],
                self.proba[self.folds == k],
                self.thresholds[self.folds == k],
            )
            for k in sorted(set(self.folds.tolist()))
        }

    def intervals(self, boot: Mapping[str, Any]) -> dict[str, dict[str, float]]:
        """Pooled metrics with slide-bootstrap percentile intervals."""
        return b.bootstrap_metrics(
            self.labels,
            self.proba,
            self.slides,
            self.thresholds,
            n_resamples=boot["n_resamples"],
            confidence=boot["confidence"],
            seed=boot["seed"],
        )

    def check_same_patches(self, other: OOF, what: str) -> None:
        if not (
            np.array_equal(self.names, other.names) and np.array_equal(self.labels, other.labels)
        ):
            raise SelectionError(
                f"{what} did not predict the same patches with the same labels; rerun the "
                "training stages on the current prepare output (`dvc repro`)"
            )


def mean_of(oofs: Mapping[str, OOF], members: Sequence[str]) -> OOF:
    """The ensemble's OOF predictions: the members' mean probability, at threshold 0.5."""
    first = oofs[members[0]]
    for name in members[1:]:
        first.check_same_patches(oofs[name], f"{members[0]} and {name}")
    proba = np.mean([oofs[n].proba for n in members], axis=0)
    return OOF(
        first.names, first.slides, first.folds, first.labels, proba, np.full(len(proba), 0.5)
    )


def paired_difference(
    a: OOF, other: OOF, boot: Mapping[str, Any], metric: str = METRIC
) -> dict[str, float]:
    """``metric(a) - metric(other)`` with its paired slide-bootstrap percentile interval:
    both are scored on the same resampled slides in each replicate."""
    a.check_same_patches(other, "the two families")
    sums = [b.slide_sums(o.labels, o.proba, o.slides, o.thresholds, 10) for o in (a, other)]
    point = b.point_metrics(sums[0])[metric] - b.point_metrics(sums[1])[metric]
    n = sums[0].n_slides
    if n < b.MIN_SLIDES:
        return {"value": point, "ci_low": float("nan"), "ci_high": float("nan")}
    weights = b.replicate_weights(n, boot["n_resamples"], boot["seed"]).astype(np.float64)
    values = [b.replicate_metrics(s, weights)[metric] for s in sums]
    diff = values[0] - values[1]
    diff = diff[~np.isnan(diff)]
    tail = (1 - boot["confidence"]) / 2 * 100
    low, high = np.percentile(diff, [tail, 100 - tail]) if len(diff) else (np.nan, np.nan)
    return {"value": float(point), "ci_low": float(low), "ci_high": float(high)}


@dataclass(frozen=True)
class Selection:
    """The rule's outcome: the ranking, the intervals, the ties and the candidate."""

    ranking: list[dict[str, Any]]  # best first: family and its pooled metrics with intervals
    differences: dict[str, dict[str, Any]]  # other family -> best minus it, with interval, tied
    tied: list[str]  # the best family and every family tied with it, in rank order
    candidate: str  # a family, or ENSEMBLE
    reason: str
    intervals: dict[str, dict[str, dict[str, float]]]  # family -> every pooled metric, interval
    ensemble: dict[str, Any] = field(default_factory=dict)  # its OOF metrics, when candidate
    ensemble_oof: OOF | None = None  # its OOF predictions, when candidate

    def as_dict(self) -> dict[str, Any]:
        return {
            "rule": "rank by pooled OOF balanced accuracy (ROC-AUC breaks ties); families whose "
            "paired slide-bootstrap 95 % interval of the difference to the best contains 0 are "
            "tied; a tie makes the candidate the equal-weight mean of the tied families",
            "ranking": self.ranking,
            "differences": self.differences,
            "tied": self.tied,
            "candidate": self.candidate,
            "reason": self.reason,
            ENSEMBLE: self.ensemble,
        }


def _score(values: Mapping[str, float], name: str) -> float:
    value = values.get(name, float("nan"))
    return -np.inf if np.isnan(value) else value


def select(oofs: Mapping[str, OOF], boot: Mapping[str, Any]) -> Selection:
    """Apply the rule (module docstring) to every family's OOF predictions."""
    if not oofs:
        raise SelectionError("no family's out-of-fold predictions to choose from")
    pooled = {f: o.metrics() for f, o in oofs.items()}
    order = sorted(
        oofs, key=lambda f: (_score(pooled[f], METRIC), _score(pooled[f], TIEBREAK)), reverse=True
    )
    intervals = {f: oofs[f].intervals(boot) for f in order}
    ranking = [{"family": f, **{k: intervals[f][k] for k in SHOWN}} for f in order]
    best = order[0]
    differences: dict[str, dict[str, Any]] = {}
    for other in order[1:]:
        d = paired_difference(oofs[best], oofs[other], boot)
        inside = bool(np.isnan(d["ci_low"]) or d["ci_low"] <= 0 <= d["ci_high"])
        differences[other] = {**d, "tied": inside}
    tied = [best, *(f for f in order[1:] if differences[f]["tied"])]
    conf = f"{boot['confidence']:.0%}"
    if len(tied) == 1:
        reason = (
            f"{best} has the best out-of-fold balanced accuracy "
            f"({pooled[best][METRIC]:.4f}) and the {conf} paired slide-bootstrap interval of its "
            "lead excludes 0 against every other family, so it is the candidate."
        )
        return Selection(ranking, differences, tied, best, reason, intervals)
    ensemble = mean_of(oofs, tied)
    reason = (
        f"{best} has the best out-of-fold balanced accuracy ({pooled[best][METRIC]:.4f}), but "
        f"the {conf} paired slide-bootstrap interval of its lead contains 0 against "
        f"{', '.join(tied[1:])}: the data cannot tell them apart, so the candidate is "
        f"{ENSEMBLE}, the equal-weight mean of {', '.join(tied)} (threshold 0.5)."
    )
    summary = {k: v for k, v in ensemble.intervals(boot).items() if k in SHOWN}
    return Selection(
        ranking,
        differences,
        tied,
        ENSEMBLE,
        reason,
        intervals,
        {"members": tied, **summary},
        ensemble,
    )
