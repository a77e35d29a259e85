"""The equal-weight mean of saved models: a family's bag of cross-validation fold models, and
the ``ensemble`` of the families that cross-validation cannot tell apart.

A mean model is a directory whose ``glomx.json`` lists its members, each a saved glomx model in
a subdirectory of its own (a fold model, or a whole bag)::

    models/cnn/glomx.json        family cnn, extra.members ["fold-0", "fold-1", "fold-2"]
    models/cnn/fold-0/...        a saved CNN
    artifacts/select/ensemble/   family ensemble, members ["cnn", "probe", "mobilenet"]

Every member adapts the prepared images to its own input, so the mean serves, predicts and is
evaluated through the one :class:`~glomx.models.base.Classifier` contract, unchanged.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np

from glomx.config import TrainSection
from glomx.data.images import Preprocessing
from glomx.data.store import ArrayStore
from glomx.models.base import Classifier, EpochHook, ModelMeta

MEMBERS = "members"  # key of meta.extra naming the member subdirectories, in order


class MeanClassifier(Classifier):
    """P(class 1) as the mean of its members' probabilities."""

    family: ClassVar[str] = "mean"

    def __init__(self, meta: ModelMeta, members: Sequence[Classifier]) -> None:
        super().__init__(meta)
        if not members:
            raise ValueError(f"a {meta.family} mean model needs at least one member")
        self.members = list(members)

    @classmethod
    def of(
        cls,
        family: str,
        members: dict[str, Classifier],
        preprocessing: Preprocessing,
        threshold: float = 0.5,
        extra: dict[str, Any] | None = None,
    ) -> MeanClassifier:
        """The mean of ``members`` (subdirectory name → fitted member) as model ``family``."""
        meta = ModelMeta(
            family=family,
            size=preprocessing.size,
            channels=preprocessing.channels,
            preprocessing=preprocessing,
            threshold=threshold,
            extra={**(extra or {}), MEMBERS: list(members)},
        )
        return cls(meta, list(members.values()))

    @classmethod
    def from_params(cls, section: TrainSection, preprocessing: Preprocessing) -> Self:
        raise TypeError("a mean model is built from fitted members (MeanClassifier.of), not params")

    def _fit(
        self,
        train: ArrayStore,
        val: ArrayStore,
        class_weight: dict[int, float] | None,
        on_epoch: EpochHook,
    ) -> dict[str, list[float]]:
        raise TypeError("a mean model is not fitted: its members are (glomx.pipeline.cv)")

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        return np.mean([m.predict_proba(images) for m in self.members], axis=0)

    def flavors(self) -> set[str]:
        return set().union(*(m.flavors() for m in self.members))

    def summary(self) -> str:
        names = self.meta.extra[MEMBERS]
        lines = [f"{self.meta.family}: mean of {len(names)} models ({', '.join(names)})"]
        for name, member in zip(names, self.members, strict=True):
            lines += ["", f"## {name}", member.summary()]
        return "\n".join(lines)

    def tags(self) -> dict[str, str]:
        return {**self.members[0].tags(), MEMBERS: ",".join(self.meta.extra[MEMBERS])}

    def _save_weights(self, directory: Path) -> None:
        for name, member in zip(self.meta.extra[MEMBERS], self.members, strict=True):
            member.save(directory / name)

    @classmethod
    def _load_weights(cls, directory: Path, meta: ModelMeta) -> MeanClassifier:
        raise TypeError(f"load {directory} with glomx.models.load_classifier, which loads members")


def copy_member(source: Path, directory: Path) -> None:
    """Copy a saved model folder into a mean model's folder (members are saved as files, so
    copying them keeps them bit-identical to the registered originals)."""
    shutil.copytree(source, directory)


def keras_member(classifier: Any) -> Any:
    """What Grad-CAM draws for a model: a Keras model itself, else the first Keras model among
    its members, depth first (a bag's first fold model, an ensemble's first Keras family's);
    None when it holds none."""
    if hasattr(classifier, "keras_model"):
        return classifier
    for member in getattr(classifier, "members", None) or []:
        if (found := keras_member(member)) is not None:
            return found
    return None
