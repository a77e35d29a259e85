"""How every DVC stage script runs: logging to stderr, and errors a person can fix printed as
their message alone.

A stage script wraps its recipe in one block::

    with stage_main("prepare"):
        params = load_params()
        ...

An exception in :data:`USER_ERRORS`, or one caused by a full disk, a read-only file system or a
refused permission (:data:`DISK_ERRORS`), prints ``<stage> failed: <message>`` (and any notes
added to it) on stderr and exits with status 1. Anything else is a bug and keeps its traceback.
The ``glomx`` command's subcommands go through the same door (:func:`user_errors_exit`).
``--debug`` on the command line or ``GLOMX_DEBUG=1`` shows the traceback of every error.
A stage that succeeds logs its wall time and peak resident memory (the largest of its own
process and of its worker processes), so ``dvc repro``'s output shows what each stage costs.
"""

from __future__ import annotations

import errno
import logging
import os
import resource
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from glomx.errors import GlomxError
from glomx.files import escaped

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
}


def debug_requested() -> bool:
    """True with ``--debug`` among the script's arguments or ``GLOMX_DEBUG`` set (not 0)."""
    return DEBUG_FLAG in sys.argv[1:] or os.environ.get(DEBUG_ENV, "0") not in ("", "0")


def disk_error(err: BaseException) -> OSError | None:
    """The OSError of :data:`DISK_ERRORS` that is ``err`` or caused it, if any."""
    seen: set[int] = set()
    cause: BaseException | None = err
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, OSError) and cause.errno in DISK_ERRORS:
            return cause
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None


def _what(err: BaseException) -> str:
    """The message of a user error; for a disk error what happened, where and what to do."""
    disk = disk_error(err)
    if disk is None:
        return str(err)
    assert disk.errno is not None  # disk_error() picks errors by their errno
    what, fix = DISK_ERRORS[disk.errno]
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
    status 1, unless debugging is requested; any other exception propagates unchanged."""
    try:
        yield
    except Exception as err:
        if debug_requested() or not (isinstance(err, USER_ERRORS) or disk_error(err)):
            raise
        print(user_message(name, err, flag), file=sys.stderr)
        raise SystemExit(1) from None


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
    with user_errors_exit(stage):
        yield
    logging.getLogger("glomx").info(
        "%s done in %.0f s, peak RSS %.0f MiB", stage, time.perf_counter() - start, peak_rss_mib()
    )
