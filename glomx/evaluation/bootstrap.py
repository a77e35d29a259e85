"""Test metrics with percentile confidence intervals from a cluster (slide) bootstrap.

Patches of one slide share stain and tissue, so they are not independent: resampling images
would give intervals that are far too narrow. Each bootstrap replicate draws *slides* with
replacement and keeps all images of every drawn slide.

Every metric here is a function of per-slide sums (confusion counts, squared errors,
calibration-bin sums, positives and negatives per distinct score), so a replicate is just a
weighted sum of slide rows: blocks of replicates come out of one matrix product, no Python loop
over replicates. The per-score columns are about one per patch, and each patch fills one of
them in one slide's row, so the slide sums are a sparse matrix: memory stays bounded and time
linear in the number of patches (a dense one grew as patches × slides, both with the data).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse

from glomx.evaluation.metrics import _from_counts, _ratio

METRICS = (
    "accuracy",
    "balanced_accuracy",
    "recall",
    "specificity",
    "precision",
    "f1",
    "mcc",
    "roc_auc",
    "pr_auc",
    "brier",
    "ece",
)
_BLOCK = 250  # replicates per matrix product at most
_BLOCK_VALUES = 2**21  # and at most this many values per (replicates × columns) array: 16 MiB
# Fewer slides than this give no interval: resampling 2-4 clusters yields a handful of distinct
# replicates, and the "interval" is an artefact of which slides happened to be drawn.
MIN_SLIDES = 5


@dataclass(frozen=True)
class SlideSums:
    """Per-slide sums from which every metric is computed (one row per slide)."""

    sums: sparse.csr_array  # (S, K)
    n_bins: int
    n_scores: int  # distinct probabilities, ascending, in the last 2 * n_scores columns

    @property
    def n_slides(self) -> int:
        return int(self.sums.shape[0])


def slide_sums(
    y_true: np.ndarray,
    proba: np.ndarray,
    slides: np.ndarray,
    threshold: float | np.ndarray,
    n_bins: int,
) -> SlideSums:
    """Collect per-slide sums: tp, fp, tn, fn, squared error, per calibration bin
    (count, sum of p, sum of y), then positives and negatives per distinct probability."""
    y = np.asarray(y_true).astype(np.int64).ravel()
    p = np.asarray(proba, dtype=np.float64).ravel()
    if not (len(y) == len(p) == len(slides)):
        raise ValueError(f"{len(y)} labels, {len(p)} probabilities and {len(slides)} slides")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    _, slide_idx = np.unique(np.asarray(slides), return_inverse=True)
    scores, score_idx = np.unique(p, return_inverse=True)
    pred = p >= threshold
    bins = np.clip((p * n_bins).astype(np.int64), 0, n_bins - 1)
    n_scores = len(scores)
    k = 5 + 3 * n_bins + 2 * n_scores
    columns = [
        (np.zeros_like(y), (y == 1) & pred),
        (np.ones_like(y), (y == 0) & pred),
        (np.full_like(y, 2), (y == 0) & ~pred),
        (np.full_like(y, 3), (y == 1) & ~pred),
        (np.full_like(y, 4), (p - y) ** 2),
        (5 + bins, np.ones_like(p)),
        (5 + n_bins + bins, p),
        (5 + 2 * n_bins + bins, y),
        (5 + 3 * n_bins + score_idx, y),
        (5 + 3 * n_bins + n_scores + score_idx, 1 - y),
    ]
    rows = np.concatenate([slide_idx] * len(columns))
    cols = np.concatenate([col for col, _ in columns])
    values = np.concatenate([value.astype(np.float64) for _, value in columns])
    shape = (int(slide_idx.max(initial=-1)) + 1, k)
    return SlideSums(
        sparse.coo_array((values, (rows, cols)), shape=shape).tocsr(), n_bins, n_scores
    )


def metrics_from_totals(totals: np.ndarray, n_bins: int, n_scores: int) -> dict[str, np.ndarray]:
    """All :data:`METRICS` for each row of summed slide sums ``(B, K)`` → ``{name: (B,)}``;
    NaN where a metric is undefined (e.g. AUC of a replicate without positives)."""
    tp, fp, tn, fn, sq = (totals[:, i] for i in range(5))
    n = tp + fp + tn + fn
    out = _from_counts(tp, fp, tn, fn)
    out["mcc"] = _ratio(tp * tn - fp * fn, np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)))
    out["brier"] = _ratio(sq, n)
    b = 5
    bin_p = totals[:, b + n_bins : b + 2 * n_bins]
    bin_y = totals[:, b + 2 * n_bins : b + 3 * n_bins]
    out["ece"] = _ratio(np.abs(bin_y - bin_p).sum(axis=1), n)
    b += 3 * n_bins
    pos = totals[:, b : b + n_scores]
    neg = totals[:, b + n_scores : b + 2 * n_scores]
    n_pos, n_neg = pos.sum(axis=1), neg.sum(axis=1)
    lower_neg = np.cumsum(neg, axis=1) - neg  # negatives scored strictly below each score
    out["roc_auc"] = _ratio((pos * (lower_neg + neg / 2)).sum(axis=1), n_pos * n_neg)
    tp_at = np.cumsum(pos[:, ::-1], axis=1)  # thresholds from the highest score down
    precision = np.nan_to_num(_ratio(tp_at, tp_at + np.cumsum(neg[:, ::-1], axis=1)))
    out["pr_auc"] = _ratio((pos[:, ::-1] * precision).sum(axis=1), n_pos)
    out["pr_auc"][n_neg == 0] = np.nan  # one class: undefined, as in glomx.evaluation.metrics
    return {name: out[name] for name in METRICS}


def point_metrics(s: SlideSums) -> dict[str, float]:
    """The metrics on all images (each slide once)."""
    values = metrics_from_totals(
        np.asarray(s.sums.sum(axis=0)).reshape(1, -1), s.n_bins, s.n_scores
    )
    return {k: float(v[0]) for k, v in values.items()}


def replicate_weights(n_slides: int, n_resamples: int, seed: int) -> np.ndarray:
    """``(n_resamples, n_slides)`` counts: how often each slide is drawn in each replicate."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_slides, size=(n_resamples, n_slides))
    flat = draws + n_slides * np.arange(n_resamples)[:, None]
    return np.bincount(flat.ravel(), minlength=n_resamples * n_slides).reshape(
        n_resamples, n_slides
    )


def replicate_metrics(s: SlideSums, weights: np.ndarray) -> dict[str, np.ndarray]:
    """Every metric on each replicate, a row of ``weights`` (draws per slide) → ``{name: (B,)}``.

    Replicates go through in blocks whose arrays stay under :data:`_BLOCK_VALUES` values, so
    memory does not grow with the number of distinct scores (about one column per patch)."""
    block = max(1, min(_BLOCK, _BLOCK_VALUES // s.sums.shape[1]))  # type: ignore[misc]
    parts = [
        metrics_from_totals(np.asarray(weights[i : i + block] @ s.sums), s.n_bins, s.n_scores)
        for i in range(0, len(weights), block)
    ]
    return {k: np.concatenate([p[k] for p in parts]) for k in METRICS}


def bootstrap_distribution(s: SlideSums, n_resamples: int, seed: int) -> dict[str, np.ndarray]:
    """Every metric on ``n_resamples`` slide-resampled replicates → ``{name: (B,)}``."""
    weights = replicate_weights(s.n_slides, n_resamples, seed).astype(np.float64)
    return replicate_metrics(s, weights)


def bootstrap_metrics(
    y_true: np.ndarray,
    proba: np.ndarray,
    slides: np.ndarray,
    threshold: float | np.ndarray,  # one per image for pooled out-of-fold predictions
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    n_bins: int = 10,
    min_slides: int = MIN_SLIDES,
) -> dict[str, dict[str, float]]:
    """``{metric: {"value", "ci_low", "ci_high"}}``: point estimate and percentile interval.

    Replicates where a metric is undefined are left out of its interval; the interval is NaN
    when none is defined, and for every metric when there are fewer than ``min_slides`` slides.
    """
    s = slide_sums(y_true, proba, slides, threshold, n_bins)
    point = point_metrics(s)
    dist = bootstrap_distribution(s, n_resamples, seed)
    tail = (1 - confidence) / 2 * 100
    out: dict[str, dict[str, float]] = {}
    for name in METRICS:
        valid = dist[name][~np.isnan(dist[name])] if s.n_slides >= min_slides else np.empty(0)
        low, high = np.percentile(valid, [tail, 100 - tail]) if len(valid) else (np.nan, np.nan)
        out[name] = {"value": point[name], "ci_low": float(low), "ci_high": float(high)}
    return out
