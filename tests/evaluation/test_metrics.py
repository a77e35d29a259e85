import csv
import math

import numpy as np
import pytest
from matplotlib.figure import Figure

from glomx.evaluation import metrics

Y = np.array([0, 0, 0, 0, 1, 1, 1, 0])
P = np.array([0.1, 0.2, 0.3, 0.6, 0.4, 0.7, 0.9, 0.55])


def test_classification_metrics_on_known_counts():
    # at 0.5: tp=2 (0.7, 0.9), fn=1 (0.4), fp=2 (0.6, 0.55), tn=3
    m = metrics.classification_metrics(Y, P, threshold=0.5)
    assert set(m) == set(metrics.METRICS)
    assert m["accuracy"] == pytest.approx(5 / 8)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["specificity"] == pytest.approx(3 / 5)
    assert m["precision"] == pytest.approx(2 / 4)
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 3 / 5) / 2)
    assert m["f1"] == pytest.approx(2 * 2 / (2 * 2 + 2 + 1))
    # 15 positive/negative pairs, all ranked right but 0.4 < 0.55 and 0.4 < 0.6
    assert m["roc_auc"] == pytest.approx(13 / 15)
    assert 0 < m["pr_auc"] <= 1


def test_metrics_with_one_class_are_nan_not_a_crash():
    m = metrics.classification_metrics(np.zeros(4), np.array([0.1, 0.2, 0.7, 0.3]))
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["specificity"] == pytest.approx(0.75)
    assert m["precision"] == 0.0  # one predicted positive, wrong
    for key in ("recall", "balanced_accuracy", "roc_auc", "pr_auc"):
        assert math.isnan(m[key]), key
    none_predicted = metrics.classification_metrics(np.zeros(3), np.zeros(3))
    assert math.isnan(none_predicted["precision"]) and math.isnan(none_predicted["f1"])


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        metrics.classification_metrics(np.array([0, 2]), np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match="2 labels but 3"):
        metrics.classification_metrics(np.array([0, 1]), np.array([0.1, 0.2, 0.3]))


def test_choose_threshold_separates_separable_scores():
    y = np.array([0, 0, 0, 1, 1])
    p = np.array([0.05, 0.1, 0.2, 0.3, 0.35])  # all below 0.5 but perfectly ranked
    t = metrics.choose_threshold(y, p)
    assert t == pytest.approx(0.25)
    assert metrics.classification_metrics(y, p, t)["balanced_accuracy"] == 1.0


def test_choose_threshold_is_best_over_all_cut_points():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60)
    p = np.clip(y * 0.3 + rng.random(60) * 0.7, 0, 1)
    t = metrics.choose_threshold(y, p, metric="f1")
    best = max(metrics.classification_metrics(y, p, c)["f1"] for c in np.unique(p))
    assert metrics.classification_metrics(y, p, t)["f1"] == pytest.approx(best)


def test_choose_threshold_ties_nearest_or_interval_midpoint():
    # one positive and one negative share 0.4: cutting at 0.3 or at 0.55 is equally good
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.4, 0.4, 0.7, 0.8])
    assert metrics.choose_threshold(y, p) == pytest.approx(0.55)
    assert metrics.choose_threshold(y, p, ties="interval") == pytest.approx((0.2 + 0.7) / 2)
    # two separate best intervals, (0.2, 0.3] and (0.6, 0.7]: the one nearer 0.5, its midpoint
    y = np.array([0, 0, 1, 0, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.9])
    assert metrics.choose_threshold(y, p, ties="interval") == pytest.approx(0.65)
    with pytest.raises(ValueError, match="ties"):
        metrics.choose_threshold(y, p, ties="lowest")


def test_choose_threshold_needs_both_classes_and_a_known_metric():
    with pytest.raises(ValueError, match="both classes"):
        metrics.choose_threshold(np.ones(3), np.array([0.2, 0.5, 0.9]))
    with pytest.raises(ValueError, match="roc_auc"):
        metrics.choose_threshold(Y, P, metric="roc_auc")


def _read(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_write_plot_data_formats(tmp_path):
    metrics.write_plot_data(tmp_path / "lr", Y, P, threshold=0.5)
    confusion = _read(tmp_path / "lr" / "confusion.csv")
    assert confusion[0] == ["actual", "predicted"]
    assert [tuple(map(int, r)) for r in confusion[1:]] == list(
        zip(Y.tolist(), (P >= 0.5).astype(int).tolist(), strict=True)
    )
    roc = np.array(_read(tmp_path / "lr" / "roc.csv")[1:], dtype=float)
    assert _read(tmp_path / "lr" / "roc.csv")[0] == ["fpr", "tpr", "threshold"]
    assert roc[0, :2].tolist() == [0, 0] and roc[-1, :2].tolist() == [1, 1]
    assert np.isfinite(roc).all() and (roc[:, 2] <= 1).all()
    pr = _read(tmp_path / "lr" / "pr.csv")
    assert pr[0] == ["recall", "precision", "threshold"]
    assert np.isfinite(np.array(pr[1:], dtype=float)).all()


def test_write_plot_data_with_one_class_keeps_headers(tmp_path):
    metrics.write_plot_data(tmp_path, np.zeros(3), np.array([0.1, 0.6, 0.2]), 0.5)
    assert _read(tmp_path / "roc.csv") == [["fpr", "tpr", "threshold"]]
    assert len(_read(tmp_path / "confusion.csv")) == 4


def test_figures_render(tmp_path):
    figs = [
        metrics.confusion_figure(Y, (P >= 0.5).astype(int)),
        metrics.roc_figure({"lr": (Y, P)}),
        metrics.pr_figure({"lr": (Y, P), "one-class": (np.zeros(3), np.zeros(3))}),
    ]
    for i, fig in enumerate(figs):
        assert isinstance(fig, Figure)
        fig.savefig(tmp_path / f"{i}.png")
        assert (tmp_path / f"{i}.png").stat().st_size > 1000
    texts = [t.get_text() for t in figs[0].axes[0].texts]
    assert texts == ["3", "2", "1", "2"]
