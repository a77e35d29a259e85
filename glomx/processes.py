"""No process of glomx outlives the command that started it, even one killed with SIGKILL.

Two kinds of helper process would otherwise keep running, re-parented to init:

- ``glomx predict``'s decode workers: each calls :func:`die_with_parent` as it starts, so the
  kernel kills it when its parent dies (Linux; elsewhere it notices within a second);
- a local Ray instance's processes: Ray ties its GCS and raylet to the driver, but the raylet's
  own children (dashboard and runtime-env agents, workers) outlive a killed driver. While Ray
  runs, :func:`recording` keeps a list of the driver's descendants (PID and start time) in
  :data:`RECORDS`; the next glomx stage or Ray session calls :func:`end_leftovers`, which kills
  those of a driver that is gone, and only if each still is the process that was recorded.

It imports nothing from glomx, so every layer may use it.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

log = logging.getLogger(__name__)

PROC = Path("/proc")
RECORDS = Path(tempfile.gettempdir()) / f"glomx-{os.getuid()}" / "processes"
_PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """Make this (child) process die when ``parent`` does: the kernel's parent-death signal on
    Linux, else a thread that polls; exits at once if ``parent`` is already gone."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    else:
        threading.Thread(target=_poll_parent, args=(parent,), daemon=True).start()
    if os.getppid() != parent:  # died before the signal was armed
        os._exit(1)


def _poll_parent(parent: int) -> None:
    while os.getppid() == parent:
        threading.Event().wait(1.0)
    os._exit(1)


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (with the PID, it names one process
    for good), or None when there is no such process, or only its zombie."""
    try:
        fields = (PROC / str(pid) / "stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else int(fields[19])  # fields 3 and 22; names hold spaces


def descendants(pid: int) -> list[tuple[int, int]]:
    """(PID, start time) of every living descendant of ``pid`` (Linux; elsewhere none)."""
    children: dict[int, list[int]] = {}
    starts: dict[int, int] = {}
    for entry in PROC.glob("[0-9]*") if PROC.is_dir() else []:
        with suppress(OSError, ValueError, IndexError):
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
            children.setdefault(int(fields[1]), []).append(int(entry.name))
            starts[int(entry.name)] = int(fields[19])
    found, todo = [], list(children.get(pid, []))
    while todo:
        child = todo.pop()
        found.append((child, starts[child]))
        todo += children.get(child, [])
    return found


def _record_path(pid: int) -> Path:
    return RECORDS / f"{pid}.json"


def _write_record() -> None:
    """This process and its descendants, replacing the previous record in one rename."""
    own = os.getpid()
    record = {"pid": own, "start": start_time(own), "descendants": descendants(own)}
    RECORDS.mkdir(parents=True, exist_ok=True)
    temporary = RECORDS / f".{own}.tmp"
    temporary.write_text(json.dumps(record))
    os.replace(temporary, _record_path(own))


@contextmanager
def recording(every: float = 1.0) -> Iterator[None]:
    """Keep :data:`RECORDS` up to date with this process's descendants every ``every`` seconds
    while the block runs (a killed process leaves its last record); removed when it ends."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(every):
            with suppress(OSError):
                _write_record()

    try:
        _write_record()
    except OSError as err:  # no writable temporary folder: Ray still runs, unrecorded
        log.warning("cannot record helper processes in %s: %s", RECORDS, err)
    thread = threading.Thread(target=loop, name="glomx-record", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        _record_path(os.getpid()).unlink(missing_ok=True)


def end_leftovers() -> list[int]:
    """SIGKILL what a killed glomx process left running (its recorded descendants that still
    are the processes recorded), and drop its record; returns the PIDs ended."""
    ended: list[int] = []
    for path in RECORDS.glob("*.json") if RECORDS.is_dir() else []:
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if start_time(record["pid"]) == record["start"]:
            continue  # its owner still runs
        for pid, start in record["descendants"]:
            if start_time(pid) == start:
                with suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
                    ended.append(pid)
        path.unlink(missing_ok=True)
    if ended:
        log.warning("ended %d processes a killed glomx process left running", len(ended))
    return ended
