"""The data catalogue: labels CSV + two class folders → validated records with slide ids.

A data folder holds ``public.csv`` (columns ``name,ground truth``) and the folders
``globally_sclerotic_glomeruli/`` (label 1) and ``non_globally_sclerotic_glomeruli/`` (label 0).
Every disagreement between the CSV and the folders is a :class:`Problem` of one kind; the
policy for each kind is ``error`` (stop with :class:`CatalogueError`) or ``skip`` (drop the
name and keep the problem in the result). A skipped record is dropped, never relabelled.

Decisions: the CSV is read as UTF-8 with or without a BOM, with LF or CRLF line ends; column
names match ignoring case and surrounding spaces, extra columns are ignored; a label is ``0``
or ``1`` with optional surrounding spaces, nothing else (``1.0``, ``yes`` and empty are bad).
Hidden entries (``.DS_Store``) in a class folder are ignored unless the CSV lists them; any
other entry the CSV does not list (a ``.txt``, a sub-folder) is an ``unlisted_file``, as is a
file whose name is not valid UTF-8 (no UTF-8 CSV row can name it). Reports write such a name
with ``\\xNN`` escapes (:func:`glomx.files.escaped`); a CSV that is not UTF-8 is an error
naming its line.
"""

from __future__ import annotations

import csv
import os
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from glomx.errors import GlomxError
from glomx.files import escaped, replacing

DEFAULT_SLIDE_REGEX = r"^(?P<slide>.+?)(?:_PAS_.*|-\d+)\.png$"
NAME_COLUMN = "name"
LABEL_COLUMN = "ground truth"
FOLDERS = {1: "globally_sclerotic_glomeruli", 0: "non_globally_sclerotic_glomeruli"}
# Every policy key of params.yaml `prepare.policy`; `unreadable_image` is applied by prepare.
KINDS = (
    "missing_file",
    "unlisted_file",
    "bad_label",
    "wrong_folder",
    "duplicate",
    "unsafe_path",
    "bad_name",
    "unreadable_image",
)
POLICIES = ("error", "skip")
MAX_LISTED = 20


@dataclass(frozen=True)
class Record:
    """One labelled image: file name, path on disk, label (1 = globally sclerotic), slide id."""

    name: str
    path: Path
    label: int
    slide: str


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the data: its kind (a policy key), the file, what and how to fix."""

    kind: str
    name: str
    detail: str
    fix: str


@dataclass(frozen=True)
class Catalogue:
    """The valid records, sorted by name, and the problems that were skipped."""

    records: list[Record]
    problems: list[Problem] = field(default_factory=list)


class CatalogueError(GlomxError, ValueError):
    """The data folder cannot be catalogued; ``problems`` lists the per-file causes, if any."""

    def __init__(self, message: str, problems: Sequence[Problem] = ()) -> None:
        super().__init__(message)
        self.problems = list(problems)

    @classmethod
    def from_problems(cls, where: str, problems: Sequence[Problem]) -> CatalogueError:
        """An error listing at most ``MAX_LISTED`` problems, each with its file and fix."""
        lines = [f"{len(problems)} problem(s) in {where} under policy 'error':"]
        lines += [
            escaped(f"  [{p.kind}] {p.name}: {p.detail}. Fix: {p.fix}")
            for p in problems[:MAX_LISTED]
        ]
        if len(problems) > MAX_LISTED:
            lines.append(f"  ... and {len(problems) - MAX_LISTED} more")
        lines.append("Fix the data, or set prepare.policy.<kind>: skip to drop those files.")
        return cls("\n".join(lines), problems)


def resolve_policy(policy: Mapping[str, str] | None) -> dict[str, str]:
    """Policy per problem kind; kinds not given default to ``error``."""
    policy = dict(policy or {})
    unknown = sorted(set(policy) - set(KINDS))
    if unknown:
        raise CatalogueError(f"unknown policy key(s) {unknown}; known: {', '.join(KINDS)}")
    bad = {k: v for k, v in policy.items() if v not in POLICIES}
    if bad:
        raise CatalogueError(f"policy values must be 'error' or 'skip', got {bad}")
    return {kind: policy.get(kind, "error") for kind in KINDS}


def slide_pattern(slide_regex: str) -> re.Pattern[str]:
    """Compile the slide regex, which must have a named group ``slide``."""
    try:
        pattern = re.compile(slide_regex)
    except re.error as err:
        raise CatalogueError(f"slide regex {slide_regex!r} is invalid: {err}") from err
    if "slide" not in pattern.groupindex:
        raise CatalogueError(f"slide regex {slide_regex!r} needs a named group (?P<slide>...)")
    return pattern


def slide_of(name: str, pattern: re.Pattern[str]) -> str | None:
    """The slide id in a file name, or None when the name does not match."""
    match = pattern.fullmatch(name)
    return (match["slide"] or None) if match else None


def write_problem_report(problems: Sequence[Problem], path: str | Path) -> None:
    """Write problems as CSV with columns kind,name,detail,fix (header even when empty), whole
    or not at all: an earlier report stays until the new one is complete."""
    path = Path(path)
    with replacing(path) as (temporary,), temporary.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["kind", "name", "detail", "fix"])
        writer.writerows([escaped(v) for v in (p.kind, p.name, p.detail, p.fix)] for p in problems)


def _read_rows(csv_path: Path) -> list[tuple[int, str, str | None]]:
    """(line number, name, raw label) per CSV row; BOM and CRLF are handled by the reader."""
    if not csv_path.is_file():
        found = sorted(p.name for p in csv_path.parent.iterdir())
        raise CatalogueError(
            f"labels CSV {csv_path} not found (folder holds: {', '.join(found) or 'nothing'}); "
            f"add it with columns '{NAME_COLUMN},{LABEL_COLUMN}' or pass its name as csv_name"
        )
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise CatalogueError(
                    f"{csv_path} is empty; expected a '{NAME_COLUMN},"
                    f"{LABEL_COLUMN}' header and one row per image"
                )
            columns = [c.strip().lower() for c in header]
            missing = [c for c in (NAME_COLUMN, LABEL_COLUMN) if c not in columns]
            if missing:
                hint = (
                    " (it looks ';'-separated: save it comma-separated)"
                    if any(";" in c for c in header)
                    else ""
                )
                raise CatalogueError(
                    f"{csv_path} lacks column(s) {missing}; found columns {header}, expected "
                    f"['{NAME_COLUMN}', '{LABEL_COLUMN}']{hint}. Rename the header to "
                    f"'{NAME_COLUMN},{LABEL_COLUMN}'"
                )
            i_name, i_label = columns.index(NAME_COLUMN), columns.index(LABEL_COLUMN)
            rows = []
            for row in reader:
                if not any(cell.strip() for cell in row):
                    continue
                name = row[i_name].strip() if i_name < len(row) else ""
                label = row[i_label] if i_label < len(row) else None
                rows.append((reader.line_num, name, label))
            return rows
    except UnicodeDecodeError:
        try:
            csv_path.read_bytes().decode("utf-8-sig")
        except UnicodeDecodeError as err:
            text = err.object  # what was decoded: the file after any BOM
            line = text[: err.start].count(b"\n") + 1
            raise CatalogueError(
                f"{csv_path} is not UTF-8 text: line {line} holds byte "
                f"0x{text[err.start]:02x}, which UTF-8 cannot decode (a name in another "
                "encoding, such as Latin-1?). Save the file as UTF-8, and rename any image "
                "whose name is not UTF-8"
            ) from None
        raise


def _check_not_empty(
    data_dir: Path,
    csv_name: str,
    rows: list[tuple[int, str, str | None]],
    folders: dict[int, dict[str, Path]],
) -> None:
    """Say so first when the CSV has no rows or the class folders hold nothing, rather than
    report every file without a row, or every row without a file, one by one."""
    files = sorted(name for entries in folders.values() for name in entries if name[0] != ".")
    if rows and files:
        return
    both = f"{FOLDERS[1]}/ and {FOLDERS[0]}/"
    if not rows and not files:
        raise CatalogueError(
            f"{data_dir} holds no images: {csv_name} has a header but no rows and {both} are "
            "empty. Run `dvc pull` to fetch the data (or `glomx synth` for a synthetic set), "
            "or point paths.data at a data folder"
        )
    if not rows:
        raise CatalogueError(
            f"{data_dir / csv_name} has a header but no rows, while {both} hold "
            f"{len(files)} file(s). Add one row per image, e.g. '{files[0]},<0 or 1>' "
            f"under the header '{NAME_COLUMN},{LABEL_COLUMN}'"
        )
    raise CatalogueError(
        f"{both} in {data_dir} are empty, while {csv_name} lists {len(rows)} image(s). Put "
        "each image into the folder of its label, or run `dvc pull` to fetch them"
    )


def _unsafe(name: str) -> str | None:
    """Why a CSV name could reach outside its class folder, or None when it is a plain name."""
    if not name:
        return "the name is empty"
    if name in (".", ".."):
        return f"{name!r} is a folder reference, not a file"
    if "/" in name or "\\" in name:
        return "the name contains a path separator (folders, '../' or an absolute path)"
    if "\0" in name:
        return "the name contains a NUL character"
    return None


def _scan(folder: Path) -> dict[str, Path]:
    """Entries of a class folder by name (hidden ones included; the caller decides)."""
    if not folder.is_dir():
        raise CatalogueError(
            f"class folder {folder} not found; a data folder needs both "
            f"{FOLDERS[1]}/ (label 1) and {FOLDERS[0]}/ (label 0)"
        )
    return {entry.name: Path(entry.path) for entry in os.scandir(folder)}


class _Checker:
    """Collects the problems of one catalogue pass."""

    def __init__(self, csv_name: str, pattern: re.Pattern[str]) -> None:
        self.csv_name = csv_name
        self.pattern = pattern
        self.problems: list[Problem] = []

    def add(self, kind: str, name: str, detail: str, fix: str) -> None:
        self.problems.append(Problem(kind, name, detail, fix))

    def check(
        self, name: str, rows: list[tuple[int, str | None]], found: dict[int, Path]
    ) -> Record | None:
        """Every check for one CSV name; its record when it passed them all."""
        before = len(self.problems)
        if len(rows) > 1:
            lines = ", ".join(str(line) for line, _ in rows)
            self.add(
                "duplicate",
                name,
                f"listed {len(rows)} times in {self.csv_name} (lines {lines})",
                f"keep one row for {name} in {self.csv_name}",
            )
        labels = [self._label(name, line, raw, found) for line, raw in rows]
        slide = slide_of(name, self.pattern)
        if slide is None:
            self.add(
                "bad_name",
                name,
                f"no slide id: the name does not match {self.pattern.pattern!r}",
                "rename it '<slide>-<index>.png' or "
                "'<slide>_PAS_<k>of<n>_<id>.png', or set prepare.slide_regex to a pattern "
                "with a (?P<slide>...) group",
            )
        path = self._file(name, found)
        label = labels[0] if len(labels) == 1 else None
        if path is not None and label is not None and label != next(iter(found)):
            stored = next(iter(found))
            self.add(
                "wrong_folder",
                name,
                f"labelled {label} in {self.csv_name} but stored in {FOLDERS[stored]}/",
                f"check the image; then move it to {FOLDERS[label]}/ or set its label to "
                f"{stored} in {self.csv_name}",
            )
        if path is None or label is None or slide is None or len(self.problems) > before:
            return None
        return Record(name, path, label, slide)

    def _label(self, name: str, line: int, raw: str | None, found: dict[int, Path]) -> int | None:
        """The row's label, or None after adding a bad_label problem."""
        value = (raw or "").strip()
        if value in ("0", "1"):
            return int(value)
        hint = f"; the file is in {FOLDERS[next(iter(found))]}/" if len(found) == 1 else ""
        self.add(
            "bad_label",
            name,
            f"label {raw!r} on line {line} of {self.csv_name} is not 0 or 1{hint}",
            "set 'ground truth' to 0 (non-globally sclerotic) or 1 (globally sclerotic)",
        )
        return None

    def _file(self, name: str, found: dict[int, Path]) -> Path | None:
        """The one regular file for a listed name, or None after adding its problem."""
        if not found:
            self.add(
                "missing_file",
                name,
                f"listed in {self.csv_name} but not found in {FOLDERS[1]}/ or {FOLDERS[0]}/",
                f"add the image to the folder of its label, or remove its row from {self.csv_name}",
            )
            return None
        if len(found) > 1:
            self.add(
                "duplicate",
                name,
                "present in both class folders",
                "keep it only in the folder that matches its label",
            )
            return None
        path = next(iter(found.values()))
        if not path.is_file():
            self.add(
                "missing_file",
                name,
                f"{path} is not a regular file",
                "replace it with the image file",
            )
            return None
        return path


def read_catalogue(
    data_dir: str | Path,
    csv_name: str = "public.csv",
    slide_regex: str = DEFAULT_SLIDE_REGEX,
    policy: Mapping[str, str] | None = None,
) -> Catalogue:
    """Read and validate a data folder; raise :class:`CatalogueError` for ``error`` problems.

    Problems under ``skip`` drop the name involved and are returned in ``Catalogue.problems``.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise CatalogueError(
            f"data folder {data_dir} not found (cwd {Path.cwd()}); run `dvc pull` or "
            "`glomx synth` to create it, or point paths.data at it"
        )
    policies = resolve_policy(policy)
    pattern = slide_pattern(slide_regex)
    rows = _read_rows(data_dir / csv_name)
    folders = {label: _scan(data_dir / folder) for label, folder in FOLDERS.items()}
    _check_not_empty(data_dir, csv_name, rows, folders)

    checker = _Checker(csv_name, pattern)
    by_name: dict[str, list[tuple[int, str | None]]] = {}
    for line, name, label in rows:
        by_name.setdefault(name, []).append((line, label))
    records = []
    for name, name_rows in sorted(by_name.items()):
        reason = _unsafe(name)
        if reason:
            checker.add(
                "unsafe_path",
                name,
                f"{reason} (line {name_rows[0][0]} of {csv_name})",
                f"write the plain file name in {csv_name}, without folders",
            )
            continue
        found = {label: entries[name] for label, entries in folders.items() if name in entries}
        record = checker.check(name, name_rows, found)
        if record is not None:
            records.append(record)
    for folder_label, entries in folders.items():
        for name, path in sorted(entries.items()):
            if name in by_name or name.startswith("."):
                continue
            what = "a folder" if path.is_dir() else "a file"
            if escaped(name) != name:
                checker.add(
                    "unlisted_file",
                    name,
                    f"{what} in {FOLDERS[folder_label]}/ whose name is not valid UTF-8 (shown with "
                    f"\\xNN escapes), so no row of {csv_name} can name it",
                    f"rename it to a UTF-8 name and add its row to {csv_name}, or remove it",
                )
                continue
            checker.add(
                "unlisted_file",
                name,
                f"{what} in {FOLDERS[folder_label]}/ with no row in {csv_name}",
                f"add a row '{name},{folder_label}' to {csv_name}, or remove it",
            )

    errors = [p for p in checker.problems if policies[p.kind] == "error"]
    if errors:
        raise CatalogueError.from_problems(str(data_dir), errors)
    if not records:
        kinds = Counter(p.kind for p in checker.problems)
        raise CatalogueError(
            f"no usable image left in {data_dir}: prepare.policy 'skip' dropped every one "
            f"({', '.join(f'{n} {kind}' for kind, n in sorted(kinds.items()))}). Fix the data, "
            "or set those kinds to 'error' to see each problem",
            checker.problems,
        )
    return Catalogue(records, checker.problems)
