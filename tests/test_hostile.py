"""Hostile input on real files: names that are not UTF-8, arguments out of range, outputs that
cannot be written. Each gets a clear message or an escaped row, never a traceback, and
nothing complete is lost."""

from __future__ import annotations

import copy
import csv
import os
import shutil
from pathlib import Path

import pytest

from glomx.data.catalogue import FOLDERS, CatalogueError, read_catalogue
from glomx.data.synth import make_dataset
from glomx.params import load_params
from glomx.pipeline.prepare import prepare
from glomx.predict import ESCAPED_NOTE, collect_files, load_model, predict_files

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
    params = copy.deepcopy(load_params(REPO / "params.yaml")["prepare"])
    params["image"]["size"], params["workers"] = 16, 1
    with pytest.raises(CatalogueError, match=r"SAS_\\xff-7\.png: .*not valid UTF-8") as err:
        prepare(data, tmp_path / "p", tmp_path / "p.json", params)
    str(err.value).encode("utf-8")  # printable anywhere
    params["policy"]["unlisted_file"] = "skip"
    counts = prepare(data, tmp_path / "q", tmp_path / "q.json", params)
    assert counts["skipped"] == 1
    (row,) = _rows(tmp_path / "q" / "problems.csv")
    assert (row["kind"], row["name"]) == ("unlisted_file", SHOWN)
    assert "not valid UTF-8" in row["detail"] and "rename it" in row["fix"]


def test_a_labels_csv_that_is_not_utf8_names_its_line(synth_data: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(synth_data, data)
    with open(data / "public.csv", "ab") as f:
        f.write(RAW_NAME + b",0\n")
    lines = len((data / "public.csv").read_bytes().splitlines())
    with pytest.raises(CatalogueError, match=rf"not UTF-8 text: line {lines} holds byte 0xff"):
        read_catalogue(data)
