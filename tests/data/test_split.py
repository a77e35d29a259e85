"""Split: slide-grouped stratified assignment, the leaky random option, and split.csv."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from glomx.data.catalogue import Record, read_catalogue
from glomx.data.split import (
    SPLITS,
    TOLERANCE,
    SplitError,
    SplitRow,
    assign_splits,
    read_split_csv,
    sites_of,
    write_split_csv,
)

VAL, TEST = 0.15, 0.20
TARGET = {"train": 1 - VAL - TEST, "val": VAL, "test": TEST}


def make_records(slides: Sequence[tuple[int, int]]) -> list[Record]:
    """Records for slides given as (class-0 count, class-1 count); no files are needed."""
    return [
        Record(f"S{g:02d}-{i}.png", Path(f"S{g:02d}-{i}.png"), int(i >= n0), f"S{g:02d}")
        for g, (n0, n1) in enumerate(slides)
        for i in range(n0 + n1)
    ]


def uneven_slides(seed: int = 0, n: int = 30) -> list[tuple[int, int]]:
    """Slides of very different sizes; class 1 concentrated in a third of them, like the data."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(5, 60, n)
    rates = np.where(np.arange(n) % 3 == 0, 0.6, 0.05)
    ones = rng.binomial(sizes, rates)
    return [(int(s - k), int(k)) for s, k in zip(sizes, ones, strict=True)]


SITE_REGEX = "^(?P<site>[^_-]+)"


def sited(records: Sequence[Record], sites: int = 3) -> list[Record]:
    """The same records with slide ids prefixed by one of ``sites`` sites (round robin)."""
    slides = sorted({r.slide for r in records})
    site = {slide: f"L{i % sites}" for i, slide in enumerate(slides)}
    return [
        Record(f"{site[r.slide]}_{r.name}", r.path, r.label, f"{site[r.slide]}_{r.slide}")
        for r in records
    ]


def slides_per_split(records: Sequence[Record], splits: Sequence[str]) -> dict[str, set[str]]:
    return {s: {r.slide for r, x in zip(records, splits, strict=True) if x == s} for s in SPLITS}


def assert_balanced(records: Sequence[Record], splits: Sequence[str], tolerance: float) -> None:
    """Each class's share in each split, hence size and class ratio, is near the target."""
    totals = Counter(r.label for r in records)
    counts = Counter(zip(splits, (r.label for r in records), strict=True))
    for split, fraction in TARGET.items():
        for label in (0, 1):
            share = counts[split, label] / totals[label]
            assert abs(share - fraction) <= tolerance, (split, label, share)


@pytest.mark.parametrize("seed", [0, 1, 42])
def test_grouped_never_shares_a_slide_and_balances_classes(seed: int) -> None:
    records = make_records(uneven_slides())
    splits = assign_splits(records, VAL, TEST, seed, "grouped")
    per_split = slides_per_split(records, splits)
    assert all(per_split.values())
    assert not (per_split["train"] & per_split["val"])
    assert not (per_split["train"] & per_split["test"])
    assert not (per_split["val"] & per_split["test"])
    assert_balanced(records, splits, TOLERANCE)
    prevalence = sum(r.label for r in records) / len(records)
    for split in SPLITS:
        labels = [r.label for r, s in zip(records, splits, strict=True) if s == split]
        assert abs(np.mean(labels) - prevalence) <= 0.05, split


def test_grouped_same_seed_same_split_and_seed_matters() -> None:
    records = make_records(uneven_slides())
    first = assign_splits(records, VAL, TEST, 7, "grouped")
    assert assign_splits(records, VAL, TEST, 7, "grouped") == first
    others = {tuple(assign_splits(records, VAL, TEST, seed, "grouped")) for seed in range(5)}
    assert len(others) > 1


@pytest.mark.parametrize("strategy", ["grouped", "random"])
def test_split_does_not_depend_on_record_order(strategy: str) -> None:
    records = make_records(uneven_slides())
    shuffled = records[:]
    random.Random(0).shuffle(shuffled)
    a = assign_splits(records, VAL, TEST, 3, strategy)
    b = assign_splits(shuffled, VAL, TEST, 3, strategy)
    by_name = dict(zip((r.name for r in shuffled), b, strict=True))
    assert [by_name[r.name] for r in records] == a


def test_too_few_slides_is_refused() -> None:
    with pytest.raises(SplitError, match=r"2 slide.*at least 3"):
        assign_splits(make_records([(10, 5), (10, 5)]), VAL, TEST, 0, "grouped")


def test_class_in_too_few_slides_is_refused() -> None:
    records = make_records([(10, 5), (10, 5), (10, 0), (10, 0), (10, 0)])
    with pytest.raises(SplitError, match="class 1 occurs in 2 slide"):
        assign_splits(records, VAL, TEST, 0, "grouped")


@pytest.mark.parametrize(("val", "test"), [(0, 0.2), (0.2, 0), (0.5, 0.5), (-0.1, 0.2), (0.1, 1.2)])
def test_fractions_out_of_range_are_refused(val: float, test: float) -> None:
    with pytest.raises(SplitError, match="fractions"):
        assign_splits(make_records(uneven_slides()), val, test, 0, "grouped")


def test_unknown_strategy_is_refused() -> None:
    with pytest.raises(SplitError, match="unknown split strategy 'slide'"):
        assign_splits(make_records(uneven_slides()), VAL, TEST, 0, "slide")  # type: ignore[arg-type]


def test_random_is_stratified_per_image_and_leaks_slides() -> None:
    records = make_records(uneven_slides())
    splits = assign_splits(records, VAL, TEST, 0, "random")
    assert assign_splits(records, VAL, TEST, 0, "random") == splits
    assert_balanced(records, splits, 0.02)
    per_split = slides_per_split(records, splits)
    assert per_split["train"] & per_split["test"]  # the leak the grouped strategy avoids


def test_random_needs_three_images_per_class() -> None:
    records = make_records([(20, 1), (20, 1), (20, 0)])
    with pytest.raises(SplitError, match="class 1 has 2 image"):
        assign_splits(records, VAL, TEST, 0, "random")


def test_split_csv_round_trips(tmp_path: Path) -> None:
    records = make_records(uneven_slides(n=6))
    splits = assign_splits(records, VAL, TEST, 0, "random")
    path = tmp_path / "prepared" / "split.csv"
    write_split_csv(path, records, splits)
    assert path.read_text().splitlines()[0] == "name,label,slide,split"
    expected = [SplitRow(r.name, r.label, r.slide, s) for r, s in zip(records, splits, strict=True)]
    assert read_split_csv(path) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name,label,split\na.png,0,train\n", "has columns"),
        ("name,label,slide,split\na.png,0,a,holdout\n", "line 2: split 'holdout'"),
        ("name,label,slide,split\na.png,2,a,train\n", "line 2: .*label '2'"),
    ],
)
def test_malformed_split_csv_is_refused(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "split.csv").write_text(text)
    with pytest.raises(SplitError, match=message):
        read_split_csv(tmp_path / "split.csv")


def test_real_data_grouped_split_is_honest_and_balanced(real_data: Path) -> None:
    records = read_catalogue(real_data).records
    splits = assign_splits(records, VAL, TEST, 42, "grouped")
    per_split = slides_per_split(records, splits)
    assert sum(len(s) for s in per_split.values()) == len({r.slide for r in records}) == 24
    for split in SPLITS:
        labels = {r.label for r, s in zip(records, splits, strict=True) if s == split}
        assert labels == {0, 1}, split
    assert_balanced(records, splits, TOLERANCE)


def test_sites_of_reads_the_site_group() -> None:
    assert sites_of(["SAS_1", "S-2006-005094", "x"], "^(?P<site>[^_-]+)_").tolist() == [
        "SAS",
        "other",
        "other",
    ]
    with pytest.raises(SplitError, match="site"):
        sites_of(["SAS_1"], "^[A-Z]+")


def site_share_gap(records: Sequence[Record], splits: Sequence[str]) -> float:
    """Largest gap, over sites, between a site's share of non-test slides in val and val's."""
    split_of = {r.slide: s for r, s in zip(records, splits, strict=True)}
    site_of = dict(zip(split_of, sites_of(list(split_of), SITE_REGEX), strict=True))
    gaps = []
    for site in set(site_of.values()):
        rest = [g for g in split_of if site_of[g] == site and split_of[g] != "test"]
        share = sum(split_of[g] == "val" for g in rest) / len(rest)
        gaps.append(abs(share - VAL / (1 - TEST)))
    return max(gaps)


@pytest.mark.parametrize("seed", [0, 2, 7])
def test_site_balance_keeps_test_and_spreads_every_site_over_train_and_val(seed: int) -> None:
    records = sited(make_records(uneven_slides(seed, n=36)))
    by_class = assign_splits(records, VAL, TEST, seed, "grouped")
    by_site = assign_splits(records, VAL, TEST, seed, "grouped", SITE_REGEX)
    assert [s == "test" for s in by_site] == [s == "test" for s in by_class]
    assert by_site == assign_splits(records, VAL, TEST, seed, "grouped", SITE_REGEX)
    # ~8 non-test slides per site: within one slide of val's share, where classes alone miss
    assert site_share_gap(records, by_site) < 0.07 < site_share_gap(records, by_class)
    for split in ("train", "val"):
        assert {r.label for r, s in zip(records, by_site, strict=True) if s == split} == {0, 1}


def test_real_data_site_balance_gives_val_every_site_and_keeps_test(real_data: Path) -> None:
    records = read_catalogue(real_data).records
    by_class = assign_splits(records, VAL, TEST, 42, "grouped")
    by_site = assign_splits(records, VAL, TEST, 42, "grouped", SITE_REGEX)
    assert [s == "test" for s in by_site] == [s == "test" for s in by_class]
    sites = sites_of([r.slide for r in records], SITE_REGEX)
    for split in ("train", "val"):
        held = Counter(
            (site, r.label)
            for site, r, s in zip(sites, records, by_site, strict=True)
            if s == split
        )
        assert {site for site, _ in held} == {"SAS", "SESCAM", "VUHSK"}, split
        assert {label for _, label in held} == {0, 1}, split
