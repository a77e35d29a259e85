"""Stage scripts: an error a person can fix is its message alone, a bug keeps its traceback."""

from __future__ import annotations

import errno
import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from glomx.data.catalogue import FOLDERS
from glomx.errors import GlomxError
from glomx.stage_main import DEBUG_ENV, stage_main
from glomx.tracking import TrackingError

REPO = Path(__file__).resolve().parents[1]
STAGES = sorted((REPO / "stages").glob("*.py"))


@pytest.fixture(autouse=True)
def no_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    monkeypatch.setattr(sys, "argv", ["stage.py"])


def _fail(error: BaseException) -> None:
    with stage_main("demo"):
        raise error


@pytest.mark.parametrize(
    "error",
    [GlomxError("x.csv: bad. Fix it"), TrackingError("server down"), FileNotFoundError("gone")],
)
def test_user_error_prints_its_message_and_exits_1(
    error: Exception, capsys: pytest.CaptureFixture[str]
) -> None:
    error.add_note("All listed in problems.csv.")
    with pytest.raises(SystemExit) as exit_:
        _fail(error)
    assert exit_.value.code == 1
    lines = capsys.readouterr().err.splitlines()
    assert lines[:2] == [f"demo failed: {error}", "All listed in problems.csv."]
    assert DEBUG_ENV in lines[2]


def test_a_disk_error_behind_another_error_is_one_line(capsys: pytest.CaptureFixture) -> None:
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # a write on a full disk: no path
    wrapped = RuntimeError("saving the model failed")
    wrapped.__cause__ = full
    with pytest.raises(SystemExit) as exit_:
        _fail(wrapped)
    assert exit_.value.code == 1
    first = capsys.readouterr().err.splitlines()[0]
    assert first == (
        f"demo failed: no space left on the device writing somewhere under {Path.cwd()}: "
        "free space there or write elsewhere"
    )


def test_any_os_error_naming_a_file_is_one_line(capsys: pytest.CaptureFixture) -> None:
    """Errors DISK_ERRORS has no advice for still name the file, without a traceback."""
    err = OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG), "/out/" + "x" * 300)
    with pytest.raises(SystemExit) as exit_:
        _fail(err)
    assert exit_.value.code == 1
    assert capsys.readouterr().err.splitlines()[0] == (
        f"demo failed: file name too long: {err.filename}: check that path, or use another one"
    )


def test_a_bug_keeps_its_exception_and_traceback() -> None:
    with pytest.raises(OSError, match="Bad file descriptor"):  # not a disk the user can fix
        _fail(OSError(errno.EBADF, os.strerror(errno.EBADF)))
    with pytest.raises(KeyError):
        _fail(KeyError("prepare"))
    with pytest.raises(ValueError, match="shapes"):  # plain ValueError: not a user error
        _fail(ValueError("shapes (3,) and (4,) not aligned"))


@pytest.mark.parametrize("how", ["env", "flag"])
def test_debug_shows_the_user_error_itself(how: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if how == "env":
        monkeypatch.setenv(DEBUG_ENV, "1")
    else:
        monkeypatch.setattr(sys, "argv", ["stage.py", "--debug"])
    with pytest.raises(GlomxError, match="bad"):
        _fail(GlomxError("bad"))


@pytest.mark.parametrize("script", STAGES, ids=[s.stem for s in STAGES])
def test_every_stage_script_reports_a_missing_params_file_plainly(
    script: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)  # no params.yaml here
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(script), run_name="__main__")
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert "failed: params.yaml not found; run stages from the repository root" in err


def _header_only_data(root: Path) -> Path:
    """A repository-like folder: params.yaml and data/ whose CSV has no rows."""
    data = root / "data"
    for folder in FOLDERS.values():
        (data / folder).mkdir(parents=True)
        (data / folder / "SESCAM_1_0-1.png").write_bytes(b"\x89PNG")
    (data / "public.csv").write_text("name,ground truth\n")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


@pytest.mark.parametrize("debug", [False, True])
def test_prepare_script_on_a_header_only_csv(tmp_path: Path, debug: bool) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), DEBUG_ENV: "1" if debug else "0"}
    done = subprocess.run(
        [sys.executable, str(REPO / "stages" / "prepare.py")],
        cwd=_header_only_data(tmp_path), env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 1
    assert "data/public.csv has a header but no rows" in done.stderr
    assert ("Traceback (most recent call last)" in done.stderr) is debug
    assert "prepare failed: " in done.stderr or debug


def test_success_logs_wall_time_and_peak_memory(caplog: pytest.LogCaptureFixture) -> None:
    ballast = bytearray(64 * 2**20)  # touch 64 MiB, so the peak is at least that
    ballast[::4096] = b"x" * len(ballast[::4096])
    with caplog.at_level("INFO", logger="glomx"), stage_main("demo"):
        pass
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("demo done")]
    match = re.fullmatch(r"demo done in \d+ s, peak RSS (\d+) MiB", line)
    assert match and int(match[1]) >= 64
