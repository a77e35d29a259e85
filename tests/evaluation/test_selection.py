"""The promotion rule on hand-made out-of-fold predictions: separable families give one
family, tied ones the ensemble of them, and the paired interval is what decides."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from glomx.evaluation.selection import ENSEMBLE, OOF, SelectionError, mean_of, paired_difference
from glomx.evaluation.selection import select as choose

BOOT = {"n_resamples": 500, "confidence": 0.95, "seed": 0}
N_SLIDES, PER_SLIDE = 18, 20


def truth() -> tuple[np.ndarray, np.ndarray]:
    """18 slides of 20 patches, a quarter sclerotic."""
    labels = (np.arange(N_SLIDES * PER_SLIDE) % 4 == 0).astype(np.int64)
    slides = np.repeat([f"S{i:02d}" for i in range(N_SLIDES)], PER_SLIDE)
    return labels, slides


def oof(accuracy: float, seed: int) -> OOF:
    """Predictions right on about ``accuracy`` of the patches of each class, confident either
    way, so balanced accuracy lands near ``accuracy``."""
    labels, slides = truth()
    rng = np.random.default_rng(seed)
    right = rng.random(len(labels)) < accuracy
    proba = np.where(right == (labels == 1), 0.8, 0.2) + rng.uniform(-0.1, 0.1, len(labels))
    rows = [
        (f"{s}-{i}.png", s, i % 3, int(y), float(p), 0.5)
        for i, (s, y, p) in enumerate(zip(slides, labels, proba, strict=True))
    ]
    return OOF.of(rows)


def flipped(base: OOF, offset: int) -> OOF:
    """``base`` with a few calls turned over, two it got right and two it got wrong per class,
    on other slides: a family making nearly the same calls, better here and worse there."""
    proba = base.proba.copy()
    right = (proba >= 0.5) == (base.labels == 1)
    for label in (0, 1):
        for correct in (True, False):
            idx = np.flatnonzero((base.labels == label) & (right == correct))
            chosen = idx[offset :: max(1, len(idx) // 2)][:2]
            proba[chosen] = 1 - proba[chosen]
    return OOF(base.names, base.slides, base.folds, base.labels, proba, base.thresholds)


def test_separable_families_give_the_best_one() -> None:
    families = {"cnn": oof(0.95, 1), "lr": oof(0.70, 2), "resnet": oof(0.60, 3)}
    selection = choose(families, BOOT)
    assert selection.candidate == "cnn" and selection.tied == ["cnn"]
    assert [r["family"] for r in selection.ranking] == ["cnn", "lr", "resnet"]
    for other in ("lr", "resnet"):
        d = selection.differences[other]
        assert not d["tied"] and 0 < d["ci_low"] <= d["value"] <= d["ci_high"]
    assert selection.ensemble == {} and "excludes 0" in selection.reason


def test_tied_families_give_the_ensemble_of_them_and_leave_the_rest_out() -> None:
    cnn = oof(0.93, 1)
    families = {"cnn": cnn, "probe": flipped(cnn, 1), "mobilenet": flipped(cnn, 3),
                "resnet": oof(0.70, 3)}  # fmt: skip
    selection = choose(families, BOOT)
    assert selection.candidate == ENSEMBLE
    assert set(selection.tied) == {"cnn", "probe", "mobilenet"}
    assert selection.tied[0] == selection.ranking[0]["family"]
    assert not selection.differences["resnet"]["tied"]
    for name in selection.tied[1:]:
        d = selection.differences[name]
        assert d["tied"] and d["ci_low"] <= 0 <= d["ci_high"]
    members = mean_of(families, selection.tied)
    assert selection.ensemble["members"] == selection.tied
    assert selection.ensemble["balanced_accuracy"]["value"] == pytest.approx(
        members.metrics()["balanced_accuracy"]
    )
    expected = np.mean([families[f].proba for f in selection.tied], axis=0)
    assert members.proba == pytest.approx(expected) and set(members.thresholds) == {0.5}
    assert "cannot tell them apart" in selection.reason


def test_the_paired_interval_is_narrower_than_comparing_two_intervals() -> None:
    """Two families that share most of their mistakes: their own intervals overlap widely,
    yet the paired difference, resampling the same slides for both, excludes 0."""
    a = oof(0.85, 7)
    flip = (a.labels == 1) & (a.proba < 0.5)  # b misses what a misses, and a few more
    extra = np.zeros(len(a.labels), dtype=bool)
    extra[np.flatnonzero(a.labels == 1)[::6]] = True
    proba = np.where(flip | extra, np.minimum(a.proba, 0.3), a.proba)
    b = OOF(a.names, a.slides, a.folds, a.labels, proba, a.thresholds)
    ia, ib = a.intervals(BOOT)["balanced_accuracy"], b.intervals(BOOT)["balanced_accuracy"]
    assert ib["ci_high"] > ia["ci_low"]  # the two intervals overlap
    d = paired_difference(a, b, BOOT)
    assert d["ci_low"] > 0 and d["value"] == pytest.approx(ia["value"] - ib["value"])
    assert choose({"a": a, "b": b}, BOOT).candidate == "a"


def test_too_few_slides_for_an_interval_count_as_a_tie() -> None:
    rows = [(f"s{i % 3}-{i}", f"s{i % 3}", 0, i % 2, 0.9 if i % 2 else 0.1, 0.5) for i in range(30)]
    worse = [(n, s, f, y, 0.6, t) for n, s, f, y, _, t in rows]
    selection = choose({"good": OOF.of(rows), "flat": OOF.of(worse)}, BOOT)
    assert selection.differences["flat"]["tied"] and selection.candidate == ENSEMBLE


def test_oof_files_round_trip_and_mismatched_patches_are_refused(tmp_path: Path) -> None:
    a = oof(0.9, 1)
    a.write(tmp_path / "a.csv")
    back = OOF.read(tmp_path / "a.csv")
    assert np.array_equal(back.names, a.names) and np.array_equal(back.proba, a.proba)
    short = OOF(a.names[1:], a.slides[1:], a.folds[1:], a.labels[1:], a.proba[1:],
                a.thresholds[1:])  # fmt: skip
    with pytest.raises(SelectionError, match="same patches"):
        paired_difference(a, short, BOOT)
    with pytest.raises(SelectionError, match="training stage"):
        OOF.read(tmp_path / "missing.csv")
