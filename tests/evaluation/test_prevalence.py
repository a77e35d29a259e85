"""%GS per slide: the Rogan–Gladen correction and the coverage of its interval, on simulated
slides whose true fraction is known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from glomx.evaluation.prevalence import (
    ClassifierAccuracy,
    slide_prevalence,
    unknown_accuracy,
)

VAL = (60, 200)  # positive and negative patches sensitivity and specificity were measured on


def test_rogan_gladen_point_estimate_and_flags() -> None:
    acc = ClassifierAccuracy(0.9, 0.95, *VAL, "test")
    est = slide_prevalence(100, 20, acc)
    assert est.percent == pytest.approx(100 * (0.20 + 0.95 - 1) / (0.9 + 0.95 - 1))
    assert est.low < est.percent < est.high
    assert est.flags == ("interval crosses 10 %", "interval crosses 20 %")
    small = slide_prevalence(12, 0, acc)
    assert small.percent == 0.0 and small.low == 0.0  # clipped: no negative fraction
    assert small.flags[0] == "fewer than 25 glomeruli"
    exact = slide_prevalence(400, 40, ClassifierAccuracy(1.0, 1.0, 0, 0, "exact"))
    assert exact.percent == pytest.approx(10.0) and exact.low < 10 < exact.high


def test_unknown_accuracy_means_no_correction_and_sampling_error_only() -> None:
    acc = unknown_accuracy("unregistered model folder")
    assert not acc.known and acc.source.startswith("none (unregistered model folder)")
    est = slide_prevalence(50, 5, acc)
    assert est.percent == pytest.approx(10.0)
    assert 2 < est.low < 10 < est.high < 25
    useless = slide_prevalence(50, 25, ClassifierAccuracy(0.5, 0.5, *VAL, "coin"))
    assert math.isnan(useless.percent) and (useless.low, useless.high) == (0.0, 100.0)
    with pytest.raises(ValueError):
        slide_prevalence(0, 0, acc)


@pytest.mark.parametrize(("truth", "n"), [(0.05, 30), (0.15, 40), (0.30, 60)])
def test_interval_covers_the_true_fraction_about_95_percent_of_the_time(
    truth: float, n: int
) -> None:
    """Each simulation measures Se and Sp afresh on a validation set, then classifies a slide
    of ``n`` glomeruli, a fraction ``truth`` of them sclerotic, with the real Se and Sp."""
    se, sp, runs = 0.85, 0.93, 400
    rng = np.random.default_rng(int(truth * 100))
    covered, widths = 0, []
    for i in range(runs):
        se_hat = rng.binomial(VAL[0], se) / VAL[0]
        sp_hat = rng.binomial(VAL[1], sp) / VAL[1]
        sclerotic = rng.random(n) < truth
        called = np.where(sclerotic, rng.random(n) < se, rng.random(n) >= sp)
        acc = ClassifierAccuracy(se_hat, sp_hat, *VAL, "simulated")
        est = slide_prevalence(n, int(called.sum()), acc, draws=2000, seed=i)
        covered += est.low <= 100 * truth <= est.high
        widths.append(est.high - est.low)
    assert 0.91 <= covered / runs <= 0.995, covered / runs
    assert np.median(widths) < 60  # informative, not [0, 100]
