"""glomx report: the offline slide report of a glomx predict output."""

from __future__ import annotations

import csv
import re
from html import escape
from pathlib import Path

import pytest
from synthetic_images import SIZE

from glomx.cli import main
from glomx.config import parse
from glomx.data.images import Preprocessing
from glomx.data.store import ArrayStore
from glomx.family_params import CNNSection
from glomx.models.cnn import CNNClassifier
from glomx.predict import collect_files, load_model, predict_files
from glomx.report import MAX_CALLED, MAX_DOUBTFUL, Row, choose_patches, write_report

PRE = Preprocessing(size=SIZE, channels=3, method="pad", fill="white")
NETWORK = re.compile(r"""(src|href)\s*=\s*["']?\s*(https?:)?//|<script|@import|url\(\s*["']?http""")


def _predicted(folder: Path, model: str | Path, out: Path) -> Path:
    files = collect_files([folder, folder / "notes.txt"])
    predict_files(files, load_model(model), out, workers=1, progress=False)
    return out


def test_report_has_every_section_lists_errors_and_fetches_nothing(
    png_folder: Path, lr_dir: Path, tmp_path: Path
) -> None:
    predictions = _predicted(png_folder, lr_dir, tmp_path / "pred.csv")
    summary = write_report(predictions, tmp_path / "report.html", workers=1)
    page = summary.path.read_text()
    threshold = load_model(lr_dir).classifier.meta.threshold
    assert f"<td>{threshold:.4g}</td>" in page  # the model's threshold on top
    assert "not registered: a model folder" in page and "calibration" in page
    assert page.count("<svg") == 1 and page.count("<circle") == 2  # two slides predicted
    assert page.count("stroke-dasharray") == 2  # the 10 % and 20 % cut-offs
    for slide in ("SAS_1", "VUHSK_7", "(no slide id)"):
        assert f">{slide}</h3>" in page
    assert "fewer than 25 glomeruli" in page  # the slides CSV's flags
    assert page.count('src="data:image/jpeg;base64,') == summary.thumbnails == 3
    # every unreadable file and note is listed, with its error
    for name in ("SAS_1-9.png", "VUHSK_7-8.png", "notes.txt"):
        assert f"<td>{name}</td>" in page
    assert "corrupt or truncated" in page and "not a readable image" in page
    assert "Unreadable files and notes (3)" in page
    assert "no Grad-CAM" in page  # an LR model holds no Keras network: said, not hidden
    assert not NETWORK.search(page)


def test_report_names_the_registered_version_and_its_aliases(
    png_folder: Path, registered_lr: str, tmp_path: Path
) -> None:
    predictions = _predicted(png_folder, f"models:/glomx/{registered_lr}", tmp_path / "p.csv")
    page = write_report(predictions, tmp_path / "p.html", gradcam=False).path.read_text()
    assert f"<td>models:/glomx/{registered_lr} (lr)</td>" in page
    assert "<th>aliases</th><td>none</td>" in page
    assert "none: the threshold was set in training" in page
    with open(tmp_path / "p_slides.csv", newline="") as f:
        (source,) = {r["accuracy_source"] for r in csv.DictReader(f)}
    assert f"<th>%GS corrected by</th><td>{source}</td>" in page


def test_patches_shown_are_bounded_and_straddle_the_threshold() -> None:
    rows = [
        Row(f"A_1-{i}.png", f"/x/A_1-{i}.png", "A_1", i / 100, int(i >= 30), "m", "", "")
        for i in range(100)
    ]
    called, doubtful = choose_patches(rows, 0.3)["A_1"]
    assert len(called) == MAX_CALLED and len(doubtful) == MAX_DOUBTFUL
    assert [r.probability for r in called] == [i / 100 for i in range(99, 99 - MAX_CALLED, -1)]
    assert sorted(r.probability for r in doubtful) == [0.27, 0.28, 0.29, 0.3, 0.31, 0.32]
    assert {r.label for r in doubtful} == {0, 1}


def test_grad_cam_beside_the_doubtful_patches_of_a_keras_model(
    png_folder: Path, prepared: Path, tmp_path: Path
) -> None:
    pytest.importorskip("tensorflow")
    params = {"model": {"size": 16, "filters": [4]}, "fit": {"epochs": 1, "jit_compile": False}}
    cnn = CNNClassifier.from_params(parse(CNNSection, params, "train_cnn"), PRE)
    cnn.fit(ArrayStore(prepared / "train"), ArrayStore(prepared / "val"))
    cnn.save(tmp_path / "cnn")
    predictions = _predicted(png_folder, tmp_path / "cnn", tmp_path / "c.csv")
    page = write_report(predictions, tmp_path / "c.html", workers=1).path.read_text()
    assert page.count(">Grad-CAM</figure>") == 3  # one beside each predicted (doubtful) patch
    assert page.count('src="data:image/jpeg;base64,') == 6


@pytest.mark.parametrize("kind", ["missing", "columns", "no slides"])
def test_bad_input_is_one_line_naming_the_file(
    kind: str, png_folder: Path, lr_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "pred.csv"
    if kind == "columns":
        path.write_text("name,score\na.png,0.3\n")
    elif kind == "no slides":
        _predicted(png_folder, lr_dir, path)
        (tmp_path / "pred_slides.csv").unlink()
    with pytest.raises(SystemExit) as exit_:
        main(["report", str(path)])
    assert exit_.value.code == (1 if kind == "columns" else 2)  # a missing input is refused
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("glomx report failed: ") and "Traceback" not in "".join(err)
    expected = {"missing": "pred.csv not found", "columns": "lacks column(s) path, slide",
                "no slides": "pred_slides.csv not found"}[kind]  # fmt: skip
    assert expected in err[0]
    assert not (tmp_path / "pred.html").exists()


def test_predict_report_flag_writes_the_page_beside_the_csv(
    png_folder: Path, lr_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "pred.csv"
    assert main(["predict", str(png_folder), "--model", str(lr_dir), "--out", str(out),
                 "--workers", "1", "-q", "--report"]) == 0  # fmt: skip
    assert "wrote " + str(tmp_path / "pred.html") in capsys.readouterr().out
    with open(out, newline="") as f:
        names = {r["name"] for r in csv.DictReader(f)}
    page = (tmp_path / "pred.html").read_text()
    assert all(f"<td>{n}</td>" in page for n in names if n.startswith(("SAS_1-9", "VUHSK_7-8")))


def test_labels_made_at_another_threshold_are_reported_at_it(
    png_folder: Path, lr_dir: Path, tmp_path: Path
) -> None:
    files = collect_files([png_folder])
    out = tmp_path / "t.csv"
    predict_files(files, load_model(lr_dir), out, threshold=0.0, workers=1, progress=False)
    page = write_report(out, tmp_path / "t.html", gradcam=False).path.read_text()
    own = load_model(lr_dir).classifier.meta.threshold
    assert escape(f"not made at the model's threshold {own:.4g} but at one in (0, ") in page
    lowest = min(float(r["probability"]) for r in csv.DictReader(out.open()) if r["probability"])
    assert f"<th>threshold</th><td>{lowest:.4g}</td>" in page  # all called: cut at the lowest
