"""Write files and folders so that a reader finds the earlier complete version or the new
complete one, never a half-written one; write any file name as text.

Each target is first written as a hidden temporary sibling (``.<name>.<random>.tmp``, in the
same folder, so on the same file system) and renamed over the target only once complete; a
failure (an exception, a full disk) removes the temporary and leaves the target as it was. A
file is flushed to disk before its rename, so the rename never exposes data still in flight.
A process killed outright (SIGKILL) may leave a temporary sibling behind, never a torn target;
the next writer of that target removes it. A writer holds a lock (``flock``) on each temporary
it makes until the temporary is renamed or removed, and the kernel drops it when the writer
dies, so a sibling that can be locked is a killed writer's, and one still locked is another
live writer's, which is left alone.

A Linux file name is bytes and need not be UTF-8 (``b"patch_\\xff.png"``); Python holds its
undecodable bytes as lone surrogates, which a UTF-8 writer refuses with a traceback.
:func:`escaped` writes them as ``\\xff`` instead.

It imports nothing from glomx, so every layer may use it.
"""

from __future__ import annotations

import fcntl
import glob
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
_held: dict[Path, int] = {}  # temporary sibling -> the open descriptor that holds its lock
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
    """A new, empty hidden file (or folder) beside ``target``, locked by this process until
    :func:`put_in_place` or :func:`discard`, with the permissions a plain ``open`` or ``mkdir``
    would give it (``tempfile``'s are private to the owner); its parent is created, and what a
    killed writer of ``target`` left beside it is removed first."""
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(target)
    while True:
        path = target.with_name(f".{target.name}.{secrets.token_hex(_TOKEN_BYTES)}.tmp")
        try:
            if directory:
                path.mkdir()
                fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
            else:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        if _lock(fd) and _same_file(path, fd):  # not taken for a killed writer's meanwhile
            _held[path] = fd
            return path
        os.close(fd)


def _lock(fd: int) -> bool:
    """Take the exclusive lock on an open file or folder without waiting; False if held."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _same_file(path: Path, fd: int) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _release(temporary: Path) -> None:
    fd = _held.pop(temporary, None)
    if fd is not None:
        os.close(fd)


def remove_stale(target: Path) -> list[Path]:
    """Remove the temporary siblings of ``target`` that no living writer holds (a killed
    writer's); returns them. Only names :func:`temporary_sibling` gives are touched."""
    pattern = re.compile(rf"\.{re.escape(target.name)}\.[0-9a-f]{{{2 * _TOKEN_BYTES}}}\.tmp")
    removed = []
    for path in target.parent.glob(f".{glob.escape(target.name)}.*.tmp"):
        if not pattern.fullmatch(path.name) or path in _held or path.is_symlink():
            continue
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            if _lock(fd):
                _remove(path)
                removed.append(path)
        finally:
            os.close(fd)
    return removed


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def discard(temporary: Path) -> None:
    """Remove a temporary sibling, file or folder, if it is still there, and its lock."""
    try:
        _remove(temporary)
    finally:
        _release(temporary)


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
        _release(temporary)
        return
    if not target.exists() and not target.is_symlink():
        os.rename(temporary, target)
        _release(temporary)
        return
    old = temporary_sibling(target, directory=True)
    os.rename(target, old / target.name)
    os.rename(temporary, target)
    _release(temporary)
    discard(old)


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
