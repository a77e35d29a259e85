"""Train/val/test assignment and cross-validation folds: slide-grouped and stratified (honest)
or per-image (leaky).

``grouped`` keeps every slide in one split and balances both classes across the splits: each
class's share in each split should match the requested fraction, which keeps both the split
sizes and the class ratio per split close to the targets. Slides differ wildly in size and
class mix, so the assignment is searched: seeded random starts, each improved by moving one
slide or swapping two until nothing helps; the first start whose every class share is within
``TOLERANCE`` of its target wins (the best of all starts if none is). The seed picks among the
many good assignments, so different seeds give different honest splits.

Cross-validation (:func:`assign_folds`) divides the non-test slides into K folds by the same
search, balancing each class's images and, with a site regex (``prepare.split.site_regex``:
each slide's lab or hospital), each site's slides: balancing classes alone can hand one lab's
slides mostly to one fold. :func:`inner_validation` picks, inside a fold's training
slides, the few slides that fit-time choices (epoch, C, early stopping) are made on, so that no
choice ever sees the held-out fold. The pipeline writes no validation store any more: the
``val`` fraction only shapes the class search that picks the test slides, and is kept so that
the test split stays the one every earlier run was scored on.

``random`` is the original study's per-image stratified split: patches of one slide land in
different splits (and folds), which leaks stain and tissue between training and test.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from sklearn.model_selection import StratifiedKFold, train_test_split

from glomx.data.catalogue import Record
from glomx.errors import GlomxError

SPLITS = ("train", "val", "test")
COLUMNS = ("name", "label", "slide", "split", "fold")
STRATEGIES = ("grouped", "random")
TOLERANCE = 0.02  # accepted |class share in a split - split fraction|, grouped strategy
RESTARTS = 200  # seeded starts tried before settling for the best one
_PENALTY = 1e3  # per split that lacks a class: dominates any share deviation
NO_FOLD = -1  # fold of a test record in split.csv: it belongs to no cross-validation fold
Strategy = Literal["grouped", "random"]


class SplitError(GlomxError, ValueError):
    """No honest split exists for these records and fractions, or a split file is malformed."""


@dataclass(frozen=True)
class SplitRow:
    """One row of ``split.csv``."""

    name: str
    label: int
    slide: str
    split: str
    fold: int = NO_FOLD


def assign_splits(
    records: Sequence[Record],
    val: float,
    test: float,
    seed: int,
    strategy: Strategy = "grouped",
) -> list[str]:
    """One of ``train``/``val``/``test`` per record, in record order; same seed, same split."""
    if not (0 < val < 1 and 0 < test < 1 and val + test < 1):
        raise SplitError(
            f"split fractions val={val}, test={test} must each be in (0, 1) with val + test < 1 "
            "so that train, val and test are all non-empty"
        )
    if strategy not in STRATEGIES:
        raise SplitError(f"unknown split strategy {strategy!r}; use one of {STRATEGIES}")
    fractions = np.array([1 - val - test, val, test])
    order = sorted(range(len(records)), key=lambda i: records[i].name)
    ordered = [records[i] for i in order]
    if strategy == "grouped":
        chosen = _grouped(ordered, fractions, seed)
    else:
        chosen = _random(ordered, fractions, seed)
    splits = [""] * len(records)
    for i, split in zip(order, chosen, strict=True):
        splits[i] = SPLITS[split]
    _check_classes(records, splits)
    return splits


def sites_of(slides: Sequence[str], site_regex: str) -> np.ndarray:
    """Site of each slide: the regex's group ``site`` (``other`` where it does not match)."""
    pattern = re.compile(site_regex)
    if "site" not in pattern.groupindex:
        raise SplitError(f"site regex {site_regex!r} needs a group (?P<site>...)")
    return np.array([(m["site"] if (m := pattern.match(s)) else "other") for s in slides])


def _random(records: Sequence[Record], fractions: np.ndarray, seed: int) -> list[int]:
    """Per-image stratified split (leaky: slides are shared between splits)."""
    labels = np.array([r.label for r in records])
    for label in (0, 1):
        if (labels == label).sum() < 3:
            raise SplitError(
                f"class {label} has {(labels == label).sum()} image(s); each of train, val and "
                "test needs at least one, so at least 3 are required"
            )
    idx = np.arange(len(records))
    rest, test = train_test_split(idx, test_size=fractions[2], stratify=labels, random_state=seed)
    val_size = fractions[1] / (fractions[0] + fractions[1])
    _, val = train_test_split(rest, test_size=val_size, stratify=labels[rest], random_state=seed)
    chosen = np.zeros(len(records), dtype=int)
    chosen[val] = 1
    chosen[test] = 2
    return chosen.tolist()


def _grouped(records: Sequence[Record], fractions: np.ndarray, seed: int) -> list[int]:
    """Slide-grouped, class-balanced split found by seeded local search."""
    slides = sorted({r.slide for r in records})
    index = {slide: i for i, slide in enumerate(slides)}
    counts = np.zeros((len(slides), 2))
    for r in records:
        counts[index[r.slide], r.label] += 1
    if len(slides) < 3:
        raise SplitError(
            f"{len(slides)} slide(s) found; a slide-grouped split needs at least 3 (one per "
            "split). Add slides, check prepare.slide_regex, or use strategy 'random' (leaky)"
        )
    for label in (0, 1):
        holding = int((counts[:, label] > 0).sum())
        if holding < 3:
            raise SplitError(
                f"class {label} occurs in {holding} slide(s); train, val and test each need it "
                "from a slide of their own, so at least 3 are required. Add slides with this "
                "class, or use strategy 'random' (leaky)"
            )
    assignment = _search(counts, fractions, np.random.default_rng(seed))
    return [int(assignment[index[r.slide]]) for r in records]


def _search(counts: np.ndarray, fractions: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Split index per group (row of ``counts``) whose column shares per split best match
    ``fractions``: the first of the seeded restarts within ``TOLERANCE``, else the best."""
    best, best_score = None, np.inf
    for _ in range(RESTARTS):
        start = rng.choice(len(fractions), size=len(counts), p=fractions)
        assignment, score = _descend(start, counts, fractions)
        if _within(assignment, counts, fractions, TOLERANCE):
            return assignment
        if score < best_score:
            best, best_score = assignment, score
    assert best is not None  # RESTARTS ≥ 1, and every score is finite
    return best


def _partition(
    counts: np.ndarray, sites: np.ndarray | None, fractions: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Part index per slide (row of ``counts``, images per class) with each class's images and,
    given ``sites``, each site's slides divided in ``fractions`` as closely as the search finds."""
    columns = counts
    if sites is not None and len(names := sorted(set(sites.tolist()))) > 1:
        per_site = (sites[:, None] == np.array(names)[None, :]).astype(float)
        columns = np.hstack([counts, per_site])
    return _search(columns, fractions, rng)


def _slide_counts(slides: Sequence[str], labels: Sequence[int]) -> tuple[list[str], np.ndarray]:
    """Sorted distinct slides and their ``(G, 2)`` image counts per class."""
    names = sorted(set(slides))
    index = {slide: i for i, slide in enumerate(names)}
    counts = np.zeros((len(names), 2))
    for slide, label in zip(slides, labels, strict=True):
        counts[index[slide], label] += 1
    return names, counts


def assign_folds(
    records: Sequence[Record],
    splits: Sequence[str],
    k: int,
    seed: int,
    strategy: Strategy = "grouped",
    site_regex: str | None = None,
) -> list[int]:
    """Cross-validation fold (0..k-1) of every non-test record, :data:`NO_FOLD` for test.

    ``grouped``: whole slides per fold, each class's images and each site's slides shared out
    evenly (the split's search, K parts); ``random``: stratified per-image folds (leaky)."""
    rest = [i for i, s in enumerate(splits) if s != "test"]
    labels = np.array([records[i].label for i in rest])
    folds = [NO_FOLD] * len(records)
    if k < 2:
        raise SplitError(f"prepare.split.folds must be at least 2, got {k}")
    if strategy == "random":
        if min(np.bincount(labels, minlength=2)) < k:
            raise SplitError(
                f"a class has fewer than {k} non-test images: lower prepare.split.folds"
            )
        cv = StratifiedKFold(k, shuffle=True, random_state=seed)
        for fold, (_, held) in enumerate(cv.split(np.zeros(len(rest)), labels)):
            for j in held:
                folds[rest[j]] = fold
        return folds
    slides = [records[i].slide for i in rest]
    names, counts = _slide_counts(slides, labels.tolist())
    holding = int((counts[:, 1] > 0).sum())
    if holding < k:
        raise SplitError(
            f"{holding} non-test slide(s) hold class 1, so {k} slide-grouped folds cannot each "
            "hold both classes; lower prepare.split.folds"
        )
    sites = sites_of(names, site_regex) if site_regex else None
    rng = np.random.default_rng([seed, k])
    part = _partition(counts, sites, np.full(k, 1 / k), rng)
    fold_of = dict(zip(names, part.tolist(), strict=True))
    for i, slide in zip(rest, slides, strict=True):
        folds[i] = int(fold_of[slide])
    for fold in range(k):
        present = {int(labels[j]) for j, i in enumerate(rest) if folds[i] == fold}
        if present != {0, 1}:
            raise SplitError(
                f"fold {fold} holds class(es) {sorted(present)} only; lower prepare.split.folds"
            )
    return folds


def inner_validation(
    slides: Sequence[str],
    labels: Sequence[int],
    fraction: float,
    seed: int,
    site_regex: str | None = None,
) -> set[str]:
    """The slides, among a fold's training slides, that fit-time choices are made on: about
    ``fraction`` of each class and site, both classes present; the rest train."""
    if not 0 < fraction < 1:
        raise SplitError(f"cv.inner_val must be in (0, 1), got {fraction}")
    names, counts = _slide_counts(slides, labels)
    if min((counts > 0).sum(axis=0)) < 2:
        raise SplitError(
            "a fold's training slides hold a class on fewer than 2 slides, so no inner "
            "validation slide can be set apart; lower prepare.split.folds or add slides"
        )
    sites = sites_of(names, site_regex) if site_regex else None
    part = _partition(
        counts, sites, np.array([1 - fraction, fraction]), np.random.default_rng(seed)
    )
    chosen = {n for n, p in zip(names, part.tolist(), strict=True) if p == 1}
    held = counts[part == 1].sum(axis=0)
    kept = counts[part == 0].sum(axis=0)
    if (held == 0).any() or (kept == 0).any():
        raise SplitError(
            "no inner validation split of a fold's training slides holds both classes on both "
            "sides; lower prepare.split.folds or add slides"
        )
    return chosen


def _score(totals: np.ndarray, class_totals: np.ndarray, fractions: np.ndarray) -> np.ndarray:
    """Squared share deviation from the target fractions, plus a penalty per empty cell (a
    class, or a site, missing from a split)."""
    deviation = totals / class_totals - fractions[:, None]
    return (deviation**2).sum(axis=(-2, -1)) + _PENALTY * (totals == 0).sum(axis=(-2, -1))


def _descend(
    assignment: np.ndarray, counts: np.ndarray, fractions: np.ndarray
) -> tuple[np.ndarray, float]:
    """Steepest descent over single-slide moves and two-slide swaps."""
    assignment = assignment.copy()
    class_totals = counts.sum(axis=0)
    eye = np.eye(len(fractions))
    while True:
        onehot = eye[assignment]  # (G, S)
        totals = onehot.T @ counts  # (S, C)
        current = float(_score(totals, class_totals, fractions))
        # move slide g to split b: totals + (e_b - e_a(g)) x_g
        move = (eye[None, :, :] - onehot[:, None, :])[..., None] * counts[:, None, None, :]
        move_scores = _score(totals + move, class_totals, fractions)  # (G, S)
        # swap slides g and h: totals + (e_a(h) - e_a(g)) (x_g - x_h)
        direction = onehot[None, :, :] - onehot[:, None, :]  # (G, G, S)
        diff = counts[:, None, :] - counts[None, :, :]  # (G, G, C)
        swap_scores = _score(
            totals + direction[..., None] * diff[:, :, None, :], class_totals, fractions
        )  # (G, G)
        g_move = np.unravel_index(np.argmin(move_scores), move_scores.shape)
        g_swap = np.unravel_index(np.argmin(swap_scores), swap_scores.shape)
        lowest = min(move_scores[g_move], swap_scores[g_swap])
        if lowest >= current - 1e-12:
            return assignment, current
        if move_scores[g_move] <= swap_scores[g_swap]:
            assignment[g_move[0]] = g_move[1]
        else:
            g, h = g_swap
            assignment[g], assignment[h] = assignment[h], assignment[g]


def _within(
    assignment: np.ndarray, counts: np.ndarray, fractions: np.ndarray, tolerance: float
) -> bool:
    """Whether every class share of every split is within ``tolerance`` of its fraction."""
    totals = np.eye(len(fractions))[assignment].T @ counts
    deviation = totals / counts.sum(axis=0) - fractions[:, None]
    return bool(np.abs(deviation).max() <= tolerance and (totals > 0).all())


def _check_classes(records: Sequence[Record], splits: Sequence[str]) -> None:
    """Every split must hold both classes, else its metrics are undefined."""
    for split in SPLITS:
        present = {r.label for r, s in zip(records, splits, strict=True) if s == split}
        if present != {0, 1}:
            raise SplitError(
                f"split {split!r} holds class(es) {sorted(present)} only; too few images or "
                "slides of the other class for the requested fractions"
            )


def write_split_csv(
    path: str | Path,
    records: Sequence[Record],
    splits: Sequence[str],
    folds: Sequence[int] | None = None,
) -> None:
    """Write ``name,label,slide,split,fold`` per record (fold empty for test)."""
    folds = [NO_FOLD] * len(records) if folds is None else folds
    if not len(records) == len(splits) == len(folds):
        raise SplitError(f"{len(records)} records but {len(splits)} splits and {len(folds)} folds")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        writer.writerows(
            [r.name, r.label, r.slide, s, "" if k == NO_FOLD else k]
            for r, s, k in zip(records, splits, folds, strict=True)
        )


def read_split_csv(path: str | Path) -> list[SplitRow]:
    """Read a file written by :func:`write_split_csv`, checking its columns and values."""
    path = Path(path)
    if not path.is_file():
        raise SplitError(f"split file {path} not found; run the prepare stage (dvc repro prepare)")
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames != list(COLUMNS):
            raise SplitError(
                f"{path} has columns {reader.fieldnames}, expected {list(COLUMNS)}; "
                "rerun `dvc repro prepare`"
            )
        rows = []
        for row in reader:
            fold = row["fold"]
            if (
                row["split"] not in SPLITS
                or row["label"] not in ("0", "1")
                or not (fold.isdigit() or (fold == "" and row["split"] == "test"))
            ):
                raise SplitError(
                    f"{path} line {reader.line_num}: split {row['split']!r} / label "
                    f"{row['label']!r} / fold {fold!r}; expected one of {SPLITS}, 0 or 1, and a "
                    "fold number (empty for test)"
                )
            rows.append(
                SplitRow(
                    row["name"],
                    int(row["label"]),
                    row["slide"],
                    row["split"],
                    int(fold) if fold else NO_FOLD,
                )
            )
    return rows


def slide_folds(rows: Sequence[SplitRow]) -> dict[str, int]:
    """Fold of every cross-validated slide (test slides have none)."""
    return {r.slide: r.fold for r in rows if r.fold != NO_FOLD}
