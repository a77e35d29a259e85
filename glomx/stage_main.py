"""How every DVC stage script and ``glomx`` command runs: logging to stderr, errors a person
can fix printed as their message alone, and one exit-status contract.

A stage script wraps its recipe in one block::

    with stage_main("prepare"):
        params = load_params()
        ...

An exception in :data:`USER_ERRORS`, or an ``OSError`` about a file (a full disk, a read-only
or immutable folder, a refused permission: :data:`DISK_ERRORS` says what to do for the common
ones), prints ``<stage> failed: <message>`` (and any notes added to it) on stderr and exits
with status 1; a :class:`~glomx.errors.UsageError` (an argument refused before any work) exits
2, as argparse does. SIGTERM ends the block with status 143 like SIGKILL's 137, unwinding it
first, so that the stage's MLflow run is closed as KILLED. Anything else is a bug and keeps
its traceback. The ``glomx`` command's subcommands end through the same handler
(:func:`user_errors_exit`). ``--debug`` on the command line or ``GLOMX_DEBUG=1`` shows the
traceback of every error. A stage that succeeds logs its wall time and peak resident memory
(the largest of its own process and of its worker processes), so ``dvc repro``'s output shows
what each stage costs.
"""

from __future__ import annotations

import errno
import logging
import os
import resource
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from glomx.errors import GlomxError, UsageError
from glomx.files import escaped
from glomx.processes import end_leftovers

DEBUG_ENV = "GLOMX_DEBUG"
DEBUG_FLAG = "--debug"
USER_ERRORS: tuple[type[Exception], ...] = (GlomxError, FileNotFoundError)
# errno -> what went wrong (followed by the path), what to do; for an OSError anywhere in an
# exception's chain
DISK_ERRORS = {
    errno.ENOSPC: ("no space left on the device writing", "free space there or write elsewhere"),
    errno.EDQUOT: ("disk quota exceeded writing", "free space there or write elsewhere"),
    errno.EROFS: ("read-only file system: cannot write", "write to a folder on a writable disk"),
    errno.EACCES: ("permission denied on", "check its permissions, or use another folder"),
    errno.EPERM: (
        "operation not permitted on",
        "check its permissions and attributes (`lsattr`: immutable?), or use another folder",
    ),
    errno.EFBIG: ("file too large writing", "raise the file-size limit (`ulimit -f`)"),
}
OTHER_OS_ERROR = "check that path, or use another one"  # any other OSError naming a file
TERMINATED = 128 + signal.SIGTERM  # the status a shell reports for a process SIGTERM ended


def debug_requested() -> bool:
    """True with ``--debug`` among the script's arguments or ``GLOMX_DEBUG`` set (not 0)."""
    return DEBUG_FLAG in sys.argv[1:] or os.environ.get(DEBUG_ENV, "0") not in ("", "0")


def disk_error(err: BaseException) -> OSError | None:
    """The OSError of :data:`DISK_ERRORS` that is ``err`` or caused it; else ``err`` itself
    when it is any other OSError naming a file (a user error keeps its own message)."""
    seen: set[int] = set()
    cause: BaseException | None = err
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, OSError) and cause.errno in DISK_ERRORS:
            return cause
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    if isinstance(err, OSError) and not isinstance(err, USER_ERRORS):
        return err if err.errno and err.filename is not None else None
    return None


def _what(err: BaseException) -> str:
    """The message of a user error; for a disk error what happened, where and what to do."""
    disk = disk_error(err)
    if disk is None:
        return str(err)
    assert disk.errno is not None  # disk_error() picks errors by their errno
    other = (f"{(disk.strerror or 'error').lower()}:", OTHER_OS_ERROR)
    what, fix = DISK_ERRORS.get(disk.errno, other)
    where = disk.filename or f"somewhere under {Path.cwd()}"
    return escaped(f"{what} {where}: {fix}")


def user_message(stage: str, err: BaseException, flag: bool = True) -> str:
    """``<stage> failed: <message>``, the exception's notes and how to see the traceback
    (``flag``: mention ``--debug``, which stage scripts accept)."""
    notes = getattr(err, "__notes__", [])
    hint = f"({DEBUG_ENV}=1{f' or {DEBUG_FLAG}' if flag else ''} shows the traceback)"
    return "\n".join([f"{stage} failed: {_what(err)}", *notes, hint])


@contextmanager
def user_errors_exit(name: str, flag: bool = True) -> Iterator[None]:
    """A user error or a disk error in the block: its :func:`user_message` on stderr and exit
    status 1 (2 for a :class:`~glomx.errors.UsageError`), unless debugging is requested; any
    other exception propagates unchanged. SIGTERM raises ``SystemExit(143)`` in the block."""
    previous = signal.signal(signal.SIGTERM, _terminate) if _main_thread() else None
    try:
        yield
    except BaseException as err:
        if _signalled:  # whatever a library made of the SystemExit on its way up (Ray: exit 1)
            _signalled.clear()
            print(f"{name} stopped: terminated (SIGTERM)", file=sys.stderr)
            raise SystemExit(TERMINATED) from None
        if not isinstance(err, Exception) or debug_requested():
            raise
        if not (isinstance(err, USER_ERRORS) or disk_error(err)):
            raise
        print(user_message(name, err, flag), file=sys.stderr)
        raise SystemExit(2 if isinstance(err, UsageError) else 1) from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def closed_pipe() -> int:
    """The reader of stdout went away (``glomx champion | head -3``): end quietly with the status
    a shell gives a command SIGPIPE ended (141), as command-line tools do. Stdout goes to
    /dev/null first, so that Python's flush at exit finds no broken pipe to report."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 128 + signal.SIGPIPE


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


_signalled: list[int] = []  # the SIGTERMs received


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM: unwind the stack (closing runs and removing temporaries) and exit 143."""
    _signalled.append(signum)
    raise SystemExit(TERMINATED)


def peak_rss_mib() -> float:
    """Peak resident memory in MiB of this process or the largest of its finished children."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024  # Linux reports KiB


@contextmanager
def stage_main(stage: str) -> Iterator[None]:
    """Run a stage's recipe: INFO logging to stderr; a user error exits 1 with its message;
    on success, its wall time and peak memory."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    start = time.perf_counter()
    end_leftovers()  # of an earlier stage killed outright
    with user_errors_exit(stage):
        yield
    logging.getLogger("glomx").info(
        "%s done in %.0f s, peak RSS %.0f MiB", stage, time.perf_counter() - start, peak_rss_mib()
    )
