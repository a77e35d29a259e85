"""The adoption rule of docs/generalisation.md on hand-made tables."""

from __future__ import annotations

import pytest

from glomx.evaluation.adoption import SiteFigures, judge

SCLEROTIC = {"SAS": 53, "SESCAM": 38, "VUHSK": 5}
TODAY = SiteFigures({"SAS": 0.761, "SESCAM": 0.944, "VUHSK": 0.972}, SCLEROTIC, home=0.976)
LOW = 0.949  # today's home interval: [0.949, 0.996]


def candidate(sas: float, sescam: float, vuhsk: float, home: float | None) -> SiteFigures:
    return SiteFigures({"SAS": sas, "SESCAM": sescam, "VUHSK": vuhsk}, SCLEROTIC, home)


def test_a_gain_everywhere_with_home_kept_is_adopted() -> None:
    verdict = judge(TODAY, candidate(0.92, 0.95, 0.972, 0.96), LOW)
    assert verdict.adopted and verdict.counted == ("SAS", "SESCAM")
    assert verdict.mean_gain == pytest.approx((0.159 + 0.006) / 2)
    assert verdict.reason().startswith("adopted")


def test_the_mean_counts_only_hospitals_with_ten_sclerotic() -> None:
    """VUHSK (5 sclerotic) rising cannot make up for SAS and SESCAM falling."""
    verdict = judge(TODAY, candidate(0.758, 0.943, 0.999, 0.976), LOW)
    assert not verdict.gain and not verdict.adopted
    assert "no gain" in verdict.reason()


def test_a_hospital_dropping_more_than_a_hundredth_rejects() -> None:
    verdict = judge(TODAY, candidate(0.95, 0.944, 0.9615, 0.976), LOW)
    assert verdict.gain and not verdict.no_site_drops and not verdict.adopted
    assert verdict.worst_drop == pytest.approx(-0.0105)
    kept = judge(TODAY, candidate(0.95, 0.944, 0.9625, 0.976), LOW)
    assert kept.no_site_drops and kept.adopted


def test_a_home_loss_rejects_and_an_unmeasured_home_is_not_adopted() -> None:
    lost = judge(TODAY, candidate(0.95, 0.96, 0.972, 0.948), LOW)
    assert lost.gain and lost.no_site_drops and lost.home_kept is False and not lost.adopted
    assert "home" in lost.reason()
    open_ = judge(TODAY, candidate(0.95, 0.96, 0.972, None), LOW)
    assert open_.home_kept is None and not open_.adopted
    assert "not yet measured" in open_.reason()


def test_equal_figures_are_no_gain() -> None:
    assert not judge(TODAY, TODAY, LOW).adopted


def test_a_candidate_missing_a_hospital_is_refused() -> None:
    partial = SiteFigures({"SAS": 0.9, "SESCAM": 0.95}, SCLEROTIC, 0.97)
    with pytest.raises(ValueError, match="not scored at VUHSK"):
        judge(TODAY, partial, LOW)
