"""How every DVC stage script runs: logging to stderr, and errors a person can fix printed as
their message alone.

A stage script wraps its recipe in one block::

    with stage_main("prepare"):
        params = load_params()
        ...

An exception in :data:`USER_ERRORS` prints ``<stage> failed: <message>`` (and any notes added
to it) on stderr and exits with status 1. Anything else is a bug and keeps its traceback.
``--debug`` on the command line or ``GLOMX_DEBUG=1`` shows the traceback of every error.
"""

from __future__ import annotations

import logging
import os
import sys
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


@contextmanager
def stage_main(stage: str) -> Iterator[None]:
    """Run a stage's recipe: INFO logging to stderr; a user error exits 1 with its message."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        yield
    except USER_ERRORS as err:
        if debug_requested():
            raise
        print(user_message(stage, err), file=sys.stderr)
        raise SystemExit(1) from None
