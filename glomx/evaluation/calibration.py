"""Reliability diagram: how often images predicted at probability p are really sclerotic.

Bins are equal-width on [0, 1], the same bins as the expected calibration error in
:mod:`glomx.evaluation.bootstrap` (ECE = Σ_bins |Σ y − Σ p| / n).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from matplotlib.figure import Figure


def reliability_bins(
    y_true: np.ndarray, proba: np.ndarray, n_bins: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per non-empty bin: mean predicted probability, observed fraction positive, count."""
    y = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(proba, dtype=np.float64)
    bins = np.clip((p * n_bins).astype(np.int64), 0, n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    keep = count > 0
    mean_p = np.bincount(bins, p, n_bins)[keep] / count[keep]
    frac_y = np.bincount(bins, y, n_bins)[keep] / count[keep]
    return mean_p, frac_y, count[keep]


def reliability_figure(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], n_bins: int) -> Figure:
    """One reliability curve per ``name: (y_true, proba)``, above a histogram of probabilities."""
    fig = Figure(figsize=(5, 5.5), dpi=100, layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    top.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--", label="perfectly calibrated")
    edges = np.linspace(0, 1, n_bins + 1)
    for name, (y, p) in curves.items():
        mean_p, frac_y, _ = reliability_bins(y, p, n_bins)
        top.plot(mean_p, frac_y, marker="o", ms=3, label=name)
        bottom.hist(p, bins=edges, histtype="step", label=name)
    top.set(ylabel="observed fraction sclerotic", title="Reliability (test)", ylim=(0, 1))
    top.legend(loc="upper left", fontsize="small")
    bottom.set(xlabel="predicted probability", ylabel="images", xlim=(0, 1), yscale="log")
    return fig
