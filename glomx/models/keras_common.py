"""What the Keras families share: streamed input, validation-driven selection, save/load.

Backend-neutral Keras 3: data comes from a :class:`StoreSequence` (``keras.utils.PyDataset``)
that reads uint8 batches from an :class:`~glomx.data.store.ArrayStore`, adapts them to the
model's input and augments them in numpy, so ``KERAS_BACKEND=jax`` or ``torch`` runs the same
code. Models take uint8-valued float input and rescale inside their own layers.

Selection: at every epoch end :class:`ValidationMonitor` predicts the validation store, adds
``val_loss``, ``val_auc`` and ``val_balanced_accuracy`` (threshold 0.5) to the epoch's logs (so
the MLflow callback, the progress line and the history see them), keeps the best weights on
the chosen metric across all training phases, and stops a phase after ``patience`` epochs
without improvement. The best weights are restored when fitting ends.
"""

from __future__ import annotations

import functools
import logging
import math
import zipfile
from abc import abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

import keras
import numpy as np

from glomx.config import Section, TrainSection, parse
from glomx.data.images import Preprocessing
from glomx.data.store import ArrayStore
from glomx.errors import CorruptModelError
from glomx.evaluation.metrics import epoch_scores
from glomx.family_params import FitConfig
from glomx.models.base import Classifier, EpochHook, FitRecord, ModelMeta

MODEL_FILE = "model.keras"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Phase:
    """One ``model.fit`` call: which layers train, for how many epochs, at which rate."""

    name: str
    epochs: int
    learning_rate: float
    set_trainable: Callable[[keras.Model], None]


def set_trainable(layer: keras.Layer, trainable: bool) -> None:
    """Set ``trainable`` on ``layer`` and, explicitly, on every layer nested in it.

    Keras's setter recurses itself, but on the TensorFlow backend an assignment equal to the
    current value is skipped (``KerasAutoTrackable`` short-circuits ``x.a = x.a``), so a model
    already marked trainable would keep frozen sublayers frozen.
    """
    layer.trainable = trainable
    for sublayer in getattr(layer, "layers", ()):
        set_trainable(sublayer, trainable)


def train_everything(model: keras.Model) -> None:
    """Make every layer trainable."""
    set_trainable(model, True)


def random_dihedral(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each square image under a random one of the 8 rotations/reflections."""
    turns = rng.integers(0, 4, len(images))
    flips = rng.integers(0, 2, len(images)).astype(bool)
    out = np.empty_like(images)
    for i, image in enumerate(images):
        image = np.rot90(image, turns[i])
        out[i] = image[:, ::-1] if flips[i] else image
    return out


def color_jitter(images: np.ndarray, rng: np.random.Generator, amount: float) -> np.ndarray:
    """Multiply each image's RGB channels by gains drawn from ``[1 - amount, 1 + amount]``."""
    gain = np.ones((len(images), 1, 1, images.shape[-1]), dtype=np.float32)
    gain[..., :3] = rng.uniform(1 - amount, 1 + amount, (len(images), 1, 1, 3))
    return np.clip(images * gain, 0, 255).astype(np.uint8)


class StoreSequence(keras.utils.PyDataset):
    """Batches of ``(uint8-valued float32 images, float32 labels)`` streamed from a store,
    each read batch passed through ``prepare`` (the classifier's ``adapted``: resize, stain).

    Epoch ``e`` visits the images in a permutation drawn from ``(seed, e)``; augmentation
    draws from ``(seed, e, batch)``, so batches do not depend on the order workers run in.
    """

    def __init__(
        self,
        store: ArrayStore,
        batch_size: int,
        prepare: Callable[[np.ndarray], np.ndarray],
        seed: int,
        augment_dihedral: bool = False,
        jitter: float = 0.0,
        workers: int = 1,
    ) -> None:
        super().__init__(workers=workers, use_multiprocessing=False)
        if len(store) == 0:
            raise ValueError(f"{store.path} holds no images; nothing to train on")
        self.store = store
        self.batch_size = batch_size
        self.prepare = prepare
        self.seed = seed
        self.augment_dihedral = augment_dihedral
        self.jitter = jitter
        self.epoch = 0
        self.order = self._permutation(0)

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.store))

    def __len__(self) -> int:
        return math.ceil(len(self.store) / self.batch_size)

    def batch_indices(self, index: int) -> np.ndarray:
        """Store indices of batch ``index`` in the current epoch."""
        return self.order[index * self.batch_size : (index + 1) * self.batch_size]

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        idx = self.batch_indices(index)
        images = self.prepare(self.store.read(idx))
        rng = np.random.default_rng([self.seed, self.epoch, index])
        if self.augment_dihedral:
            images = random_dihedral(images, rng)
        if self.jitter:
            images = color_jitter(images, rng, self.jitter)
        return images.astype(np.float32), self.store.labels[idx].astype(np.float32)

    def on_epoch_end(self) -> None:
        self.epoch += 1
        self.order = self._permutation(self.epoch)


class ValidationMonitor(keras.callbacks.Callback):
    """Scores the validation set every epoch, keeps the best weights, stops stalled phases.

    Put it first in the callback list: it adds the ``val_*`` entries that later callbacks log.
    One monitor spans every phase of a fit, so the best epoch may come from any phase.
    """

    def __init__(
        self, predict: Callable[[], np.ndarray], labels: np.ndarray, monitor: str, patience: int
    ) -> None:
        super().__init__()
        self.predict = predict
        self.labels = np.asarray(labels)
        self.key = f"val_{monitor}"
        self.patience = patience
        self.best = -math.inf
        self.best_epoch = -1
        self.best_weights: list[np.ndarray] | None = None
        self.wait = 0

    def start_phase(self) -> None:
        """Give a new phase its full patience."""
        self.wait = 0

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        scores = epoch_scores(self.labels, self.predict())
        if logs is not None:
            logs.update(scores)
        if scores[self.key] > self.best:
            self.best, self.best_epoch, self.wait = scores[self.key], epoch, 0
            self.best_weights = [np.array(w) for w in self.model.get_weights()]
        else:
            self.wait += 1
            if self.wait >= self.patience:
                self.model.stop_training = True

    def restore_best(self) -> None:
        """Load the best epoch's weights back into the model."""
        if self.best_weights is not None:
            self.model.set_weights(self.best_weights)


@functools.cache
def log_gpus() -> tuple[str, ...]:
    """Log once per process the GPUs the backend trains on (none: CPU), so that a stage's log
    (each Ray fold worker's included) shows whether a GPU install is in use."""
    if keras.backend.backend() != "tensorflow":
        log.info("Keras backend %s: device listing is TensorFlow's only", keras.backend.backend())
        return ()
    import tensorflow as tf

    gpus = tuple(d.name for d in tf.config.list_physical_devices("GPU"))
    log.info("tf.config.list_physical_devices('GPU'): %s", list(gpus) or "none, training on CPU")
    return gpus


@contextmanager
def dtype_policy(mixed_precision: bool) -> Iterator[None]:
    """Build layers under ``mixed_float16`` or ``float32``, restoring the global policy after."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16" if mixed_precision else "float32")
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


class KerasClassifier(Classifier):
    """A Keras model behind the Classifier contract.

    Subclasses give a ``config_class`` (a :class:`~glomx.config.Section` with ``size``),
    :meth:`build_model` and, to train in several phases, :meth:`phases`.
    """

    fit_config_class: ClassVar[type[Section]] = FitConfig
    channels: ClassVar[int | None] = None  # fixed input channels, or None to read the config
    native_flavor: ClassVar[str] = "keras"  # MLflow flavor of :meth:`native_model`

    def __init__(
        self,
        meta: ModelMeta,
        record: FitRecord,
        fit_config: Any,
        config: Any,
        model: keras.Model | None = None,
    ) -> None:
        super().__init__(meta, record)
        self.fit_config: Any = fit_config  # an instance of the class's fit_config_class
        self.config: Any = config  # an instance of its config_class
        self._model = model

    @classmethod
    def from_params(cls, section: TrainSection, preprocessing: Preprocessing) -> Self:
        """From the family's ``train_<family>`` section's ``model:`` and ``fit:``."""
        config, fit_config = cls.typed_params(section)
        channels = cls.channels or config.channels
        meta = cls.new_meta(config.size, channels, preprocessing)
        return cls(meta, cls.record_class.of(config, fit_config), fit_config, config)

    @property
    def keras_model(self) -> keras.Model:
        """The fitted Keras model (input: uint8-valued float images at the model's size)."""
        if self._model is None:
            raise RuntimeError(f"the {self.family} classifier is not fitted; fit or load it first")
        return self._model

    @abstractmethod
    def build_model(self) -> keras.Model:
        """A fresh (uncompiled) model for this classifier's config."""

    def phases(self) -> list[Phase]:
        """Training phases; by default one phase training every layer."""
        return [
            Phase("train", self.fit_config.epochs, self.fit_config.learning_rate, train_everything)
        ]

    def _fit(
        self,
        train: ArrayStore,
        val: ArrayStore,
        class_weight: dict[int, float] | None,
        on_epoch: EpochHook,
    ) -> dict[str, list[float]]:
        cfg = self.fit_config
        log_gpus()
        keras.utils.set_random_seed(cfg.seed)
        with dtype_policy(cfg.mixed_precision):
            self._model = model = self.build_model()
        data = StoreSequence(
            train, cfg.batch_size, self.adapted, cfg.seed, cfg.dihedral, cfg.color_jitter,
            cfg.workers,
        )  # fmt: skip
        monitor = ValidationMonitor(
            lambda: self.predict_store(val, cfg.batch_size), val.labels, cfg.monitor, cfg.patience
        )
        weights = {int(k): float(v) for k, v in class_weight.items()} if class_weight else None
        history: dict[str, list[float]] = {}
        report = keras.callbacks.LambdaCallback(on_epoch_end=lambda _, logs: on_epoch(logs or {}))
        epoch = 0
        for phase in self.phases():
            phase.set_trainable(model)
            model.compile(
                optimizer=keras.optimizers.Adam(self._learning_rate(phase, len(data))),
                loss="binary_crossentropy",
                metrics=[
                    keras.metrics.BinaryAccuracy(name="accuracy"),
                    keras.metrics.AUC(name="auc"),
                ],
                jit_compile=cfg.jit_compile,
            )
            monitor.start_phase()
            log.info("%s: phase %s, up to %d epochs", self.family, phase.name, phase.epochs)
            result = model.fit(
                data,
                epochs=epoch + phase.epochs,
                initial_epoch=epoch,
                class_weight=weights,
                callbacks=[monitor, report, *self._plateau(phase)],
                shuffle=False,  # StoreSequence shuffles per epoch from the seed
                verbose=2,
            )
            for key, values in result.history.items():
                history.setdefault(key, []).extend(values)
            epoch += len(result.history["loss"])
        monitor.restore_best()
        self.record.best_epoch, self.record.epochs_run = monitor.best_epoch + 1, epoch
        return history

    def _learning_rate(self, phase: Phase, steps_per_epoch: int) -> float | Any:
        if self.fit_config.lr_schedule == "cosine":
            return keras.optimizers.schedules.CosineDecay(
                phase.learning_rate, decay_steps=phase.epochs * steps_per_epoch, alpha=0.01
            )
        return phase.learning_rate

    def _plateau(self, phase: Phase) -> list[keras.callbacks.Callback]:
        if self.fit_config.lr_schedule != "plateau":
            return []
        return [
            keras.callbacks.ReduceLROnPlateau(
                monitor=f"val_{self.fit_config.monitor}",
                mode="max",
                factor=0.5,
                patience=max(1, self.fit_config.patience // 3),
                min_lr=phase.learning_rate / 100,
                verbose=1,
            )
        ]

    def model_input(self, images: np.ndarray) -> np.ndarray:
        """Prepared uint8 images → the model's float32 input (size, channels)."""
        return self.adapted(images).astype(np.float32)

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        x = self.model_input(images)
        if not len(x):
            return np.empty(0, dtype=np.float32)
        proba = self.keras_model.predict(x, batch_size=self.fit_config.batch_size, verbose=0)
        return np.asarray(proba, dtype=np.float32).reshape(-1)

    def _inference_model(self) -> keras.Model:
        """A fresh functional view over the same layers: no optimizer state to save."""
        model = self.keras_model
        return keras.Model(model.inputs, model.outputs, name=model.name)

    def native_model(self, images: np.ndarray) -> tuple[keras.Model, np.ndarray]:
        """The Keras model for MLflow's keras flavor, and ``images`` as its float32 input."""
        return self._inference_model(), self.model_input(images)

    def summary(self) -> str:
        """The Keras model summary as text."""
        lines: list[str] = []
        self.keras_model.summary(print_fn=lambda text, **_: lines.append(text))
        return "\n".join(lines)

    def _save_weights(self, directory: Path) -> None:
        self._inference_model().save(directory / MODEL_FILE)

    @classmethod
    def _load_weights(cls, directory: Path, meta: ModelMeta, record: FitRecord) -> Self:
        path = directory / MODEL_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path} missing: not a saved {cls.family} model")
        if not zipfile.is_zipfile(path):  # Keras would call it "File not found"
            raise CorruptModelError(path, cls.family, "not a .keras zip archive")
        try:
            model = keras.saving.load_model(path, compile=False)
        except (ValueError, OSError, KeyError, EOFError, zipfile.BadZipFile) as err:
            raise CorruptModelError(path, cls.family, f"{type(err).__name__}: {err}") from err
        config = parse(cls.config_class, record.model, "model", str(path))
        fit_config = parse(cls.fit_config_class, record.fit, "fit", str(path))
        return cls(meta, record, fit_config, config, model)
