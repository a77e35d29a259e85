"""Model folders as the stages hand them over: built aside and swapped in whole, so a kill
never leaves half a model where a finished one stood; and packed as bytes, so a Ray trial
returns its fitted fold model without a shared file system."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from glomx.data.images import Preprocessing
from glomx.errors import GlomxError
from glomx.evaluation.selection import ENSEMBLE
from glomx.files import discard, put_in_place, temporary_sibling
from glomx.models import load_classifier
from glomx.models.base import META_FILE, Predictor
from glomx.models.mean import CVRecord, MeanModel, copy_member


class ForeignFolderError(GlomxError, FileExistsError):
    """The model folder holds something that is not a glomx model, which saving would lose."""


def check_replaceable(directory: Path) -> None:
    """Refuse a ``directory`` that a model must not replace: one that exists and is neither
    empty nor a glomx model (nor a partial one, which holds a member's meta). Checked when the
    stage starts, before any fold trains, and again just before the swap."""
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


def write_bag(
    family: str,
    fold_models: Mapping[int, bytes],
    preprocessing: Preprocessing,
    threshold: float,
    cv: CVRecord,
    directory: Path,
) -> MeanModel:
    """A family's bag: its fold models (archives, by fold) as one mean model in ``directory``,
    at ``threshold``, recording the folds it came from (``cv``), with its inference export
    when its folds are Keras networks (:mod:`glomx.models.exported`)."""
    with model_folder(directory) as build:
        members: dict[str, Predictor] = {}
        for fold, model in fold_models.items():
            unpack(model, build / f"fold-{fold}")
            members[f"fold-{fold}"] = load_classifier(build / f"fold-{fold}")
        bag = MeanModel.of(family, members, preprocessing, threshold, cv)
        bag.save_meta(build)  # the members are already saved, as the trials wrote them
        if any(m.native_flavor == "keras" for m in members.values()):
            from glomx.models.onnx_export import export_mean  # TensorFlow: Keras bags only

            export_mean(members, bag.tags(), build)
    return bag


def write_ensemble(
    bags: Mapping[str, Path], preprocessing: Preprocessing, directory: Path
) -> MeanModel:
    """The tied families' bags (family → its folder), copied bit for bit into ``directory``,
    as one mean model."""
    with model_folder(directory) as build:
        for family, source in bags.items():
            copy_member(source, build / family)
        loaded = {f: load_classifier(build / f) for f in bags}
        ensemble = MeanModel.of(ENSEMBLE, loaded, preprocessing)
        ensemble.save_meta(build)
    return ensemble
