"""Model folders as the stages hand them over: built aside and swapped in whole, so a kill
never leaves half a model where a finished one stood; and packed as bytes, so a Ray trial
returns its fitted fold model without a shared file system."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from glomx.errors import GlomxError
from glomx.files import discard, put_in_place, temporary_sibling
from glomx.models.base import META_FILE


class ForeignFolderError(GlomxError, FileExistsError):
    """The model folder holds something that is not a glomx model, which saving would lose."""


def check_replaceable(directory: Path) -> None:
    """Refuse a ``directory`` that a model must not replace: one that exists and is neither
    empty nor a glomx model (nor a partial one, which holds a member's meta). Checked at the
    stage's door, before any fold trains, and again just before the swap."""
    if directory.is_file() or (
        directory.is_dir() and any(directory.iterdir()) and not any(directory.rglob(META_FILE))
    ):
        raise ForeignFolderError(
            f"{directory} exists and is not a glomx model; move it away (the model is saved there)"
        )


def replace_model(build: Path, directory: Path) -> None:
    """Swap the finished model folder ``build`` (a sibling) into ``directory``, replacing a
    previous model there (or a partial folder an interrupted run left), but nothing else."""
    check_replaceable(directory)
    put_in_place(build, directory)


@contextmanager
def model_folder(directory: Path) -> Iterator[Path]:
    """A temporary sibling of ``directory`` to build a model folder in: it replaces
    ``directory`` when the block completes, and is removed whatever happens."""
    build = temporary_sibling(directory, directory=True)
    try:
        yield build
        replace_model(build, directory)
    finally:
        discard(build)


def archive(directory: Path) -> bytes:
    """A saved model folder as one tar archive."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(directory, arcname=".")
    return buffer.getvalue()


def unpack(model: bytes, directory: Path) -> None:
    """Write an :func:`archive` into ``directory``."""
    directory.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(model)) as tar:
        tar.extractall(directory, filter="data")
