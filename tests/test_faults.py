"""The hostile pass's faults, each through the door a user meets: the ``glomx`` command or a
stage script, run as a subprocess and stopped, refused or killed the way the pass did it."""

from __future__ import annotations

import errno
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from bounded import GLOMX, glomx, run
from cv_layout import REPO, stage_project
from faults import file_size_limit, refusing_env

from glomx.config import read
from glomx.data.synth import make_dataset
from glomx.processes import RECORDS, start_time
from glomx.stage_main import DISK_ERRORS, TERMINATED
from glomx.tracking.registry import promote

TRAIN = [sys.executable, str(REPO / "stages" / "train.py"), "lr"]
SLOW_LR = {"model": {"size": 12}, "fit": {"epochs": 100}}  # trials of several seconds each


def _first(err: str) -> str:
    assert "Traceback" not in err, err
    return err.splitlines()[0] if err else ""


def _until(condition: Callable[[], object], what: str, timeout: float = 240) -> object:
    """Poll ``condition`` until it is truthy; fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.2)
    raise AssertionError(f"waited {timeout} s for {what}")


def _temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def _cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _alive(processes: list[tuple[int, int]]) -> list[tuple[int, int]]:
    return [(pid, start) for pid, start in processes if start_time(pid) == start]


# --- every OS error at every writer door is one line -------------------------------------


@pytest.fixture(scope="module")
def prepare_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder to run ``stages/prepare.py`` in: 24 synthetic patches, 16 px, one worker."""
    root = tmp_path_factory.mktemp("prepare")
    make_dataset(root / "data", 24, seed=3, size_range=(40, 60), n_slides=6, workers=1)
    params = read(REPO / "params.yaml")
    params["prepare"]["image"]["size"], params["prepare"]["workers"] = 16, 1
    params["paths"] = {k: str(root / "out" / k) for k in params["paths"]}
    params["paths"]["data"] = str(root / "data")
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


@pytest.mark.parametrize(
    ("door", "code"),
    [
        ("glomx predict", errno.EPERM),  # chattr +i
        ("glomx predict", errno.EROFS),
        ("glomx predict", errno.EACCES),
        ("glomx predict", errno.ENOSPC),
        ("glomx synth", errno.EPERM),
        ("prepare", errno.EPERM),
    ],
)
def test_an_unwritable_folder_is_one_line_at_every_writer_door(
    door: str, code: int, png_folder: Path, lr_dir: Path, prepare_project: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "refusing"
    folder.mkdir()
    argv = {
        "glomx predict": [*GLOMX, "predict", png_folder, "--model", lr_dir, "--out",
                          folder / "p.csv", "-q"],
        "glomx synth": [*GLOMX, "synth", folder / "new", "--n", "4", "--workers", "1"],
        "prepare": [sys.executable, REPO / "stages" / "prepare.py"],
    }[door]  # fmt: skip
    if door == "prepare":
        folder = Path(read(prepare_project / "params.yaml")["paths"]["prepared"])
    done = run(argv, env=refusing_env(tmp_path, folder, code), cwd=prepare_project)
    what, fix = DISK_ERRORS[code]
    (line,) = [x for x in done.stderr.splitlines() if x.startswith(f"{door} failed: ")]
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert line.startswith(f"{door} failed: {what} {folder}") and line.endswith(f": {fix}")


def test_a_file_size_limit_keeps_the_earlier_predictions(
    png_folder: Path, lr_dir: Path, tmp_path: Path
) -> None:
    """``ulimit -f``: the write fails part-way with EFBIG, a full disk for this process."""
    out = tmp_path / "p.csv"
    one = glomx(["predict", png_folder / "SAS_1-0.png", "--model", lr_dir, "--out", out, "-q"])
    assert one.returncode == 0, one.stderr
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    limited = glomx(
        ["predict", png_folder, "--model", lr_dir, "--out", out, "-q"],
        preexec_fn=file_size_limit(len(before["p.csv"]) + 100),
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    assert limited.returncode == 1
    what, fix = DISK_ERRORS[errno.EFBIG]
    assert _first(limited.stderr) == f"glomx predict failed: {what} {tmp_path}: {fix}"
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # nothing torn or left


def test_a_store_past_the_file_size_limit_keeps_the_previous_store(tmp_path: Path) -> None:
    script = """
import sys
import numpy as np
from glomx.data.store import StoreWriter
images = np.zeros((4, 16, 16, 3), np.uint8)
with StoreWriter(sys.argv[1], (16, 16, 3)) as writer:
    for _ in range(int(sys.argv[2])):
        writer.append(images, [0, 1, 0, 1], list("abcd"), ["s"] * 4)
    writer.close()
"""
    store = tmp_path / "train"
    assert run([sys.executable, "-c", script, store, "1"]).returncode == 0
    before = sorted((p.name, p.read_bytes()) for p in store.iterdir())
    limited = run(
        [sys.executable, "-c", script, store, "100"], preexec_fn=file_size_limit(64 * 1024)
    )
    assert f"OSError: [Errno {errno.EFBIG}] File too large: '{store}'" in limited.stderr
    assert sorted((p.name, p.read_bytes()) for p in store.iterdir()) == before
    assert [p.name for p in tmp_path.iterdir()] == ["train"]


# --- a closed pipe ends quietly ------------------------------------------------------------


def test_champion_into_a_closed_pipe_ends_quietly(registered_lr: str) -> None:
    """As ``glomx champion | head -3`` when head has gone before glomx writes."""
    promote(registered_lr)
    process = subprocess.Popen(
        [*GLOMX, "champion"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    process.stdout.close()  # the reader is gone before glomx has imported anything
    _, err = process.communicate(timeout=120)
    assert (process.returncode, err) == (128 + signal.SIGPIPE, "")


# --- a killed command leaves nothing behind that the next run does not clean ---------------


def test_a_killed_predict_leaves_no_worker_and_the_next_run_removes_its_temporaries(
    png_folder: Path, lr_dir: Path, tmp_path: Path
) -> None:
    many = tmp_path / "many"
    many.mkdir()
    patch = (png_folder / "SAS_1-0.png").read_bytes()
    for i in range(400):
        (many / f"SAS_1-{i}.png").write_bytes(patch)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "p.csv"
    assert glomx(["predict", many / "SAS_1-0.png", "--model", lr_dir, "--out", out]).returncode == 0
    before = {p.name: p.read_bytes() for p in out_dir.iterdir()}
    (out_dir / ".p.csv.mine.tmp").write_text("a user's file, named alike")
    argv = [*GLOMX, "predict", many, "--model", lr_dir, "--out", out, "--batch-size", "1",
            "--workers", "2", "-q"]  # fmt: skip
    process = subprocess.Popen(list(map(str, argv)), stderr=subprocess.DEVNULL)
    try:
        workers = _until(
            lambda: (
                len(_temporaries(out_dir)) == 3
                and [(p, s) for p, s in _descendants(process.pid) if "spawn_main" in _cmdline(p)]
            ),
            "predict's decode workers and temporary outputs",
        )
    finally:
        process.kill()
    process.wait(timeout=60)
    assert {p.name: p.read_bytes() for p in out_dir.iterdir() if p.name in before} == before
    assert len(_temporaries(out_dir)) == 3  # its two outputs' and the user's
    _until(lambda: not _alive(workers), "the killed predict's decode workers to end", 10)

    assert glomx(["predict", many / "SAS_1-1.png", "--model", lr_dir, "--out", out]).returncode == 0
    assert _temporaries(out_dir) == [".p.csv.mine.tmp"]


def _descendants(pid: int) -> list[tuple[int, int]]:
    from glomx.processes import descendants

    return descendants(pid)


def _record(pid: int) -> dict | None:
    try:
        return json.loads((RECORDS / f"{pid}.json").read_text())
    except (OSError, ValueError):
        return None


def _trial_runs(db: Path) -> list[tuple[str, str]]:
    """(name, status) of the fold trials' runs, read without creating or migrating the store."""
    if not db.is_file():
        return []
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as con:
            return con.execute(
                "SELECT name, status FROM runs WHERE name LIKE 'lr fold%'"
            ).fetchall()
    except sqlite3.Error:  # tables not made yet, or locked a moment
        return []


def _stage_status(db: Path) -> str:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        ((status,),) = con.execute("SELECT status FROM runs WHERE name = 'train@lr'").fetchall()
    return status


@pytest.mark.slow
def test_a_killed_training_stage_leaves_no_ray_process_once_the_next_stage_starts(
    tmp_path: Path, isolated_mlflow: str
) -> None:
    project = stage_project(tmp_path, SLOW_LR)
    db = Path(isolated_mlflow.removeprefix("sqlite:///"))
    process = subprocess.Popen(TRAIN, cwd=project, stderr=subprocess.DEVNULL)
    try:
        _until(lambda: any(s == "RUNNING" for _, s in _trial_runs(db)), "a running fold trial")
        recorded = _record(process.pid)
        assert recorded, "no record of the stage's processes"
        agents = [p for p, _ in recorded["descendants"] if "agent" in _cmdline(p)]
        assert agents, f"Ray's agents are not among {recorded}"
    finally:
        process.kill()
    process.wait(timeout=60)

    (project / "models" / "lr").mkdir(parents=True)  # the next stage, refused at its door
    (project / "models" / "lr" / "notes.txt").write_text("not a model")
    nxt = run(TRAIN, cwd=project)
    assert nxt.returncode == 1 and "not a glomx model" in nxt.stderr
    _until(lambda: not _alive(recorded["descendants"]), "the recorded processes to end", 10)
    assert _record(process.pid) is None


@pytest.mark.slow
def test_sigterm_closes_the_training_run_as_killed(tmp_path: Path, isolated_mlflow: str) -> None:
    """As ``timeout`` or a CI cancel stops a stage: the run is KILLED, not left RUNNING."""
    project = stage_project(tmp_path, SLOW_LR)
    db = Path(isolated_mlflow.removeprefix("sqlite:///"))
    process = subprocess.Popen(TRAIN, cwd=project, stderr=subprocess.PIPE, text=True)
    try:
        _until(lambda: any(s == "RUNNING" for _, s in _trial_runs(db)), "a running fold trial")
    finally:
        process.terminate()
    _, err = process.communicate(timeout=120)
    assert process.returncode == TERMINATED, err[-3000:]
    assert "train@lr stopped: terminated (SIGTERM)" in err and "Traceback" not in err
    assert _stage_status(db) == "KILLED"
    assert _record(process.pid) is None  # Ray stopped and its record removed


# --- champion and calibrate agree on lab names ---------------------------------------------


def test_champion_never_advises_a_lab_name_that_calibrate_refuses(
    registered_lr: str, tmp_path: Path
) -> None:
    champion = glomx(["champion", "--lab", "../x"])
    calibrate = glomx(["calibrate", tmp_path, "--lab", "../x"])
    refusal = "lab name '../x' is not usable in a registry alias"
    for command, done in (("champion", champion), ("calibrate", calibrate)):
        assert done.returncode == 2 and _first(done.stderr).startswith(
            f"glomx {command} failed: {refusal}"
        )
    advice = _first(glomx(["champion", "--lab", "north-1"]).stderr)
    assert "run `glomx calibrate DATA_DIR --lab north-1`" in advice


# --- a foreign model folder is refused at the training stage's door -------------------------


def test_a_foreign_model_folder_is_refused_before_any_fold_runs(
    tmp_path: Path, isolated_mlflow: str
) -> None:
    project = stage_project(tmp_path)
    foreign = project / "models" / "lr"
    foreign.mkdir(parents=True)
    (foreign / "notes.txt").write_text("mine")
    done = run(TRAIN, cwd=project)
    assert done.returncode == 1
    assert _first(done.stderr) == (
        f"train@lr failed: {foreign} exists and is not a glomx model; move it away (the model "
        "is saved there)"
    )
    assert (foreign / "notes.txt").read_text() == "mine"
    assert not Path(isolated_mlflow.removeprefix("sqlite:///")).exists()  # no run was started
