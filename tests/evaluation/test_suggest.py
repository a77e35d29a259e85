"""Which patches a lab labels first: spread over slides, both sides of the threshold near it,
and a few confident ones of each class."""

from __future__ import annotations

import numpy as np
import pytest

from glomx.evaluation.suggest import suggest


def _lab(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """300 patches of 8 slides; slide S0 holds half of them and most of the scores near 0.3."""
    rng = np.random.default_rng(seed)
    proba = rng.random(300)
    slides = np.array([f"S{k % 7 + 1}" for k in range(300)])
    crowded = np.abs(proba - 0.3) < 0.1
    slides[crowded | (np.arange(300) < 100)] = "S0"
    return proba, slides


@pytest.mark.parametrize("n", [10, 20, 40])
def test_near_the_threshold_on_both_sides_spread_over_slides(n: int) -> None:
    proba, slides = _lab()
    idx = suggest(proba, slides, 0.3, n)
    assert len(idx) == len(set(idx.tolist())) == n
    p = proba[idx]
    above, below = (p >= 0.3).sum(), (p < 0.3).sum()
    assert abs(above - below) <= 1  # as many on each side
    assert p.max() > 0.95 and p.min() < 0.05  # confident ones of each class
    near = np.sort(np.abs(p - 0.3))[: n - max(2, round(0.2 * n))]
    assert near.max() < 0.3  # the rest lie near the threshold, not spread over [0, 1]
    # S0 crowds the threshold, yet no slide gets more than its share plus one
    counts = np.unique(slides[idx], return_counts=True)[1]
    assert len(counts) == 8 and counts.max() <= -(-n // 8) + 1
    # a random draw of n would give S0 about half: the spread is the function's doing
    assert counts.max() < 0.5 * n


def test_a_lab_whose_scores_all_lie_below_the_threshold_still_gets_n() -> None:
    proba, slides = _lab()
    idx = suggest(proba * 0.4, slides, 0.5, 20)  # the model calls nothing sclerotic here
    assert len(set(idx.tolist())) == 20
    assert np.sort(proba[idx] * 0.4)[-10:].min() > 0.3  # the top of the range, nearest 0.5


def test_fewer_patches_than_asked_are_all_suggested() -> None:
    assert suggest(np.array([0.2, 0.9]), np.array(["a", "b"]), 0.5, 10).tolist() == [0, 1]
