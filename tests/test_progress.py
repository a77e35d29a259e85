"""Progress off a terminal (a log, a pipe, pytest): lines on stderr with what is done, how many
of how many and the time elapsed; at most one per interval, plus the last."""

from __future__ import annotations

import re

import pytest

from glomx.progress import Progress, duration

LINE = r"scoring cnn: (\d+)/5 images, \d+ s elapsed, [\d.]+ images/s"


def _lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    captured = capsys.readouterr()
    assert captured.out == ""  # stderr only
    return captured.err.splitlines()


def test_every_update_is_a_line_when_the_interval_is_zero(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with Progress("scoring cnn", 5, "images", every=0) as bar:
        bar.update(2)
        bar.update(3)
    lines = _lines(capsys)
    assert [int(re.fullmatch(LINE, line)[1]) for line in lines] == [2, 5]  # type: ignore[index]


def test_within_the_interval_only_the_last_count_is_shown(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with Progress("scoring cnn", 5, "images", every=3600) as bar:
        for _ in range(5):
            bar.update(1)
        bar.update(0)  # a waiting loop's heartbeat: no line before the interval
    (line,) = _lines(capsys)
    assert re.fullmatch(LINE, line)[1] == "5"  # type: ignore[index]


def test_a_loop_ended_short_shows_its_count_at_the_end(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(RuntimeError), Progress("scoring cnn", 5, "images", every=3600) as bar:
        bar.update(3)
        raise RuntimeError("the third batch failed")
    (line,) = _lines(capsys)
    assert re.fullmatch(LINE, line)[1] == "3"  # type: ignore[index]


def test_a_note_is_always_a_line_and_a_count_without_a_rate_has_none(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with Progress("train@lr", 3, "folds", every=3600, rate=False) as bar:
        bar.update(0)
        bar.update(1, note="fold 2 done in 12 s")
    (line,) = _lines(capsys)
    assert re.fullmatch(r"train@lr: 1/3 folds, \d+ s elapsed; fold 2 done in 12 s", line), line


def test_disabled_shows_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    with Progress("predict", 2, "images", enabled=False, every=0) as bar:
        bar.update(1, note="a note")
        bar.update(1)
    assert _lines(capsys) == []


def test_durations_read_at_a_glance() -> None:
    assert [duration(s) for s in (0, 59.9, 65, 3599, 3725)] == [
        "0 s", "59 s", "1 min 05 s", "59 min 59 s", "1 h 02 min",
    ]  # fmt: skip


def test_each_counts_an_item_done_when_the_loop_asks_for_the_next(
    capsys: pytest.CaptureFixture[str],
) -> None:
    seen = []
    for item in Progress("Grad-CAM", 3, "models", every=0, rate=False).each("abc"):
        seen.append((item, [line.split(",")[0] for line in _lines(capsys)]))
    assert seen == [("a", []), ("b", ["Grad-CAM: 1/3 models"]), ("c", ["Grad-CAM: 2/3 models"])]
    (last,) = _lines(capsys)
    assert re.fullmatch(r"Grad-CAM: 3/3 models, \d+ s elapsed", last), last
