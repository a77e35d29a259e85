"""Write files and folders so that a reader finds the earlier complete version or the new
complete one, never a half-written one; write any file name as text.

Each target is first written as a hidden temporary sibling (``.<name>.<random>.tmp``, in the
same folder, so on the same file system) and renamed over the target only once complete; a
failure (an exception, a full disk) removes the temporary and leaves the target as it was. A
file is flushed to disk before its rename, so the rename never exposes data still in flight.
A process killed outright (SIGKILL) may leave a temporary sibling behind, never a torn target.

A Linux file name is bytes and need not be UTF-8 (``b"patch_\\xff.png"``); Python holds its
undecodable bytes as lone surrogates, which a UTF-8 writer refuses with a traceback.
:func:`escaped` writes them as ``\\xff`` instead.

It imports nothing from glomx, so every layer may use it.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_TOKEN_BYTES = 4
# a temporary sibling, or a file inside a temporary folder
_TEMPORARY = re.compile(rf"(^|/)\.[^/]+\.[0-9a-f]{{{2 * _TOKEN_BYTES}}}\.tmp(/|$)")


def escaped(text: str) -> str:
    """``text`` with each byte a file name could not decode as UTF-8 written ``\\xNN``, so that
    it can be printed and written as UTF-8; valid text comes back unchanged."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that stands for no byte
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def temporary_sibling(target: Path, directory: bool = False) -> Path:
    """A new, empty hidden file (or folder) beside ``target``, with the permissions a plain
    ``open`` or ``mkdir`` would give it (``tempfile``'s are private to the owner); its parent
    is created."""
    target.parent.mkdir(parents=True, exist_ok=True)
    while True:
        path = target.with_name(f".{target.name}.{secrets.token_hex(_TOKEN_BYTES)}.tmp")
        try:
            if directory:
                path.mkdir()
            else:
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return path


def discard(temporary: Path) -> None:
    """Remove a temporary sibling, file or folder, if it is still there."""
    if temporary.is_dir() and not temporary.is_symlink():
        shutil.rmtree(temporary, ignore_errors=True)
    else:
        temporary.unlink(missing_ok=True)


def put_in_place(temporary: Path, target: Path) -> None:
    """Rename a complete temporary sibling over ``target``.

    A file replaces the target in one atomic rename. A folder cannot be renamed over a
    non-empty one, so an existing target is first renamed aside and removed after the swap:
    between the two renames the target is briefly absent, never partial.
    """
    if not temporary.is_dir():
        fd = os.open(temporary, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, target)
        return
    if not target.exists() and not target.is_symlink():
        os.rename(temporary, target)
        return
    old = temporary_sibling(target, directory=True)
    os.rename(target, old / target.name)
    os.rename(temporary, target)
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def naming(path: Path) -> Iterator[None]:
    """Give an ``OSError`` raised in the block ``path`` as its file name when it has none (a
    full disk while writing) or names a temporary sibling or a file in one, so that its
    message says where."""
    try:
        yield
    except OSError as err:
        if err.filename is None or _TEMPORARY.search(os.fsdecode(err.filename)):
            err.filename = str(path)
        raise


@contextmanager
def replacing(*targets: Path, directory: bool = False) -> Iterator[tuple[Path, ...]]:
    """Temporary siblings to write ``targets`` into; they replace their targets together, in
    order, when the block completes, and are removed when it fails. An ``OSError`` in the
    block names the targets' folder (:func:`naming`).
    """
    temporaries: list[Path] = []
    try:
        with naming(targets[0].parent):
            temporaries += [temporary_sibling(t, directory) for t in targets]
            yield tuple(temporaries)
    except BaseException:
        for temporary in temporaries:
            discard(temporary)
        raise
    try:
        for temporary, target in zip(temporaries, targets, strict=True):
            put_in_place(temporary, target)
    finally:
        for temporary in temporaries:
            discard(temporary)


def write_json(path: Path, data: Any) -> None:
    """``data`` as indented JSON at ``path`` (folders made), replacing it only once complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as (temporary,):
        temporary.write_text(json.dumps(data, indent=2) + "\n")
