"""The contracts every model honours, so evaluate and predict never branch on it.

A :class:`Predictor` is any saved model: it predicts from uint8 image batches as the prepare
stage writes them (any size and channel count: it adapts them to its own input itself). A
:class:`Classifier` is a family's trainable predictor, fitted on array stores; the mean of
fitted models (:mod:`glomx.models.mean`) is a predictor, never fitted itself.
Saved models are directories with a ``glomx.json`` describing family, input and the
preprocessing needed to go from a raw image file to the model's input.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np

from glomx.config import Section, TrainSection
from glomx.data.adapt import adapt
from glomx.data.images import Preprocessing
from glomx.data.stain import StainNormalizer
from glomx.data.store import ArrayStore

META_FILE = "glomx.json"


@dataclass
class ModelMeta:
    """What any saved model needs besides its weights and its own state."""

    family: str
    size: int
    channels: int
    preprocessing: Preprocessing
    threshold: float = 0.5

    def save(self, directory: Path, extra: Mapping[str, Any]) -> None:
        """``glomx.json``: these fields, then the model's own state as ``extra``."""
        meta = {**asdict(self), "extra": dict(extra)}
        (directory / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")

    @classmethod
    def read(cls, directory: Path) -> tuple[ModelMeta, dict[str, Any]]:
        """The meta saved in ``directory`` and its ``extra``, for the model's own type to read."""
        path = directory / META_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{directory} is not a saved glomx model (no {META_FILE})")
        raw = json.loads(path.read_text())
        raw["preprocessing"] = Preprocessing(**raw["preprocessing"])
        extra = raw.pop("extra", {})
        return cls(**raw), extra


@dataclass
class FitRecord:
    """A family model's state besides its weights: the ``model:`` and ``fit:`` params it was
    built from (as JSON, tuples as lists) and what fitting chose. Saved as glomx.json's
    ``extra``, in the layout of the untyped dict it replaces, so models saved before load and
    new ones save byte-identical files."""

    model: dict[str, Any] = field(default_factory=dict)
    fit: dict[str, Any] = field(default_factory=dict)
    stain: dict[str, Any] | None = None  # the fitted StainNormalizer's dict; None: no stain
    best_epoch: int | None = None  # 1-based epoch (or candidate) kept on validation
    epochs_run: int | None = None
    class_weight: dict[str, float] | None = None  # None: unweighted (saved as null)
    # the order the fit sets the fields in: glomx.json's order
    ORDER: ClassVar[tuple[str, ...]] = (
        "model", "fit", "stain", "best_epoch", "epochs_run", "class_weight",
    )  # fmt: skip

    @classmethod
    def of(cls, model: Section, fit: Section) -> Self:
        """An unfitted model's record of its typed ``model:`` and ``fit:`` params."""
        # through JSON, so the record equals its saved-and-loaded self (tuples become lists)
        return cls(model=model.model_dump(mode="json"), fit=fit.model_dump(mode="json"))

    @classmethod
    def from_json(cls, extra: Mapping[str, Any]) -> Self:
        """A saved ``extra``; keys this version does not record are ignored."""
        return cls(**{f.name: extra[f.name] for f in fields(cls) if f.name in extra})

    def to_json(self) -> dict[str, Any]:
        """The ``extra`` to save: fields in :attr:`ORDER`, unset ones left out."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return {
            name: values[name]
            for name in sorted(values, key=self.ORDER.index)
            if values[name] is not None or name == "class_weight"
        }


EpochHook = Callable[[dict[str, float]], None]  # one epoch's (or candidate's) scores


class Predictor(ABC):
    """P(globally sclerotic) from uint8 image batches, a threshold, a folder it saves to: what
    evaluate, predict and serving use of any model, a family's or a mean of several."""

    native_flavor: ClassVar[str | None] = None  # MLflow flavor of a native model, if any

    def __init__(self, meta: ModelMeta) -> None:
        self.meta = meta

    @abstractmethod
    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        """``(N, H, W, C)`` uint8 → ``(N,)`` float probabilities of class 1."""

    @abstractmethod
    def summary(self) -> str:
        """A human-readable description of the fitted model (logged as text)."""

    @abstractmethod
    def tags(self) -> dict[str, str]:
        """Facts about the fitted model worth a tag and a metrics entry (e.g. weights source)."""

    @abstractmethod
    def _save_weights(self, directory: Path) -> None:
        """Write the model's files besides ``glomx.json`` into ``directory``."""

    @abstractmethod
    def _extra(self) -> dict[str, Any]:
        """The model's own state as glomx.json's ``extra``."""

    def set_threshold(self, threshold: float) -> Self:
        """Predict class 1 from ``threshold`` on (saved with the model)."""
        if not 0.0 <= threshold <= 1.0:  # also refuses NaN
            raise ValueError(f"a threshold must be a probability in [0, 1], got {threshold}")
        self.meta.threshold = float(threshold)
        return self

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Hard labels at the model's threshold."""
        return (self.predict_proba(images) >= self.meta.threshold).astype(np.uint8)

    def predict_store(self, store: ArrayStore, batch_size: int = 64) -> np.ndarray:
        """Probabilities for every image of a store, streamed in batches."""
        parts = [self.predict_proba(chunk) for _, chunk in store.iter_chunks(batch_size)]
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.float32)

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._save_weights(directory)
        self.save_meta(directory)

    def save_meta(self, directory: Path) -> None:
        """Write ``glomx.json`` alone (a mean model whose members are saved already)."""
        self.meta.save(directory, self._extra())


class Classifier(Predictor):
    """A model family's trainable binary classifier, scikit-learn-shaped: :meth:`fit` returns
    the fitted classifier, its per-epoch scores are ``history_``."""

    family: ClassVar[str]
    config_class: ClassVar[type[Section]]  # the ``model:`` part of ``train_<family>``
    fit_config_class: ClassVar[type[Section]]  # the ``fit:`` part
    record_class: ClassVar[type[FitRecord]] = FitRecord  # the family's fitted state

    def __init__(self, meta: ModelMeta, record: FitRecord) -> None:
        super().__init__(meta)
        self.record = record  # an instance of record_class
        self.history_: dict[str, list[float]] = {}

    @classmethod
    @abstractmethod
    def from_params(cls, section: TrainSection, preprocessing: Preprocessing) -> Classifier:
        """An unfitted classifier from its ``train_<family>`` section's ``model:`` and ``fit:``
        (other keys are the training stage's)."""

    @classmethod
    def typed_params(cls, section: TrainSection) -> tuple[Any, Any]:
        """``section``'s ``model:`` and ``fit:``, which must be this family's
        :attr:`config_class` and :attr:`fit_config_class` (another family's section is a bug)."""
        model, fit = section.model, section.fit
        if not (isinstance(model, cls.config_class) and isinstance(fit, cls.fit_config_class)):
            raise TypeError(
                f"{cls.family} is built from its train_{cls.family} section: {section!r}"
            )
        return model, fit

    @classmethod
    def new_meta(cls, size: int, channels: int, preprocessing: Preprocessing) -> ModelMeta:
        """An unfitted model's meta."""
        return ModelMeta(cls.family, size, channels, preprocessing)

    def fit(
        self,
        train: ArrayStore,
        val: ArrayStore,
        class_weight: dict[int, float] | None = None,
        on_epoch: EpochHook | None = None,
    ) -> Self:
        """Train on ``train``; epochs, early stopping or C are chosen on ``val``. Each epoch's
        scores go to ``on_epoch`` as they come and into ``history_``."""
        if len(train) == 0:
            raise ValueError(f"{train.path} has no images to train on")
        if len(set(val.labels.tolist())) < 2:
            raise ValueError(f"{val.path} needs both classes to select a model on validation")
        self.history_ = self._fit(train, val, class_weight, on_epoch or (lambda scores: None))
        weights = {str(k): float(v) for k, v in class_weight.items()} if class_weight else None
        self.record.class_weight = weights  # as glomx.json keeps it
        return self

    @abstractmethod
    def _fit(
        self,
        train: ArrayStore,
        val: ArrayStore,
        class_weight: dict[int, float] | None,
        on_epoch: EpochHook,
    ) -> dict[str, list[float]]:
        """The family's training; returns the per-epoch history."""

    @classmethod
    @abstractmethod
    def _load_weights(cls, directory: Path, meta: ModelMeta, record: FitRecord) -> Classifier:
        """Rebuild a fitted classifier from ``directory``."""

    @property
    def stain(self) -> StainNormalizer:
        """The stain normaliser fitted on the training images (``none`` if not asked for)."""
        return StainNormalizer.from_dict(self.record.stain or {"method": "none"})

    def fit_stain(self, method: str, train: ArrayStore) -> None:
        """Fit the stain normaliser on (an even sample of) the training store; kept in the
        record."""
        if method == "none":
            self.record.stain = None
            return
        stain = StainNormalizer.fit_store(method, train, self.meta.size, self.meta.channels)
        self.record.stain = stain.to_dict()

    def adapted(self, images: np.ndarray) -> np.ndarray:
        """Prepared uint8 images at the model's size and channels, stain-normalised as fitted."""
        return self.stain.transform(adapt(images, self.meta.size, self.meta.channels))

    def summary(self) -> str:
        return f"{self.meta!r}\n{self.record!r}"

    def _extra(self) -> dict[str, Any]:
        return self.record.to_json()

    def native_model(self, images: np.ndarray) -> tuple[Any, np.ndarray]:
        """The underlying library model and an input example for it, for ``native_flavor``."""
        raise NotImplementedError(f"{self.family} has no native MLflow flavor")

    def write_figures(self, train: ArrayStore, directory: Path) -> list[Path]:
        """Family-specific pictures of the fitted model, written under ``directory``."""
        return []

    def tags(self) -> dict[str, str]:
        tags = {k: v for k, v in self.record.to_json().items() if isinstance(v, str)}
        return {**tags, "stain": self.stain.method}
