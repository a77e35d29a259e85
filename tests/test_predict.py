"""glomx predict on folders mixing good, corrupt and non-image files."""

from __future__ import annotations

import csv
import os
import re
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
from synthetic_images import images_for, write_png

from glomx.cli import main
from glomx.data.adapt import dihedral_views
from glomx.data.images import load_image
from glomx.predict import collect_files, load_model, predict_files

GOOD = ("SAS_1-0.png", "SAS_1-1.png", "VUHSK_7-3.png")


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _cli(*argv: str | Path) -> int:
    """``glomx predict ARGV`` in this process, through the command's own error handling."""
    try:
        return main(["predict", *map(str, argv)])
    except SystemExit as exit_:
        return int(exit_.code or 0)


def test_collect_files_recurses_by_extension(png_folder: Path) -> None:
    names = sorted(p.name for p in collect_files([png_folder]))
    assert names == sorted([*GOOD, "SAS_1-9.png", "VUHSK_7-8.png"])
    # a file named explicitly is taken whatever its extension
    assert collect_files([png_folder / "notes.txt"]) == [png_folder / "notes.txt"]


def test_predict_writes_rows_errors_and_slide_summary(
    png_folder: Path, lr_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out" / "pred.csv"
    files = collect_files([png_folder, png_folder / "notes.txt"])
    model = load_model(lr_dir)
    summary = predict_files(files, model, out, workers=2, batch_size=2, progress=False)
    assert (summary.predicted, summary.failed) == (3, 3)
    rows = {r["name"]: r for r in _rows(out)}
    assert "corrupt or truncated" in rows["SAS_1-9.png"]["error"]
    assert rows["SAS_1-9.png"]["probability"] == rows["SAS_1-9.png"]["label"] == ""
    assert "not a readable image" in rows["VUHSK_7-8.png"]["error"]
    assert rows["notes.txt"]["error"] and rows["notes.txt"]["slide"] == ""
    good = [rows[n] for n in GOOD]
    assert all(r["error"] == "" and r["model"] == f"{lr_dir} (unregistered)" for r in good)
    proba = np.array([float(r["probability"]) for r in good])
    labels = [int(r["label"]) for r in good]
    assert labels == (proba >= model.classifier.meta.threshold).astype(int).tolist()
    assert proba[0] > proba[1]  # the dark, sclerotic-like patch scores higher
    slides = {r["slide"]: r for r in _rows(out.with_name("pred_slides.csv"))}
    sas = slides["SAS_1"]
    assert (sas["n_glomeruli"], sas["n_sclerotic"], sas["n_errors"]) == (
        "2",
        str(sum(labels[:2])),
        "1",
    )
    assert float(sas["percent_sclerotic"]) == pytest.approx(50 * sum(labels[:2]))
    assert slides["(no slide id)"]["n_errors"] == "1"


def test_tta_and_threshold(png_folder: Path, lr_dir: Path, tmp_path: Path) -> None:
    plain, tta = tmp_path / "plain.csv", tmp_path / "tta.csv"
    path = png_folder / "SAS_1-0.png"
    model = load_model(lr_dir)
    predict_files([path], model, plain, workers=1, threshold=0.0, progress=False)
    predict_files([path], model, tta, workers=1, tta=True, threshold=1.01, progress=False)
    assert (_rows(plain)[0]["label"], _rows(tta)[0]["label"]) == ("1", "0")
    image = load_image(path, model.classifier.meta.preprocessing)[None]
    expected = np.mean([model.classifier.predict_proba(v.copy()) for v in dihedral_views(image)])
    assert float(_rows(tta)[0]["probability"]) == pytest.approx(expected, abs=1e-5)


def test_exit_codes_and_refusals(png_folder: Path, lr_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "p.csv"
    assert _cli(png_folder, "--model", lr_dir, "--out", out, "-q") == 0
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.png").write_text("nope")
    assert _cli(bad, "--model", lr_dir, "--out", out, "-q") == 1  # nothing predicted
    # an image larger than --max-pixels is refused with the reason, never decoded
    assert _cli(png_folder / "SAS_1-0.png", "--model", lr_dir, "--out", out,
                "--max-pixels", "100", "-q") == 1  # fmt: skip
    assert "exceeds the limit of 100 pixels" in _rows(out)[0]["error"]
    assert _cli(tmp_path / "missing", "--model", lr_dir, "--out", out) == 2
    assert _cli(png_folder, "--model", tmp_path, "--out", out) == 1  # not a model folder


def test_registry_uri_without_a_registry_is_a_clear_error(
    png_folder: Path, tmp_path: Path, isolated_mlflow: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _cli(png_folder, "--out", tmp_path / "p.csv") == 1  # default models:/glomx@champion
    assert "no MLflow registry at" in capsys.readouterr().err
    assert not Path(isolated_mlflow.removeprefix("sqlite:///")).exists()  # nothing created


def test_png_cut_short_gets_an_error_row(
    cut_short_png: bytes, lr_dir: Path, tmp_path: Path
) -> None:
    path = tmp_path / "SAS_1-cut.png"
    path.write_bytes(cut_short_png)
    out = tmp_path / "p.csv"
    assert _cli(path, "--model", lr_dir, "--out", out, "--workers", "1", "-q") == 1
    (row,) = _rows(out)
    assert row["probability"] == row["label"] == ""
    assert row["error"].startswith(f"{path}: corrupt or truncated image (pixel data ends after")


def test_greyscale_png_gets_an_error_row_not_a_probability(
    png_folder: Path, lr_dir: Path, tmp_path: Path
) -> None:
    from PIL import Image

    path = tmp_path / "SAS_1-grey.png"
    with Image.open(png_folder / GOOD[0]) as colour:
        colour.convert("L").save(path)
    out = tmp_path / "p.csv"
    assert _cli(path, "--model", lr_dir, "--out", out, "--workers", "1", "-q") == 1
    (row,) = _rows(out)
    assert row["probability"] == row["label"] == ""
    assert row["error"].startswith(f"{path}: greyscale image (PIL mode L)")


def test_model_column_says_whether_a_model_folder_was_registered(
    lr_dir: Path,
    tmp_path: Path,
    isolated_mlflow: str,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    copy = tmp_path / "elsewhere" / "lr"
    shutil.copytree(lr_dir, copy)
    assert load_model(copy).source == f"{copy} (unregistered)"  # no registry at all
    assert not Path(isolated_mlflow.removeprefix("sqlite:///")).exists()  # nothing created
    version = request.getfixturevalue("registered_lr")  # lr_dir's files, registered
    assert load_model(copy).source == f"{copy} (models:/glomx/{version})"
    (copy / "glomx.json").write_text((copy / "glomx.json").read_text() + "\n")
    assert load_model(copy).source == f"{copy} (unregistered)"  # other files: not that version
    with socket.socket() as closed:  # a port nobody listens on: a tracking server that is down
        closed.bind(("127.0.0.1", 0))
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{closed.getsockname()[1]}")
        assert load_model(copy).source == f"{copy} (registry unreachable)"


def test_progress_off_a_terminal_is_a_line_with_images_per_second(
    png_folder: Path, lr_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = collect_files([png_folder])
    predict_files(files, load_model(lr_dir), tmp_path / "p.csv", workers=1, batch_size=2)
    (line,) = capsys.readouterr().err.splitlines()  # one at the end, within the 30 s interval
    assert re.fullmatch(r"predict: 5/5 images, \d+ s elapsed, [\d.]+ images/s", line), line


def test_ray_data_writes_the_same_rows_in_the_same_order(
    png_folder: Path, lr_dir: Path, tmp_path: Path
) -> None:
    """On a real local Ray instance (Ray is a dependency: no skip): the patches of
    ``png_folder`` (good, corrupt and not images) and 21 more over three slides, one of them
    named in bytes that are not UTF-8, in batches of 4 spread over the actor pool."""
    folder = tmp_path / "slides"
    shutil.copytree(png_folder, folder)
    more = images_for((np.arange(21) % 3 == 0).astype(np.uint8), seed=11, size=20)
    for i, image in enumerate(more):
        write_png(folder / f"KPMP_{i % 3}-{i}.png", image)
    write_png(folder / os.fsdecode(b"KPMP_0-\xff.png"), more[0])
    local, on_ray = tmp_path / "local.csv", tmp_path / "ray.csv"
    common = ("--model", lr_dir, "--batch-size", "4", "-q")
    assert _cli(folder, "--out", local, "--workers", "2", *common) == 0
    assert _cli(folder, "--out", on_ray, "--ray", *common) == 0
    rows = _rows(local)
    assert len(rows) == 3 + 2 + 21 + 1 and sum(r["error"] != "" for r in rows) == 2
    assert any(r["note"] for r in rows)  # the name that is not UTF-8 was predicted too
    # byte-identical, as docs/usage.md says: same order, probabilities, errors and quoting
    assert on_ray.read_bytes() == local.read_bytes()
    assert (tmp_path / "ray_slides.csv").read_bytes() == (
        tmp_path / "local_slides.csv"
    ).read_bytes()
