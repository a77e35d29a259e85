"""Split and folds: slide-grouped stratified assignment, cross-validation folds balanced by
class and site, the inner-validation slides, the leaky random option, and split.csv."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from glomx.data.catalogue import Record, read_catalogue
from glomx.data.split import (
    NO_FOLD,
    SPLITS,
    TOLERANCE,
    SplitError,
    SplitRow,
    assign_folds,
    assign_splits,
    inner_validation,
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
    folds = assign_folds(records, splits, 3, 0, "random")
    path = tmp_path / "prepared" / "split.csv"
    write_split_csv(path, records, splits, folds)
    assert path.read_text().splitlines()[0] == "name,label,slide,split,fold"
    expected = [
        SplitRow(r.name, r.label, r.slide, s, k)
        for r, s, k in zip(records, splits, folds, strict=True)
    ]
    assert read_split_csv(path) == expected
    assert {r.fold for r in expected if r.split == "test"} == {NO_FOLD}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name,label,split\na.png,0,train\n", "has columns"),
        ("name,label,slide,split\na.png,0,a,train\n", "has columns"),  # before folds
        ("name,label,slide,split,fold\na.png,0,a,holdout,0\n", "line 2: split 'holdout'"),
        ("name,label,slide,split,fold\na.png,2,a,train,0\n", "line 2: .*label '2'"),
        ("name,label,slide,split,fold\na.png,0,a,train,\n", "line 2: .*fold ''"),
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


def fold_sites(records: Sequence[Record], folds: Sequence[int]) -> Counter[tuple[int, str]]:
    """Slides per (fold, site)."""
    slide_fold = {r.slide: k for r, k in zip(records, folds, strict=True) if k != NO_FOLD}
    sites = sites_of(list(slide_fold), SITE_REGEX)
    return Counter((k, site) for k, site in zip(slide_fold.values(), sites, strict=True))


@pytest.mark.parametrize("seed", [0, 2, 7])
def test_folds_group_slides_and_balance_classes_and_sites(seed: int) -> None:
    records = sited(make_records(uneven_slides(seed, n=36)))
    splits = assign_splits(records, VAL, TEST, seed, "grouped")
    folds = assign_folds(records, splits, 3, seed, "grouped", SITE_REGEX)
    assert folds == assign_folds(records, splits, 3, seed, "grouped", SITE_REGEX)
    assert [k == NO_FOLD for k in folds] == [s == "test" for s in splits]  # test is untouched
    fold_of: dict[str, int] = {}
    for r, k in zip(records, folds, strict=True):
        assert fold_of.setdefault(r.slide, k) == k  # a slide lies in one fold
    for label in (0, 1):  # each fold holds about a third of each class
        held = Counter(k for r, k in zip(records, folds, strict=True) if r.label == label)
        total = sum(v for k, v in held.items() if k != NO_FOLD)
        assert all(abs(held[k] / total - 1 / 3) < 0.08 for k in range(3)), held
    # every site in every fold, ~8 non-test slides per site: 2-3 of them per fold
    per_site = fold_sites(records, folds)
    assert {k for k, _ in per_site} == {0, 1, 2}
    assert all(2 <= per_site[k, site] <= 4 for k in range(3) for site in ("L0", "L1", "L2"))


def test_folds_refuse_more_folds_than_sclerotic_slides() -> None:
    records = make_records([(20, 3), (20, 3), (20, 0), (20, 3), (20, 0)] * 2)
    splits = assign_splits(records, VAL, TEST, 0, "grouped")
    with pytest.raises(SplitError, match=r"lower prepare\.split\.folds"):
        assign_folds(records, splits, 6, 0, "grouped")
    with pytest.raises(SplitError, match="at least 2"):
        assign_folds(records, splits, 1, 0, "grouped")


def test_random_folds_are_stratified_per_image() -> None:
    records = make_records(uneven_slides(n=24))
    splits = assign_splits(records, VAL, TEST, 0, "random")
    folds = assign_folds(records, splits, 4, 0, "random")
    assert sorted(set(folds)) == [NO_FOLD, 0, 1, 2, 3]
    assert [k == NO_FOLD for k in folds] == [s == "test" for s in splits]


def test_inner_validation_sets_apart_both_classes_and_every_site() -> None:
    records = sited(make_records(uneven_slides(3, n=24)))
    slides, labels = [r.slide for r in records], [r.label for r in records]
    chosen = inner_validation(slides, labels, 0.25, seed=5, site_regex=SITE_REGEX)
    assert chosen == inner_validation(slides, labels, 0.25, seed=5, site_regex=SITE_REGEX)
    assert 3 <= len(chosen) <= 9 and len(chosen) < len(set(slides))
    assert {r.label for r in records if r.slide in chosen} == {0, 1}
    assert {r.label for r in records if r.slide not in chosen} == {0, 1}
    assert set(sites_of(sorted(chosen), SITE_REGEX).tolist()) == {"L0", "L1", "L2"}
    with pytest.raises(SplitError, match="fewer than 2"):
        inner_validation(["a", "a", "b"], [0, 1, 0], 0.25, seed=0)


def test_real_data_folds_keep_the_test_split_and_give_each_fold_every_site(
    real_data: Path,
) -> None:
    records = read_catalogue(real_data).records
    splits = assign_splits(records, VAL, TEST, 42, "grouped")
    test_slides = sorted({r.slide for r, s in zip(records, splits, strict=True) if s == "test"})
    assert test_slides == [  # the test slides every earlier run was scored on
        "SAS_21908_001", "SAS_21924_001", "SESCAM_2_0", "SESCAM_6_0", "VUHSK_1502", "VUHSK_2072"
    ]  # fmt: skip
    folds = assign_folds(records, splits, 3, 42, "grouped", SITE_REGEX)
    assert sum(k != NO_FOLD for k in folds) == 618
    per_site = fold_sites(records, folds)
    assert all(per_site[k, site] == 2 for k in range(3) for site in ("SAS", "SESCAM", "VUHSK"))
    for k in range(3):
        assert {r.label for r, f in zip(records, folds, strict=True) if f == k} == {0, 1}
