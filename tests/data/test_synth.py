"""Synthetic dataset: challenge layout, image format, names, determinism, class signal."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from glomx.data.synth import CLASS_DIRS, MARKER, data_kind, make_dataset

SLIDE_REGEX = re.compile(r"^(?P<slide>.+?)(?:_PAS_.*|-\d+)\.png$")  # params.yaml prepare
NAME = re.compile(r"^S-\d{4}-\d{6}_PAS_(\d)of(\d)_[0-9a-f]{24}\.png$")
SIZES = (48, 96)


def _make(out: Path, **kwargs: object) -> dict:
    options: dict = {"n": 30, "seed": 3, "size_range": SIZES, "positive_fraction": 0.4}
    return make_dataset(out, **{**options, **kwargs})


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth") / "data"
    return out, _make(out, workers=2)


def _rows(out: Path) -> list[tuple[str, int]]:
    with (out / "public.csv").open(newline="") as fh:
        reader = csv.reader(fh)
        assert next(reader) == ["name", "ground truth"]
        return [(name, int(label)) for name, label in reader]


def test_layout_matches_the_challenge(dataset: tuple[Path, dict]) -> None:
    out, summary = dataset
    rows = _rows(out)
    assert len(rows) == 30 == summary["n"]
    assert sum(label for _, label in rows) == summary["class_1"] == 12
    for label, folder in CLASS_DIRS.items():
        listed = {name for name, lab in rows if lab == label}
        assert {p.name for p in (out / folder).iterdir()} == listed
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [*CLASS_DIRS.values(), "public.csv", MARKER]
    )


def test_images_are_opaque_rgba_of_varied_size(dataset: tuple[Path, dict]) -> None:
    out, _ = dataset
    shapes = set()
    for name, label in _rows(out):
        with Image.open(out / CLASS_DIRS[label] / name) as im:
            assert im.mode == "RGBA"
            assert SIZES[0] <= min(im.size) <= max(im.size) <= SIZES[1]
            assert np.asarray(im.getchannel("A")).min() == 255
            shapes.add(im.size)
    assert any(w != h for w, h in shapes)
    assert len(shapes) > 10


def test_names_and_slides(dataset: tuple[Path, dict]) -> None:
    out, summary = dataset
    slides_by_label: dict[int, set[str]] = {0: set(), 1: set()}
    for name, label in _rows(out):
        match = NAME.match(name)
        assert match, name
        assert 1 <= int(match[1]) <= int(match[2]) <= 4
        slide_match = SLIDE_REGEX.match(name)
        assert slide_match
        slide = slide_match["slide"]
        assert name.startswith(f"{slide}_PAS_") and re.fullmatch(r"S-\d{4}-\d{6}", slide)
        slides_by_label[label].add(slide)
    assert len(slides_by_label[0] | slides_by_label[1]) == summary["slides"] == 6  # floor
    assert len(slides_by_label[1]) == summary["slides_with_class_1"] >= 3


def test_marker_and_data_kind(dataset: tuple[Path, dict], tmp_path: Path) -> None:
    out, summary = dataset
    marker = json.loads((out / MARKER).read_text())
    assert marker == summary and marker["seed"] == 3 and marker["synthetic"]
    assert data_kind(out) == "synthetic"
    assert data_kind(tmp_path) == "real"


def test_same_seed_same_bytes_whatever_the_workers(
    dataset: tuple[Path, dict], tmp_path: Path
) -> None:
    out, _ = dataset
    again = tmp_path / "again"
    _make(again, workers=1)
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for rel in files:
        assert (out / rel).read_bytes() == (again / rel).read_bytes(), rel
    other = tmp_path / "other"
    _make(other, seed=4, workers=1)
    assert (other / "public.csv").read_bytes() != (out / "public.csv").read_bytes()


def _pale_fraction(path: Path) -> float:
    """Share of near-white pixels (open lumina) in the central 40 % box of a patch."""
    rgb = np.asarray(Image.open(path))[..., :3]
    h, w = rgb.shape[:2]
    centre = rgb[int(0.3 * h) : int(0.7 * h), int(0.3 * w) : int(0.7 * w)]
    return float((centre.min(axis=-1) > 170).mean())


def test_non_sclerotic_tufts_have_open_loops(dataset: tuple[Path, dict]) -> None:
    out, _ = dataset
    pale = {0: [], 1: []}
    for name, label in _rows(out):
        pale[label].append(_pale_fraction(out / CLASS_DIRS[label] / name))
    assert np.mean(pale[0]) > 3 * np.mean(pale[1])
    assert np.median(pale[0]) > np.percentile(pale[1], 90)


def test_rerun_replaces_a_synthetic_folder_but_refuses_others(tmp_path: Path) -> None:
    out = tmp_path / "data"
    _make(out, n=12, workers=1)
    _make(out, n=8, seed=5, workers=1)
    assert len(_rows(out)) == 8
    assert sum(1 for _ in out.rglob("*.png")) == 8
    real = tmp_path / "real"
    real.mkdir()
    (real / "public.csv").write_text("name,ground truth\n")
    with pytest.raises(FileExistsError, match="not a synthetic dataset"):
        _make(real, workers=1)
    assert (real / "public.csv").read_text() == "name,ground truth\n"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n": 1}, "n must be"),
        ({"size_range": (96, 48)}, "size_range"),
        ({"size_range": (8, 48)}, "size_range"),
        ({"positive_fraction": 1.0}, "positive_fraction"),
        ({"n_slides": 0}, "n_slides"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _make(tmp_path / "data", **kwargs)
    assert not (tmp_path / "data").exists()
