"""How every DVC stage script runs: logging to stderr, and errors a person can fix printed as
their message alone.

A stage script wraps its recipe in one block::

    with stage_main("prepare"):
        params = load_params()
        ...

An exception in :data:`USER_ERRORS` prints ``<stage> failed: <message>`` (and any notes added
to it) on stderr and exits with status 1. Anything else is a bug and keeps its traceback.
``--debug`` on the command line or ``GLOMX_DEBUG=1`` shows the traceback of every error.
A stage that succeeds logs its wall time and peak resident memory (the largest of its own
process and of its worker processes), so ``dvc repro``'s output shows what each stage costs.
"""

from __future__ import annotations

import logging
import os
import resource
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from glomx.errors import GlomxError

DEBUG_ENV = "GLOMX_DEBUG"
DEBUG_FLAG = "--debug"
USER_ERRORS: tuple[type[Exception], ...] = (GlomxError, FileNotFoundError)


def debug_requested() -> bool:
    """True with ``--debug`` among the script's arguments or ``GLOMX_DEBUG`` set (not 0)."""
    return DEBUG_FLAG in sys.argv[1:] or os.environ.get(DEBUG_ENV, "0") not in ("", "0")


def user_message(stage: str, err: BaseException) -> str:
    """``<stage> failed: <message>``, the exception's notes and how to see the traceback."""
    notes = getattr(err, "__notes__", [])
    hint = f"({DEBUG_ENV}=1 or {DEBUG_FLAG} shows the traceback)"
    return "\n".join([f"{stage} failed: {err}", *notes, hint])


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
    try:
        yield
    except USER_ERRORS as err:
        if debug_requested():
            raise
        print(user_message(stage, err), file=sys.stderr)
        raise SystemExit(1) from None
    logging.getLogger("glomx").info(
        "%s done in %.0f s, peak RSS %.0f MiB", stage, time.perf_counter() - start, peak_rss_mib()
    )
