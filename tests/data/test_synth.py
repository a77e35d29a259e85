"""Synthetic dataset: challenge layout, image format, names, determinism, class signal."""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from glomx.cli import main
from glomx.data.synth import CLASS_DIRS, MARKER, challenge_plan, data_kind, make_dataset

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


# --- the challenge-shaped set (glomx synth --like challenge) ----------------------------------

PARAMS = yaml.safe_load((Path(__file__).parents[2] / "params.yaml").read_text())["prepare"]


def _shape(scale: float) -> tuple[dict, np.ndarray, Counter, Counter]:
    """Summary, (height, width) per patch, patches per slide and slides per site of the plan."""
    summary, patches = challenge_plan(Path("data"), scale, seed=0)
    slide_re = re.compile(PARAMS["slide_regex"])
    site_re = re.compile(PARAMS["site_regex"])
    slides = Counter(slide_re.fullmatch(p.path.name)["slide"] for p in patches)
    sites = Counter(site_re.match(slide)["site"] for slide in slides)
    return summary, np.array([(p.height, p.width) for p in patches]), slides, sites


def test_challenge_plan_has_the_challenge_shape() -> None:
    """At full size, drawn in milliseconds: the figures the challenge set is described by."""
    summary, sizes, slides, sites = _shape(1.0)
    assert (summary["n"], summary["class_0"], summary["class_1"]) == (5758, 4704, 1054)
    assert summary["like"] == "challenge" and summary["synthetic"]
    assert sizes.min() == 256 and sizes.max() == 915
    assert abs(np.median(sizes[:, 0]) - 530) <= 10 and abs(np.median(sizes[:, 1]) - 540) <= 10
    assert len(slides) == 215 == summary["slides"]
    counts = sorted(slides.values())
    assert counts[0] == 1 and counts[-1] >= 200 and np.median(counts) <= 20  # skewed
    assert set(sites) == {"SYNA", "SYNB", "SYNC"} and min(sites.values()) >= 20


@pytest.mark.parametrize("scale", [0.05, 0.2])
def test_a_fraction_keeps_the_shape(scale: float) -> None:
    summary, sizes, slides, sites = _shape(scale)
    assert summary["n"] == round(5758 * scale)
    assert abs(summary["class_1"] / summary["n"] - 1054 / 5758) < 0.005
    assert sizes.min() >= 256 and sizes.max() <= 915
    assert abs(np.median(sizes) - 535) <= 25
    assert len(slides) == max(12, round(215 * scale))
    counts = sorted(slides.values())
    assert counts[-1] >= 5 * np.median(counts)  # a few large slides, many small ones
    assert len(sites) == 3


def test_cli_writes_a_small_challenge_like_set(tmp_path: Path) -> None:
    out = tmp_path / "data"
    assert main(["synth", str(out), "--like", "challenge", "--scale", "0.003"]) == 0
    rows = _rows(out)
    assert len(rows) == 17 and sum(label for _, label in rows) == 3
    assert json.loads((out / MARKER).read_text())["like"] == "challenge"
    name, label = rows[0]
    with Image.open(out / CLASS_DIRS[label] / name) as im:
        assert im.mode == "RGBA" and 256 <= min(im.size) <= max(im.size) <= 915


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--like", "challenge", "--n", "10"], "--like challenge fixes the count"),
        (["--scale", "0.5"], "--scale is a fraction of the challenge set"),
        (["--like", "challenge", "--scale", "0"], "scale must be in (0, 1]"),
    ],
)
def test_cli_refuses_contradictory_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["synth", str(tmp_path / "data"), *args])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("glomx synth failed: ") and message in err
    assert not (tmp_path / "data").exists()
