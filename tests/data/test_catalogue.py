"""Catalogue: CSV + class folders → records, and every problem kind under both policies."""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path

import pytest
from PIL import Image

from glomx.data.catalogue import (
    DEFAULT_SLIDE_REGEX,
    FOLDERS,
    MAX_LISTED,
    CatalogueError,
    Problem,
    read_catalogue,
    slide_of,
    slide_pattern,
    write_problem_report,
)

NEW = "S-2006-005094_PAS_1of2_64552732435c92704a3d37ca.png"
OLD = "SESCAM_4_0-17.png"
GOOD = {OLD: 1, "SESCAM_4_0-3.png": 0, NEW: 0}
BAD = "SESCAM_9_0-1.png"


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 120, 180)).save(buf, format="PNG")
    return buf.getvalue()


PNG = _png()


def make_data(
    root: Path,
    extra_rows: list[tuple[str, str]] | None = None,
    extra_files: dict[int, list[str]] | None = None,
    drop: str | None = None,
    header: str = "name,ground truth",
    newline: str = "\n",
    bom: bool = False,
) -> Path:
    """A data folder holding GOOD plus extra CSV rows (name, raw label) and extra class files.

    ``drop`` removes a GOOD file from its class folder (its CSV row stays).
    """
    root.mkdir(parents=True, exist_ok=True)
    rows = [(name, str(label)) for name, label in GOOD.items()] + (extra_rows or [])
    text = newline.join([header] + [f"{name},{label}" for name, label in rows]) + newline
    (root / "public.csv").write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())
    for label, folder in FOLDERS.items():
        (root / folder).mkdir(exist_ok=True)
        names = [n for n, lab in GOOD.items() if lab == label and n != drop]
        for name in names + (extra_files or {}).get(label, []):
            (root / folder / name).write_bytes(PNG)
    return root


def test_valid_folder_gives_sorted_records_with_slides(tmp_path: Path) -> None:
    cat = read_catalogue(make_data(tmp_path))
    assert cat.problems == []
    assert [r.name for r in cat.records] == sorted(GOOD)
    by_name = {r.name: r for r in cat.records}
    assert (by_name[OLD].label, by_name[OLD].slide) == (1, "SESCAM_4_0")
    assert (by_name[NEW].label, by_name[NEW].slide) == (0, "S-2006-005094")
    assert by_name[OLD].path == tmp_path / FOLDERS[1] / OLD


@pytest.mark.parametrize(
    ("name", "slide"),
    [
        (NEW, "S-2006-005094"),
        ("18-162_PAS_5of6_abc.png", "18-162"),
        (OLD, "SESCAM_4_0"),
        ("SAS_21883_001-10.png", "SAS_21883_001"),
        ("no_slide_here.png", None),
        ("SESCAM_4_0-17.jpg", None),
    ],
)
def test_slide_regex_reads_both_name_styles(name: str, slide: str | None) -> None:
    assert slide_of(name, slide_pattern(DEFAULT_SLIDE_REGEX)) == slide


def test_slide_regex_needs_a_slide_group() -> None:
    with pytest.raises(CatalogueError, match=r"\(\?P<slide>"):
        slide_pattern(r"^(.+)-\d+\.png$")


def test_bom_and_crlf_csv_read_like_plain(tmp_path: Path) -> None:
    plain = read_catalogue(make_data(tmp_path / "plain"))
    messy_dir = make_data(tmp_path / "messy", newline="\r\n", bom=True)
    assert (messy_dir / "public.csv").read_bytes()[:7] == b"\xef\xbb\xbfname"
    messy = read_catalogue(messy_dir)
    assert messy.problems == []
    assert [(r.name, r.label) for r in messy.records] == [(r.name, r.label) for r in plain.records]


def test_header_matches_ignoring_case_spaces_and_extra_columns(tmp_path: Path) -> None:
    data = make_data(tmp_path, header=" Name , Ground Truth ")
    text = (data / "public.csv").read_text().replace("Truth \n", "Truth ,comment\n")
    (data / "public.csv").write_text(text)
    assert {r.name: r.label for r in read_catalogue(data).records} == GOOD


def test_misnamed_column_names_found_and_expected(tmp_path: Path) -> None:
    with pytest.raises(CatalogueError) as err:
        read_catalogue(make_data(tmp_path, header="name,label"))
    message = str(err.value)
    assert "public.csv" in message
    assert "['ground truth']" in message  # missing
    assert "['name', 'label']" in message  # found
    assert "'name,ground truth'" in message  # the fix


def test_semicolon_csv_gets_a_hint(tmp_path: Path) -> None:
    with pytest.raises(CatalogueError, match="';'-separated"):
        read_catalogue(make_data(tmp_path, header="name;ground truth"))


def test_label_with_spaces_or_quotes_is_accepted(tmp_path: Path) -> None:
    data = make_data(tmp_path)
    text = (data / "public.csv").read_text()
    text = text.replace(f"{OLD},1", f"{OLD}, 1 ").replace(f"{NEW},0", f'{NEW},"0"')
    (data / "public.csv").write_text(text)
    assert {r.name: r.label for r in read_catalogue(data).records} == GOOD


# case id: (kind, name the problem is about, extra rows, extra files, dropped GOOD file)
CASES = {
    "missing_file": ("missing_file", BAD, [(BAD, "1")], {}, None),
    "unlisted_png": ("unlisted_file", BAD, [], {1: [BAD]}, None),
    "unlisted_txt": ("unlisted_file", "notes.txt", [], {0: ["notes.txt"]}, None),
    "label_2": ("bad_label", BAD, [(BAD, "2")], {1: [BAD]}, None),
    "label_empty": ("bad_label", BAD, [(BAD, "")], {1: [BAD]}, None),
    "label_yes": ("bad_label", BAD, [(BAD, "yes")], {1: [BAD]}, None),
    "label_1.0": ("bad_label", BAD, [(BAD, "1.0")], {1: [BAD]}, None),
    "wrong_folder": ("wrong_folder", OLD, [], {0: [OLD]}, OLD),
    "duplicate_row": ("duplicate", OLD, [(OLD, "1")], {}, None),
    "duplicate_folders": ("duplicate", OLD, [], {0: [OLD]}, None),
    "dotdot": ("unsafe_path", f"../{BAD}", [(f"../{BAD}", "1")], {}, None),
    "absolute": ("unsafe_path", f"/tmp/{BAD}", [(f"/tmp/{BAD}", "1")], {}, None),
    "backslash": ("unsafe_path", f"sub\\{BAD}", [(f"sub\\{BAD}", "1")], {}, None),
    "bad_name": ("bad_name", "scan.png", [("scan.png", "0")], {0: ["scan.png"]}, None),
}


def _broken(root: Path, case: str) -> tuple[str, str, Path]:
    kind, name, rows, files, drop = CASES[case]
    data = make_data(root, rows, files, drop)
    (data / BAD).write_bytes(PNG)  # bait for '../' names: a real file just outside the folders
    return kind, name, data


@pytest.mark.parametrize("case", CASES)
def test_problem_stops_under_error_policy_naming_file_and_fix(tmp_path: Path, case: str) -> None:
    kind, name, data = _broken(tmp_path, case)
    with pytest.raises(CatalogueError) as err:
        read_catalogue(data)
    assert [(p.kind, p.name) for p in err.value.problems] == [(kind, name)]
    assert f"[{kind}] {name}:" in str(err.value)
    assert "Fix:" in str(err.value)


@pytest.mark.parametrize("case", CASES)
def test_problem_under_skip_drops_only_that_name(tmp_path: Path, case: str) -> None:
    kind, name, data = _broken(tmp_path, case)
    cat = read_catalogue(data, policy={kind: "skip"})
    assert [(p.kind, p.name) for p in cat.problems] == [(kind, name)]
    kept = {r.name: r.label for r in cat.records}
    assert kept == {n: lab for n, lab in GOOD.items() if n != name}  # dropped, never relabelled
    assert all(r.path.parent.parent == data for r in cat.records)


def test_row_and_file_of_a_bad_name_both_reported(tmp_path: Path) -> None:
    data = make_data(tmp_path, [("scan.png", "yes")], {1: ["scan.png"]})
    with pytest.raises(CatalogueError) as err:
        read_catalogue(data)
    assert sorted(p.kind for p in err.value.problems) == ["bad_label", "bad_name"]


def test_hidden_files_are_ignored_and_folders_are_unlisted(tmp_path: Path) -> None:
    data = make_data(tmp_path, extra_files={0: [".DS_Store"]})
    (data / FOLDERS[1] / "more").mkdir()
    cat = read_catalogue(data, policy={"unlisted_file": "skip"})
    assert [(p.kind, p.name) for p in cat.problems] == [("unlisted_file", "more")]
    assert "a folder" in cat.problems[0].detail
    assert len(cat.records) == len(GOOD)


def test_error_lists_at_most_max_listed_and_counts_the_rest(tmp_path: Path) -> None:
    rows = [(f"SESCAM_9_0-{i}.png", "0") for i in range(MAX_LISTED + 5)]
    with pytest.raises(CatalogueError) as err:
        read_catalogue(make_data(tmp_path, rows))
    assert len(err.value.problems) == MAX_LISTED + 5
    assert str(err.value).count("[missing_file]") == MAX_LISTED
    assert "and 5 more" in str(err.value)


def test_skip_problems_do_not_hide_error_problems(tmp_path: Path) -> None:
    data = make_data(tmp_path, [(BAD, "1")], {0: ["stray-1.png"]})
    with pytest.raises(CatalogueError) as err:
        read_catalogue(data, policy={"unlisted_file": "skip"})
    assert [p.kind for p in err.value.problems] == ["missing_file"]


def test_missing_data_folder_csv_or_class_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CatalogueError, match=r"data folder .*nowhere not found"):
        read_catalogue(tmp_path / "nowhere")
    data = make_data(tmp_path / "d")
    with pytest.raises(CatalogueError, match=r"labels CSV .*labels\.csv not found"):
        read_catalogue(data, csv_name="labels.csv")
    shutil.rmtree(data / FOLDERS[0])
    with pytest.raises(CatalogueError, match=f"class folder .*{FOLDERS[0]} not found"):
        read_catalogue(data)


def test_empty_csv_is_an_error(tmp_path: Path) -> None:
    data = make_data(tmp_path)
    (data / "public.csv").write_text("")
    with pytest.raises(CatalogueError, match=r"public\.csv is empty"):
        read_catalogue(data)


def test_header_only_csv_says_it_has_no_rows_not_one_problem_per_file(tmp_path: Path) -> None:
    data = make_data(tmp_path)
    (data / "public.csv").write_text("name,ground truth\n\n")
    with pytest.raises(CatalogueError) as err:
        read_catalogue(data)
    message = str(err.value)
    assert message.startswith(f"{data / 'public.csv'} has a header but no rows")
    assert f"hold {len(GOOD)} file(s)" in message and "unlisted" not in message
    assert err.value.problems == []


def test_empty_class_folders_are_named_before_any_row(tmp_path: Path) -> None:
    data = make_data(tmp_path)
    for folder in FOLDERS.values():
        for png in (data / folder).iterdir():
            png.unlink()
    (data / FOLDERS[0] / ".DS_Store").write_bytes(b"")  # hidden: still empty
    with pytest.raises(CatalogueError, match=f"are empty, while public.csv lists {len(GOOD)}"):
        read_catalogue(data)
    (data / "public.csv").write_text("name,ground truth\n")
    with pytest.raises(CatalogueError, match=rf"^{tmp_path} holds no images: .*`dvc pull`"):
        read_catalogue(data)


def test_skipping_every_image_says_none_is_left(tmp_path: Path) -> None:
    data = make_data(tmp_path)
    (data / "public.csv").write_text("name,ground truth\nSESCAM_9_0-1.png,1\n")
    with pytest.raises(CatalogueError, match=r"no usable image left .*\(1 missing_file, 3 unl"):
        read_catalogue(data, policy={"missing_file": "skip", "unlisted_file": "skip"})


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ({"wrong_foldr": "skip"}, r"unknown policy key\(s\) \['wrong_foldr'\]"),
        ({"wrong_folder": "ignore"}, r"must be 'error' or 'skip'.*'wrong_folder': 'ignore'"),
    ],
)
def test_bad_policy_is_rejected(tmp_path: Path, policy: dict[str, str], message: str) -> None:
    with pytest.raises(CatalogueError, match=message):
        read_catalogue(make_data(tmp_path), policy=policy)


def test_problem_report_round_trips(tmp_path: Path) -> None:
    problems = [Problem("bad_label", "a,b.png", 'label "x"', "set 0 or 1")]
    path = tmp_path / "out" / "problems.csv"
    write_problem_report(problems, path)
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows == [
        {"kind": "bad_label", "name": "a,b.png", "detail": 'label "x"', "fix": "set 0 or 1"}
    ]


def test_real_data_catalogue_is_clean(real_data: Path) -> None:
    cat = read_catalogue(real_data)
    assert cat.problems == []
    assert len(cat.records) == 772
    assert sum(r.label for r in cat.records) == 162
    assert len({r.slide for r in cat.records}) == 24
