"""glomx/files.py on real files: a target is replaced whole or not at all, a temporary that a
killed writer left is removed by the next writer of that target (and only such a one), and a
writer killed by SIGKILL mid-write leaves the previous complete output or none: a store, a
model folder, a predictions file (that one through ``glomx predict``: tests/test_faults.py)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from bounded import wait

from glomx.files import (
    escaped,
    naming,
    put_in_place,
    remove_stale,
    replacing,
    temporary_sibling,
    write_json,
)
from glomx.models import load_classifier

HOLD = """
import sys, time
from pathlib import Path
from glomx.files import temporary_sibling
temporary = temporary_sibling(Path(sys.argv[1]), directory=sys.argv[2] == "dir")
print(temporary, flush=True)
time.sleep(120)
"""


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _holder(target: Path, kind: str) -> tuple[subprocess.Popen[str], Path]:
    """A process that made a temporary sibling of ``target`` and holds it; and that sibling."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(target), kind], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    return process, Path(process.stdout.readline().strip())


def test_a_replaced_file_is_whole_and_a_failed_block_leaves_it_as_it_was(tmp_path: Path) -> None:
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_text("old a\n")
    with replacing(a, b) as (ta, tb):
        ta.write_text("new a\n")
        tb.write_text("new b\n")
        assert a.read_text() == "old a\n" and not b.exists()  # nothing moves before the end
        assert ta.parent == tmp_path and ta.name.startswith(".a.csv.") and ta.suffix == ".tmp"
    assert (a.read_text(), b.read_text()) == ("new a\n", "new b\n")
    with pytest.raises(RuntimeError), replacing(a, b) as (ta, tb):
        ta.write_text("half")
        raise RuntimeError("the writer failed")
    assert (a.read_text(), b.read_text()) == ("new a\n", "new b\n")
    assert _hidden(tmp_path) == []


def test_a_folder_replaces_a_folder_whole(tmp_path: Path) -> None:
    target = tmp_path / "model"
    target.mkdir()
    (target / "old.txt").write_text("old")
    build = temporary_sibling(target, directory=True)
    (build / "new.txt").write_text("new")
    put_in_place(build, target)
    assert [p.name for p in target.iterdir()] == ["new.txt"] and _hidden(tmp_path) == []


def test_an_os_error_names_the_target_folder_not_the_temporary(tmp_path: Path) -> None:
    with pytest.raises(OSError) as err, naming(tmp_path / "out"):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # a full disk names no file
    assert err.value.filename == str(tmp_path / "out")
    with pytest.raises(OSError) as err, replacing(tmp_path / "x.json") as (temporary,):
        raise OSError(errno.EIO, os.strerror(errno.EIO), str(temporary))
    assert err.value.filename == str(tmp_path)


def test_write_json_and_escaped_names(tmp_path: Path) -> None:
    write_json(tmp_path / "deep" / "m.json", {"a": 1})
    assert json.loads((tmp_path / "deep" / "m.json").read_text()) == {"a": 1}
    assert escaped(os.fsdecode(b"SAS_\xff.png")) == "SAS_\\xff.png"
    assert escaped("plain é.png") == "plain é.png"


@pytest.mark.parametrize("kind", ["file", "dir"])
def test_the_next_writer_removes_only_a_killed_writers_temporaries(
    kind: str, tmp_path: Path
) -> None:
    target = tmp_path / "p.csv"
    live, held = _holder(target, kind)
    try:
        killed, stale = _holder(target, kind)  # leaves the live writer's temporary alone
        killed.kill()
        wait(killed, 30, "a temporary's holder")
        users = [tmp_path / ".p.csv.mine.tmp", tmp_path / ".p.csv.0123abcd.tmp.bak"]
        for path in users:
            path.write_text("a user's file, named alike")
        assert stale.exists() and held.exists()
        assert remove_stale(target) == [stale]
        assert held.exists() and all(p.exists() for p in users)
        with replacing(target) as (temporary,):
            temporary.write_text("mine")
        assert target.read_text() == "mine"
        assert _hidden(tmp_path) == sorted([held.name, *(p.name for p in users)])
    finally:
        live.kill()
        wait(live, 30, "a temporary's holder")
    assert remove_stale(target) == [held]


# a writer that prints "mid" half-way through its second version, then waits to be killed
WRITERS = {
    "store": """
import sys, time
import numpy as np
from glomx.data.store import StoreWriter
images = np.full((4, 8, 8, 3), int(sys.argv[2]), np.uint8)
with StoreWriter(sys.argv[1], (8, 8, 3)) as writer:
    writer.append(images, [0, 1, 0, 1], list("abcd"), ["s"] * 4)
    if sys.argv[2] == "2":
        print("mid", flush=True)
        time.sleep(120)
    writer.close()
""",
    "model folder": """
import shutil, sys, time
from pathlib import Path
from glomx.artifacts.model_folder import model_folder
with model_folder(Path(sys.argv[1])) as build:
    shutil.copytree(sys.argv[3], build, dirs_exist_ok=True)
    if sys.argv[2] == "2":
        (build / "glomx.json").write_text('{"family": "l')  # cut short
        print("mid", flush=True)
        time.sleep(120)
""",
}


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("writer", sorted(WRITERS))
@pytest.mark.parametrize("earlier", [True, False], ids=["over an earlier one", "first"])
def test_a_writer_killed_mid_write_leaves_the_previous_output_or_none(
    writer: str, earlier: bool, lr_dir: Path, tmp_path: Path
) -> None:
    target = tmp_path / "out" / "target"
    script = [sys.executable, "-c", WRITERS[writer], str(target)]
    if earlier:
        done = subprocess.run([*script, "1", str(lr_dir)], capture_output=True, timeout=120)
        assert done.returncode == 0, done.stderr
    before = _snapshot(target) if earlier else None
    process = subprocess.Popen(
        [*script, "2", str(lr_dir)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    assert process.stdout is not None and process.stdout.readline() == "mid\n"
    process.send_signal(signal.SIGKILL)
    wait(process, 30, f"the {writer} writer")
    if earlier:
        assert _snapshot(target) == before
        if writer == "model folder":
            assert load_classifier(target).meta.family == "lr"  # still loads
    else:
        assert not target.exists()
    assert len(_hidden(target.parent)) == 1  # what the killed writer left aside
    shutil.rmtree(target, ignore_errors=True)
    done = subprocess.run([*script, "1", str(lr_dir)], capture_output=True, timeout=120)
    assert done.returncode == 0 and _hidden(target.parent) == []  # the next writer removed it
