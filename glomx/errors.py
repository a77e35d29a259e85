"""The errors a person can act on: bad data, params or files, each message naming the file,
the problem and the fix.

Every such glomx error derives from :class:`GlomxError` as well as from its builtin base (a
``CatalogueError`` is still a ``ValueError``), so stage scripts print it without a traceback
(:mod:`glomx.stage_main`) while a bug keeps its traceback. It imports nothing from glomx, so any
layer of glomx may use it.
"""

from __future__ import annotations

from pathlib import Path


class GlomxError(Exception):
    """A problem with the user's data, params, files or environment; the message says which
    file, what is wrong and how to fix it."""


class UsageError(GlomxError, ValueError):
    """An argument a command refuses before doing any work (a value out of range, a name it does
    not allow, an input that is not there, an output it must not replace): exit status 2, as
    for argparse's own errors, where any other failure exits 1."""


class CorruptModelError(GlomxError, RuntimeError):
    """A saved model's weights file exists but cannot be loaded (truncated, overwritten); a
    RuntimeError too, which `glomx predict` reports as a message."""

    def __init__(self, path: Path, family: str, reason: str) -> None:
        super().__init__(
            f"{path} exists but cannot be loaded ({reason}): the {family} model file is corrupt "
            f"or incomplete. Rebuild it with `dvc repro train@{family}`, or restore the tracked "
            f"copy with `dvc checkout {path.parent}`"
        )
