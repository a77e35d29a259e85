"""Percentage of globally sclerotic glomeruli (%GS) per slide, corrected for the classifier's
errors, with a 95 % interval.

A slide's apparent fraction ``k / n`` (patches the model calls sclerotic) is biased: false
positives among the many normal glomeruli inflate it, missed sclerotic ones deflate it. With
the model's sensitivity Se and specificity Sp the Rogan–Gladen estimator undoes that bias:
``π = (k / n + Sp − 1) / (Se + Sp − 1)``, clipped to [0, 1].

Interval (parametric bootstrap of the three counts it rests on): the apparent fraction, Se and
Sp are drawn independently from Beta(x + ½, m − x + ½) (their Jeffreys posteriors: ``k`` of
``n`` glomeruli on the slide, true positives of the positives and true negatives of the
negatives Se and Sp were measured on), each draw is corrected, and the 2.5 and 97.5
percentiles of the corrected draws are the interval. It so covers both the sampling error of a
slide's few glomeruli and the error of Se and Sp measured on a finite validation or
calibration set; coverage is checked by simulation in ``tests/evaluation/test_prevalence.py``.
Without known Se and Sp (an unregistered model folder, a threshold overridden at predict
time) nothing is corrected and the interval covers sampling error only; the ``source`` says so.

Flags: fewer than :data:`ADEQUATE` glomeruli (a biopsy commonly judged inadequate for %GS), and
an interval that contains one of :data:`CUTOFFS` (the 10 % and 20 % global-sclerosis cut-offs
used in donor-kidney assessment), where the slide's side of the cut-off is not established.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

ADEQUATE = 25  # glomeruli
CUTOFFS = (10.0, 20.0)  # percent
DRAWS = 4000


@dataclass(frozen=True)
class ClassifierAccuracy:
    """Sensitivity and specificity at the threshold used, the numbers of positive and negative
    patches they were measured on (0 when unknown: then taken as exact) and where they come
    from. NaN rates mean unknown: nothing is corrected."""

    sensitivity: float
    specificity: float
    n_positive: int
    n_negative: int
    source: str

    @property
    def known(self) -> bool:
        return not (math.isnan(self.sensitivity) or math.isnan(self.specificity))


def unknown_accuracy(why: str) -> ClassifierAccuracy:
    """No correction, for the reason ``why`` (shown as the source)."""
    return ClassifierAccuracy(math.nan, math.nan, 0, 0, f"none ({why}): uncorrected")


@dataclass(frozen=True)
class SlidePrevalence:
    """One slide's %GS: corrected estimate and interval, in percent, and its flags."""

    percent: float
    low: float
    high: float
    flags: tuple[str, ...]


def _beta(rng: np.random.Generator, rate: float, m: int, draws: int) -> np.ndarray:
    """Draws of a proportion observed as ``rate`` of ``m``; exact when ``m`` is 0 (unknown)."""
    if m <= 0:
        return np.full(draws, rate)
    x = round(rate * m)
    return rng.beta(x + 0.5, m - x + 0.5, draws)


def _corrected(apparent: np.ndarray, se: np.ndarray | float, sp: np.ndarray | float) -> np.ndarray:
    """Rogan–Gladen, clipped to [0, 1]; NaN where Se + Sp ≤ 1 (no information)."""
    youden = se + sp - 1
    out = np.full(np.broadcast(apparent, youden).shape, np.nan)
    np.divide(apparent + sp - 1, youden, out=out, where=youden > 0)
    return np.clip(out, 0, 1)


def slide_prevalence(
    n: int,
    k: int,
    accuracy: ClassifierAccuracy,
    *,
    confidence: float = 0.95,
    draws: int = DRAWS,
    seed: int = 0,
) -> SlidePrevalence:
    """%GS of a slide where the model called ``k`` of ``n`` glomeruli sclerotic."""
    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n > 0, got k={k}, n={n}")
    rng = np.random.default_rng(seed)
    apparent = rng.beta(k + 0.5, n - k + 0.5, draws)
    if accuracy.known:
        se = _beta(rng, accuracy.sensitivity, accuracy.n_positive, draws)
        sp = _beta(rng, accuracy.specificity, accuracy.n_negative, draws)
        point = float(_corrected(np.array(k / n), accuracy.sensitivity, accuracy.specificity))
        sample = _corrected(apparent, se, sp)
        sample = sample[~np.isnan(sample)]
    else:
        point, sample = k / n, apparent
    tail = (1 - confidence) / 2 * 100
    if math.isnan(point) or not len(sample):  # Se + Sp <= 1: the model tells nothing
        low, high = 0.0, 1.0
    else:
        low, high = (float(v) for v in np.percentile(sample, [tail, 100 - tail]))
    percent, low, high = 100 * point, 100 * low, 100 * high
    flags = [] if not math.isnan(point) else ["Se + Sp <= 1: the model tells nothing"]
    if n < ADEQUATE:
        flags.append(f"fewer than {ADEQUATE} glomeruli")
    flags += [f"interval crosses {c:g} %" for c in CUTOFFS if low < c < high]
    return SlidePrevalence(percent, low, high, tuple(flags))
