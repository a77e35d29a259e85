import math

import numpy as np
import pytest
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    matthews_corrcoef,
    roc_auc_score,
)

from glomx.evaluation import metrics as glomx_metrics
from glomx.evaluation.bootstrap import (
    METRICS,
    MIN_SLIDES,
    bootstrap_distribution,
    bootstrap_metrics,
    point_metrics,
    replicate_weights,
    slide_sums,
)
from glomx.evaluation.calibration import reliability_bins, reliability_figure


def _data(n: int = 300, n_slides: int = 12, seed: int = 3):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = np.round(np.clip(0.35 * y + 0.65 * rng.random(n), 0, 1), 2)  # ties on purpose
    slides = np.array([f"S{i}" for i in rng.integers(0, n_slides, n)])
    return y, p, slides


def test_point_metrics_agree_with_sklearn_and_glomx_metrics():
    y, p, slides = _data()
    m = point_metrics(slide_sums(y, p, slides, threshold=0.5, n_bins=10))
    assert set(m) == set(METRICS)
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y, p))
    assert m["pr_auc"] == pytest.approx(average_precision_score(y, p))
    assert m["mcc"] == pytest.approx(matthews_corrcoef(y, p >= 0.5))
    assert m["brier"] == pytest.approx(brier_score_loss(y, p))
    for key, value in glomx_metrics.classification_metrics(y, p, 0.5).items():
        assert m[key] == pytest.approx(value), key


def test_brier_and_ece_on_known_inputs():
    y = np.array([0, 0, 1, 1, 1])
    p = np.array([0.1, 0.1, 0.9, 0.9, 0.4])
    m = point_metrics(slide_sums(y, p, np.zeros(5), threshold=0.5, n_bins=10))
    assert m["brier"] == pytest.approx((0.01 + 0.01 + 0.01 + 0.01 + 0.36) / 5)
    # bins: [0.1,0.1] → |0 − 0.2|, [0.4] → |1 − 0.4|, [0.9,0.9] → |2 − 1.8|; over n = 5
    assert m["ece"] == pytest.approx((0.2 + 0.6 + 0.2) / 5)
    mean_p, frac_y, count = reliability_bins(y, p, 10)
    np.testing.assert_allclose(mean_p, [0.1, 0.4, 0.9])
    np.testing.assert_allclose(frac_y, [0.0, 1.0, 1.0])
    np.testing.assert_array_equal(count, [2, 1, 2])
    assert len(reliability_figure({"m": (y, p)}, 10).axes) == 2


def test_intervals_contain_the_estimate_and_are_reproducible():
    y, p, slides = _data()
    a = bootstrap_metrics(y, p, slides, 0.5, n_resamples=300, seed=7)
    b = bootstrap_metrics(y, p, slides, 0.5, n_resamples=300, seed=7)
    c = bootstrap_metrics(y, p, slides, 0.5, n_resamples=300, seed=8)
    assert a == b
    assert a != c
    for name, m in a.items():
        assert m["ci_low"] <= m["value"] <= m["ci_high"], name
        assert m["ci_low"] < m["ci_high"], name


def test_replicates_resample_whole_slides():
    # slide A: 10 images all right; slide B: 10 images all wrong. Drawing slides, a replicate
    # holds A twice, B twice or one of each, so accuracy is 0, 0.5 or 1 — never in between,
    # as it would be if images were drawn independently.
    y = np.array([1] * 5 + [0] * 5 + [1] * 5 + [0] * 5)
    p = np.array([0.9] * 5 + [0.1] * 5 + [0.1] * 5 + [0.9] * 5)
    slides = np.array(["A"] * 10 + ["B"] * 10)
    dist = bootstrap_distribution(slide_sums(y, p, slides, 0.5, 10), 200, seed=0)
    assert set(np.unique(dist["accuracy"])) == {0.0, 0.5, 1.0}
    weights = replicate_weights(2, 200, seed=0)
    assert (weights.sum(axis=1) == 2).all()


def test_undefined_metrics_are_nan_not_a_crash():
    y = np.zeros(6, dtype=int)
    m = bootstrap_metrics(y, np.linspace(0, 1, 6), np.arange(6) % 2, 0.5, n_resamples=50)
    assert math.isnan(m["roc_auc"]["value"]) and math.isnan(m["roc_auc"]["ci_low"])
    assert m["specificity"]["value"] == pytest.approx(0.5)


def test_too_few_slides_give_no_interval():
    # 4 slides allow at most 35 distinct replicates: no interval, only the point value
    y, p, slides = _data(n_slides=4)
    few = bootstrap_metrics(y, p, slides, 0.5, n_resamples=100)
    assert all(math.isnan(m["ci_low"]) and math.isnan(m["ci_high"]) for m in few.values())
    assert few["accuracy"]["value"] == pytest.approx(np.mean((p >= 0.5) == y))
    y, p, slides = _data(n_slides=MIN_SLIDES)
    enough = bootstrap_metrics(y, p, slides, 0.5, n_resamples=100)
    assert enough["accuracy"]["ci_low"] < enough["accuracy"]["ci_high"]
