"""Hostile input on real files: names that are not UTF-8, arguments out of range, a locked
store. Each gets a clear message or an escaped row, never a traceback, and nothing complete is
lost. Outputs that cannot be written, and commands killed part-way: tests/test_faults.py."""

from __future__ import annotations

import copy
import csv
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from glomx.cli import main
from glomx.config import Prepare, read
from glomx.data.catalogue import FOLDERS, CatalogueError, read_catalogue
from glomx.data.synth import make_dataset
from glomx.pipeline.prepare import prepare
from glomx.predict import ESCAPED_NOTE, collect_files, load_model, predict_files
from glomx.tracking.pyfunc import MAX_IMAGE_PIXELS, env_limit
from glomx.tracking.registry import promote
from glomx.tracking.store import SQLITE_LOCKED

REPO = Path(__file__).resolve().parents[1]
RAW_NAME = b"SAS_\xff-7.png"  # legal on Linux, not UTF-8
SHOWN = "SAS_\\xff-7.png"  # as reports write it


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:  # strict: every byte is UTF-8
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "data"
    make_dataset(out, 24, seed=3, size_range=(40, 60), n_slides=6, workers=1)
    return out


def test_predict_writes_a_non_utf8_name_escaped_and_says_so(
    png_folder: Path, lr_dir: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(png_folder / "SAS_1-0.png", os.fsdecode(bytes(folder) + b"/" + RAW_NAME))
    shutil.copy(png_folder / "SAS_1-1.png", folder / "SAS_1-1.png")
    out = tmp_path / "pred.csv"
    summary = predict_files(collect_files([folder]), load_model(lr_dir), out, progress=False)
    assert (summary.predicted, summary.failed) == (2, 0)
    rows = {r["name"]: r for r in _rows(out)}
    assert rows[SHOWN]["note"] == ESCAPED_NOTE and rows[SHOWN]["probability"]
    assert rows[SHOWN]["path"] == f"{folder}/{SHOWN}" and rows[SHOWN]["slide"] == "SAS_\\xff"
    assert rows["SAS_1-1.png"]["note"] == ""
    slides = [(r["slide"], r["n_glomeruli"]) for r in _rows(tmp_path / "pred_slides.csv")]
    assert slides == [("SAS_1", "1"), ("SAS_\\xff", "1")]


def test_prepare_reports_a_non_utf8_file_name_escaped(synth_data: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(synth_data, data)
    shutil.copy(
        next((data / FOLDERS[0]).iterdir()), os.fsdecode(bytes(data / FOLDERS[0]) + b"/" + RAW_NAME)
    )
    params = copy.deepcopy(read(REPO / "params.yaml")["prepare"])
    params["image"]["size"], params["workers"] = 16, 1
    with pytest.raises(CatalogueError, match=r"SAS_\\xff-7\.png: .*not valid UTF-8") as err:
        prepare(data, tmp_path / "p", tmp_path / "p.json", Prepare.model_validate(params))
    str(err.value).encode("utf-8")  # printable anywhere
    params["policy"]["unlisted_file"] = "skip"
    counts = prepare(data, tmp_path / "q", tmp_path / "q.json", Prepare.model_validate(params))
    assert counts["skipped"] == 1
    (row,) = _rows(tmp_path / "q" / "problems.csv")
    assert (row["kind"], row["name"]) == ("unlisted_file", SHOWN)
    assert "not valid UTF-8" in row["detail"] and "rename it" in row["fix"]


@pytest.mark.parametrize("bom", [b"", b"\xef\xbb\xbf"], ids=["plain", "bom"])
def test_a_labels_csv_that_is_not_utf8_names_its_line(
    bom: bytes, synth_data: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    shutil.copytree(synth_data, data)
    csv_file = data / "public.csv"
    csv_file.write_bytes(bom + csv_file.read_bytes() + RAW_NAME + b",0\n")
    lines = len((data / "public.csv").read_bytes().splitlines())
    with pytest.raises(CatalogueError, match=rf"not UTF-8 text: line {lines} holds byte 0xff"):
        read_catalogue(data)


def _glomx(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str]:
    """``glomx ARGV`` in this process → (exit status, stderr)."""
    try:
        status = main([str(a) for a in argv])
    except SystemExit as exit_:
        status = exit_.code
    return status, capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
        (["--workers", "0"], "--workers must be at least 1, got 0"),
        (["--threshold", "nan"], "--threshold must be a number from 0 to 1, got nan"),
        (["--threshold", "1.5"], "--threshold must be a number from 0 to 1, got 1.5"),
        (["--threshold=-inf"], "--threshold must be a number from 0 to 1, got -inf"),
    ],
)
def test_predict_arguments_out_of_range_are_one_line(
    args: list[str], message: str, png_folder: Path, lr_dir: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "p.csv"
    status, err = _glomx(capsys, "predict", png_folder, "--model", lr_dir, "--out", out, *args)
    assert (status, err.splitlines()[0]) == (2, f"glomx predict failed: {message}")
    assert "Traceback" not in err and not out.exists()


def test_predict_missing_input_is_one_line(lr_dir: Path, tmp_path: Path, capsys) -> None:
    status, err = _glomx(capsys, "predict", tmp_path / "nope", "--model", lr_dir, "-q")
    assert status == 2 and "Traceback" not in err
    assert err.splitlines()[0] == f"glomx predict failed: {tmp_path / 'nope'} does not exist; " + (
        "pass image files or folders of them"
    )


def test_predict_replaces_only_its_own_outputs_unless_forced(
    png_folder: Path, lr_dir: Path, tmp_path: Path, capsys
) -> None:
    notes, good = tmp_path / "notes.csv", png_folder / "SAS_1-0.png"
    notes.write_text("my,own\nwork,here\n")
    status, err = _glomx(capsys, "predict", good, "--model", lr_dir, "--out", notes, "-q")
    assert status == 2 and "not an earlier glomx predict output" in err and "--force" in err
    assert notes.read_text() == "my,own\nwork,here\n"
    assert (
        _glomx(capsys, "predict", good, "--model", lr_dir, "--out", notes, "-q", "--force")[0] == 0
    )
    assert _rows(notes)[0]["name"] == "SAS_1-0.png"
    # an earlier output is replaced without --force
    assert _glomx(capsys, "predict", png_folder, "--model", lr_dir, "--out", notes, "-q")[0] == 0
    assert len(_rows(notes)) == 5


def test_synth_onto_a_folder_that_is_not_synthetic_is_one_message(tmp_path: Path, capsys) -> None:
    (tmp_path / "mine.txt").write_text("keep")
    status, err = _glomx(capsys, "synth", tmp_path, "--n", "4")
    assert status == 2 and err.startswith(f"glomx synth failed: {tmp_path} exists and is not")
    assert "Traceback" not in err and (tmp_path / "mine.txt").read_text() == "keep"
    status, err = _glomx(capsys, "synth", tmp_path / "new", "--n", "1")
    assert status == 2 and err.startswith("glomx synth failed: n must be at least 2 (one per")


def test_a_locked_store_is_one_message_for_predict_and_champion(
    registered_lr: str, png_folder: Path, isolated_mlflow: str, tmp_path: Path
) -> None:
    """Another process holds the SQLite store's write lock for longer than MLflow waits (20 s):
    both commands, run side by side, say why in the training stages' words, not a traceback."""
    assert promote(registered_lr).version == registered_lr
    holder = sqlite3.connect(isolated_mlflow.removeprefix("sqlite:///"), isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        out = tmp_path / "p.csv"
        commands = [
            ["champion"],
            ["predict", png_folder, "--model", "models:/glomx@champion", "--out", out],
        ]
        glomx = [sys.executable, "-m", "glomx.cli"]
        running = [
            subprocess.Popen([*glomx, *map(str, argv)], stderr=subprocess.PIPE, text=True)
            for argv in commands
        ]
        done = [(p.wait(timeout=120), p.stderr.read()) for p in running]
    finally:
        holder.rollback()
        holder.close()
    expected = SQLITE_LOCKED.format(uri=isolated_mlflow)
    assert [(code, err.splitlines()[0]) for code, err in done] == [
        (1, f"glomx champion failed: {expected}"),
        (1, f"glomx predict failed: {expected}"),
    ]
    assert not out.exists()


@pytest.mark.parametrize("value", ["lots", "0", "-5", "1.5e6"])
def test_a_bad_server_pixel_limit_names_its_variable(value: str, monkeypatch) -> None:
    monkeypatch.setenv(MAX_IMAGE_PIXELS[0], value)
    with pytest.raises(ValueError, match=rf"^GLOMX_SERVE_MAX_PIXELS='{re.escape(value)}' is not"):
        env_limit(MAX_IMAGE_PIXELS)
    monkeypatch.setenv(MAX_IMAGE_PIXELS[0], " 2500000 ")
    assert env_limit(MAX_IMAGE_PIXELS) == 2_500_000
    monkeypatch.delenv(MAX_IMAGE_PIXELS[0])
    assert env_limit(MAX_IMAGE_PIXELS) == 4_000_000


@pytest.mark.parametrize(
    ("env", "model", "message"),
    [
        ({"GLOMX_SERVE_MAX_BODY_MB": "0"}, "models:/glomx@champion",
         "GLOMX_SERVE_MAX_BODY_MB='0' is not a positive whole number of megabytes; unset it"),
        ({"GLOMX_SERVE_MAX_CONCURRENT": "many"}, "models:/glomx@champion",
         "GLOMX_SERVE_MAX_CONCURRENT='many' is not a positive whole number of requests; unset it"),
        ({}, "models:/glomx@lab-nowhere", "cannot load models:/glomx@lab-nowhere from sqlite:///"),
    ],
)  # fmt: skip
def test_serve_with_a_bad_limit_or_model_is_one_message(
    env: dict[str, str], model: str, message: str, capsys, monkeypatch
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    status, err = _glomx(capsys, "serve", "--model", model, "--port", "1")
    first, *rest = err.splitlines()
    assert status == 1 and first.startswith(f"glomx serve failed: {message}"), err
    assert "Traceback" not in err and len(rest) <= 1
