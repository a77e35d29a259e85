"""Model families behind one contract (:class:`glomx.models.base.Classifier`), and loading any
saved model (:class:`glomx.models.base.Predictor`)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from importlib import import_module
from pathlib import Path

from glomx.config import TRAIN_PREFIX, Params, ParamsError, TrainSection
from glomx.models.base import Classifier, ModelMeta, Predictor
from glomx.models.exported import has_export, load_exported
from glomx.models.mean import MEMBERS, MeanModel

# family name → "module:ClassName", imported lazily so sklearn-only use never loads Keras
FAMILIES = {
    "lr": "glomx.models.logistic:LogisticClassifier",
    "cnn": "glomx.models.cnn:CNNClassifier",
    "resnet": "glomx.models.transfer:ResNetClassifier",
    "mobilenet": "glomx.models.transfer:TransferClassifier",
    "probe": "glomx.models.probe:ProbeClassifier",
}


def family_class(family: str) -> type[Classifier]:
    """The classifier class for a family name."""
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; known: {', '.join(FAMILIES)}")
    module, name = FAMILIES[family].split(":")
    return getattr(import_module(module), name)


def check_family(family: str) -> None:
    """A ``train_<family>`` section must name a family of :data:`FAMILIES`."""
    if family not in FAMILIES:
        known = ", ".join(f"{TRAIN_PREFIX}{f}" for f in FAMILIES)
        raise ParamsError(
            f"params.yaml: {TRAIN_PREFIX}{family} is not a known section; families: {known}"
        )


def family_section(params: Params, family: str) -> TrainSection:
    """``train_<family>``, typed on loading (a Keras family's ``fit:`` over ``keras_fit``)."""
    check_family(family)
    section: TrainSection = params.need(f"{TRAIN_PREFIX}{family}")
    return section


def load_classifier(directory: str | Path) -> Predictor:
    """Load any saved glomx model directory natively: one family's model, or a mean of saved
    models (a bag of fold models, the ensemble), whose members load the same way."""
    return _load(Path(directory), exported=False)


def load_predictor(directory: str | Path) -> Predictor:
    """Load a saved model directory for prediction: its inference export when it has one
    (ONNX Runtime, no TensorFlow; :mod:`glomx.models.exported`), a mean of its members so
    loaded (the ensemble of bags), else natively as :func:`load_classifier`."""
    return _load(Path(directory), exported=True)


def _load(directory: Path, exported: bool) -> Predictor:
    if exported and has_export(directory):
        return load_exported(directory)
    meta, extra = ModelMeta.read(directory)
    if MEMBERS in extra:
        names = extra[MEMBERS]
        # exports load in parallel (ONNX Runtime builds sessions outside the GIL); Keras
        # loads one model at a time, as it always has
        with ThreadPoolExecutor(len(names) if exported else 1) as pool:
            loaded = pool.map(lambda m: _load(directory / m, exported), names)
            members = dict(zip(names, loaded, strict=True))
        return MeanModel.from_json(meta, extra, members)
    cls = family_class(meta.family)
    return cls._load_weights(directory, meta, cls.record_class.from_json(extra))
