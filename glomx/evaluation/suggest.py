"""Which patches a lab should label first to calibrate the threshold.

A threshold is decided by the patches whose scores lie near it: a random draw spends most of
its labels on patches far from any sensible cut. So the draw is, of ``n``:

- most near the model's threshold, half on each side of it, spaced through a band of the
  :data:`NEAR_BAND` share of that side's patches nearest it (a lab's best cut may lie some way
  off the model's);
- a few (:data:`CONFIDENT` of the draw, at least one of each side) from the :data:`CONFIDENT_BAND`
  most confident of each side, so that both classes are there;
- spread over slides: in each spacing window, the patch from the slide with the fewest picks so
  far, and no slide more than its fair share plus one (patches of one slide share stain, and
  ``glomx calibrate`` wants 3 or more slides).
"""

from __future__ import annotations

import numpy as np

NEAR_BAND = 0.25  # share of a side's patches, nearest the threshold, the near picks come from
CONFIDENT_BAND = 0.10  # share of a side's patches, furthest from it, the confident picks come from
CONFIDENT = 0.2  # share of the draw spent on confident patches (at least one of each side)


def _spread(
    order: np.ndarray, k: int, band: float, slides: np.ndarray, counts: dict[str, int], cap: int
) -> list[int]:
    """``k`` of ``order`` (indices, best first, none taken yet): one from each of ``k`` equal
    consecutive windows of its first ``band`` share, the one whose slide has the fewest picks
    so far (ties: the earlier). A slide holding ``cap`` picks gets no more: a window with only
    such slides gives way to the next patch in ``order`` from another. ``counts`` is updated."""
    picked: list[int] = []
    width = min(len(order), max(k, int(np.ceil(band * len(order)))))
    for window in np.array_split(order[:width], k) if k else []:
        free = [i for i in window if counts.get(str(slides[i]), 0) < cap and i not in picked]
        if not free:  # beyond the window, the nearest from a slide with room
            free = [i for i in order if counts.get(str(slides[i]), 0) < cap and i not in picked]
        if free:
            best = min(free, key=lambda i: counts.get(str(slides[i]), 0))
            counts[str(slides[best])] = counts.get(str(slides[best]), 0) + 1
            picked.append(int(best))
    return picked


def suggest(proba: np.ndarray, slides: np.ndarray, threshold: float, n: int) -> np.ndarray:
    """Indices of the ``n`` patches to label first (all of them when there are no more)."""
    proba, slides = np.asarray(proba, dtype=float), np.asarray(slides).astype(str)
    if n >= len(proba):
        return np.arange(len(proba))
    above = np.flatnonzero(proba >= threshold)
    below = np.flatnonzero(proba < threshold)
    # nearest the threshold first; most confident first
    near = {
        "above": above[np.argsort(proba[above] - threshold, kind="stable")],
        "below": below[np.argsort(threshold - proba[below], kind="stable")],
    }
    sure = {side: order[::-1] for side, order in near.items()}
    n_sure = max(2, round(CONFIDENT * n)) if n >= 4 else 0
    n_near = n - n_sure
    want_near = {"above": n_near // 2, "below": n_near - n_near // 2}
    want_sure = {"above": n_sure // 2, "below": n_sure - n_sure // 2}
    for want in (want_near, want_sure):  # a side with too few patches: the other takes over
        for side, other in (("above", "below"), ("below", "above")):
            spare = want[side] - len(near[side])
            if spare > 0:
                want[side] -= spare
                want[other] += spare
    cap = -(-n // len(set(slides.tolist()))) + 1  # a slide's fair share, and one more
    counts: dict[str, int] = {}
    chosen: list[int] = []
    for side in ("above", "below"):
        chosen += _spread(sure[side], want_sure[side], CONFIDENT_BAND, slides, counts, cap)
    for side in ("above", "below"):
        free = near[side][~np.isin(near[side], chosen)]
        chosen += _spread(free, want_near[side], NEAR_BAND, slides, counts, cap)
    missing = n - len(chosen)  # windows left empty by a side that ran out
    if missing > 0:
        order = np.argsort(np.abs(proba - threshold), kind="stable")
        chosen += order[~np.isin(order, chosen)][:missing].tolist()
    return np.array(sorted(chosen))
