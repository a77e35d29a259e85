"""The equal-weight mean of saved models: a family's bag of cross-validation fold models, and
the ``ensemble`` of the families that cross-validation cannot tell apart.

A mean model is a directory whose ``glomx.json`` lists its members, each a saved glomx model in
a subdirectory of its own (a fold model, or a whole bag)::

    models/cnn/glomx.json        family cnn, extra.members ["fold-0", "fold-1", "fold-2"]
    models/cnn/fold-0/...        a saved CNN
    artifacts/select/ensemble/   family ensemble, members ["cnn", "probe", "mobilenet"]

Every member adapts the prepared images to its own input, so the mean serves, predicts and is
evaluated through the one :class:`~glomx.models.base.Predictor` contract, unchanged. It is
never fitted: its members are (:mod:`glomx.crossval`), so it is no
:class:`~glomx.models.base.Classifier`.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from glomx.data.images import Preprocessing
from glomx.models.base import Classifier, ModelMeta, Predictor

if TYPE_CHECKING:
    from glomx.models.keras_common import KerasClassifier

MEMBERS = "members"  # key of glomx.json's extra naming the member subdirectories, in order
CV = "cv"  # key of a bag's cross-validation record


@dataclass(frozen=True)
class CVRecord:
    """Which cross-validation made a bag: its number of folds and each fold's held-out slides
    (by fold number, as a string: glomx.json's keys)."""

    folds: int
    heldout_slides: dict[str, list[str]]


class MeanModel(Predictor):
    """P(class 1) as the mean of its members' probabilities; ``members`` maps each member's
    subdirectory name to the member, in order; ``cv`` is a bag's cross-validation."""

    def __init__(
        self, meta: ModelMeta, members: Mapping[str, Predictor], cv: CVRecord | None = None
    ) -> None:
        super().__init__(meta)
        if not members:
            raise ValueError(f"a {meta.family} mean model needs at least one member")
        self.members = dict(members)
        self.cv = cv

    @classmethod
    def of(
        cls,
        family: str,
        members: Mapping[str, Predictor],
        preprocessing: Preprocessing,
        threshold: float = 0.5,
        cv: CVRecord | None = None,
    ) -> MeanModel:
        """The mean of ``members`` (subdirectory name → fitted member) as model ``family``."""
        size, channels = preprocessing.size, preprocessing.channels
        return cls(ModelMeta(family, size, channels, preprocessing, threshold), members, cv)

    @classmethod
    def from_json(
        cls, meta: ModelMeta, extra: Mapping[str, Any], members: Mapping[str, Predictor]
    ) -> MeanModel:
        """A saved mean model from its meta, its ``extra`` and its loaded members."""
        return cls(meta, members, CVRecord(**extra[CV]) if CV in extra else None)

    def _extra(self) -> dict[str, Any]:
        cv = {CV: asdict(self.cv)} if self.cv else {}
        return {**cv, MEMBERS: list(self.members)}

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        return np.mean([m.predict_proba(images) for m in self.members.values()], axis=0)

    def summary(self) -> str:
        names = list(self.members)
        lines = [f"{self.meta.family}: mean of {len(names)} models ({', '.join(names)})"]
        for name, member in self.members.items():
            lines += ["", f"## {name}", member.summary()]
        return "\n".join(lines)

    def tags(self) -> dict[str, str]:
        first = next(iter(self.members.values()))
        return {**first.tags(), MEMBERS: ",".join(self.members)}

    def _save_weights(self, directory: Path) -> None:
        for name, member in self.members.items():
            member.save(directory / name)


def fitted_models(model: Predictor) -> Iterator[Classifier]:
    """The family models ``model`` is made of, depth first: itself, or a bag's fold models in
    order, or an ensemble's bags' fold models, bag by bag."""
    if isinstance(model, MeanModel):
        for member in model.members.values():
            yield from fitted_models(member)
    elif isinstance(model, Classifier):
        yield model


def keras_member(model: Predictor) -> KerasClassifier | None:
    """What Grad-CAM draws for a model: its first Keras family model (itself, a bag's first
    fold model, an ensemble's first Keras family's); None when it holds none. Every Keras
    family, and only they, have the ``keras`` native flavor; checking that, not the class,
    keeps Keras unimported for sklearn-only models."""
    found = (m for m in fitted_models(model) if m.native_flavor == "keras")
    return cast("KerasClassifier | None", next(found, None))


def copy_member(source: Path, directory: Path) -> None:
    """Copy a saved model folder into a mean model's folder (members are saved as files, so
    copying them keeps them bit-identical to the registered originals)."""
    shutil.copytree(source, directory)
