"""The errors a person can act on: bad data, params or files, each message naming the file,
the problem and the fix.

Every such glomx error derives from :class:`GlomxError` as well as from its builtin base (a
``CatalogueError`` is still a ``ValueError``), so stage scripts print it without a traceback
(:mod:`glomx.stage_main`) while a bug keeps its traceback. It imports nothing from glomx, so any
layer of glomx may use it.
"""

from __future__ import annotations


class GlomxError(Exception):
    """A problem with the user's data, params, files or environment; the message says which
    file, what is wrong and how to fix it."""
