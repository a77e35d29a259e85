"""The adoption rule for a training change meant to carry the champion to a new lab.

Written before any candidate was scored (docs/generalisation.md). A candidate replaces today's
defaults only if, with every hospital left out in turn and scored at the shipped threshold:

1. the mean balanced accuracy over the hospitals with at least ``min_sclerotic`` sclerotic
   patches rises;
2. no hospital drops by more than ``max_drop``;
3. the pooled out-of-fold balanced accuracy of the normal cross-validation is not below the
   lower end of today's slide-bootstrap interval (the home slides pay nothing).

Rule 3 costs a second set of trials, so it may be left uncomputed (``home`` None) for a
candidate that already fails 1 or 2; such a candidate is rejected whatever its home figure.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

MIN_SCLEROTIC = 10
MAX_DROP = 0.01


@dataclass(frozen=True)
class SiteFigures:
    """One model trained without each hospital in turn, scored there at its shipped
    threshold; and its home figure, when measured."""

    shipped: Mapping[str, float]  # hospital -> balanced accuracy at the shipped threshold
    sclerotic: Mapping[str, int]  # hospital -> sclerotic patches scored there
    home: float | None = None  # pooled out-of-fold balanced accuracy, normal CV


@dataclass(frozen=True)
class Verdict:
    """Each rule's outcome (None: not computed) and whether the candidate is adopted."""

    mean_gain: float  # rule 1's figure: candidate − today, mean over the counted hospitals
    worst_drop: float  # rule 2's figure: the most negative change at any hospital (or 0)
    gain: bool
    no_site_drops: bool
    home_kept: bool | None
    counted: tuple[str, ...]  # the hospitals rule 1 averages over

    @property
    def adopted(self) -> bool:
        return self.gain and self.no_site_drops and bool(self.home_kept)

    def reason(self) -> str:
        """One line: adopted, or the first rule that failed (or is still open)."""
        if not self.gain:
            return f"rejected: mean over {', '.join(self.counted)} {self.mean_gain:+.3f}, no gain"
        if not self.no_site_drops:
            return f"rejected: a hospital drops {self.worst_drop:+.3f} (limit −{MAX_DROP})"
        if self.home_kept is None:
            return f"passes rules 1–2 ({self.mean_gain:+.3f}); home CV not yet measured"
        if not self.home_kept:
            return "rejected: home out-of-fold balanced accuracy below today's interval"
        return f"adopted: {self.mean_gain:+.3f} over {', '.join(self.counted)}"


def judge(
    today: SiteFigures,
    candidate: SiteFigures,
    home_low: float,
    min_sclerotic: int = MIN_SCLEROTIC,
    max_drop: float = MAX_DROP,
) -> Verdict:
    """``candidate`` against ``today`` by the three rules; ``home_low`` is the lower end of
    today's slide-bootstrap interval of its home out-of-fold balanced accuracy (NaN when not
    measured: rule 3 stays open)."""
    sites = sorted(today.shipped)
    if missing := sorted(set(sites) - set(candidate.shipped)):
        raise ValueError(f"the candidate was not scored at {', '.join(missing)}")
    counted = tuple(s for s in sites if today.sclerotic[s] >= min_sclerotic)
    if not counted:
        raise ValueError(f"no hospital has {min_sclerotic} sclerotic patches to judge a gain by")
    change = {s: candidate.shipped[s] - today.shipped[s] for s in sites}
    mean_gain = sum(change[s] for s in counted) / len(counted)
    worst = min(0.0, *change.values())
    home = None if candidate.home is None or math.isnan(home_low) else candidate.home >= home_low
    return Verdict(mean_gain, worst, mean_gain > 0, worst >= -max_drop, home, counted)
