"""A saved model's inference export, run by ONNX Runtime without TensorFlow.

Why: a user's ``glomx predict`` with the champion loaded twelve Keras networks (four bags of
three fold models) before its first row, 26–34 s on a 2-core machine, and Keras's ``predict``
then ran each network at less than half ONNX Runtime's speed. A bag whose fold models are all
Keras networks is therefore also saved as one ONNX graph (:mod:`glomx.models.onnx_export`):
the folds side by side, their mean as the output, one graph input per distinct model input
(size, channels, stain normaliser), weights stored once where folds share them (the probe's
frozen backbone), so ONNX Runtime computes a shared backbone once.

The export lies beside the native files of the same folder (``inference.onnx`` and
``inference.json``); the native files stay the source of truth (training, Grad-CAM, the
MLflow native flavour). :func:`load_predictor` prefers the export: a folder without one (an
old folder, a logistic-regression bag) loads natively, and a mean of bags (the ensemble) is
the mean of its members' exports.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from glomx.data.adapt import adapt
from glomx.data.stain import StainNormalizer
from glomx.errors import CorruptModelError
from glomx.models.base import ModelMeta, Predictor

EXPORT_FILE = "inference.onnx"
SPEC_FILE = "inference.json"
OUTPUT = "probability"  # the graph's output: (N, 1) P(class 1), the mean over its networks


@dataclass(frozen=True)
class InputSpec:
    """One graph input: prepared images adapted to ``size`` and ``channels`` and normalised by
    the fitted ``stain`` normaliser (its dict; None: no normalisation), as float32 — exactly
    what the native network was given (:meth:`~glomx.models.base.Classifier.adapted`)."""

    name: str
    size: int
    channels: int
    stain: dict[str, Any] | None = None

    def key(self) -> str:
        """Equal for inputs that take the same array (so folds share one graph input)."""
        return json.dumps([self.size, self.channels, self.stain], sort_keys=True)

    def prepare(self, images: np.ndarray) -> np.ndarray:
        """Prepared uint8 images → this input's float32 array."""
        stain = StainNormalizer.from_dict(self.stain or {"method": "none"})
        return stain.transform(adapt(images, self.size, self.channels)).astype(np.float32)


@dataclass(frozen=True)
class ExportSpec:
    """``inference.json``: the graph's inputs, the networks it averages, and the native
    model's tags (so an export is tagged and served like the model it was made from)."""

    inputs: list[InputSpec]
    networks: list[str]  # the member folders whose networks the graph averages, in order
    tags: dict[str, str] = field(default_factory=dict)
    runtime: str = "onnxruntime"

    def save(self, directory: Path) -> None:
        (directory / SPEC_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def read(cls, directory: Path) -> ExportSpec:
        raw = json.loads((directory / SPEC_FILE).read_text())
        return cls(**{**raw, "inputs": [InputSpec(**i) for i in raw["inputs"]]})


def has_export(directory: Path) -> bool:
    """Whether ``directory`` holds an inference export."""
    return (directory / EXPORT_FILE).is_file() and (directory / SPEC_FILE).is_file()


class ExportedModel(Predictor):
    """A saved model predicted by ONNX Runtime from its export: the same probabilities as the
    native model (within float32 rounding, about 1e-6), without loading TensorFlow.

    It keeps the folder it was loaded from: saving it copies that folder's files (native and
    export) and writes its current meta (a changed threshold), so it round-trips like the
    native model. Pickling (Ray actors, maybe on other machines) carries the graph's bytes,
    read from the folder then, not the path.
    """

    def __init__(self, meta: ModelMeta, extra: dict[str, Any], directory: Path) -> None:
        super().__init__(meta)
        self.extra = extra
        self.directory = directory
        self.spec = ExportSpec.read(directory)
        self.session = _session(directory / EXPORT_FILE, meta.family)

    def __getstate__(self) -> dict[str, Any]:
        state = {k: v for k, v in self.__dict__.items() if k != "session"}
        return {**state, "graph": (self.directory / EXPORT_FILE).read_bytes()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        graph = state.pop("graph")
        self.__dict__.update(state)
        self.session = _session(self.directory / EXPORT_FILE, self.meta.family, graph)

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        if not len(images):
            return np.empty(0, dtype=np.float32)
        feed = {i.name: i.prepare(images) for i in self.spec.inputs}
        (proba,) = self.session.run([OUTPUT], feed)
        return np.asarray(proba, dtype=np.float32).reshape(-1)

    def summary(self) -> str:
        inputs = ", ".join(f"{i.size}px×{i.channels}" for i in self.spec.inputs)
        return (
            f"{self.meta.family}: ONNX Runtime export of the mean of "
            f"{len(self.spec.networks)} networks ({', '.join(self.spec.networks)}); "
            f"inputs {inputs}"
        )

    def tags(self) -> dict[str, str]:
        return dict(self.spec.tags)

    def _extra(self) -> dict[str, Any]:
        return self.extra

    def _save_weights(self, directory: Path) -> None:
        if directory.resolve() != self.directory.resolve():
            shutil.copytree(self.directory, directory, dirs_exist_ok=True)


def _session(path: Path, family: str, graph: bytes | None = None) -> Any:
    """An ONNX Runtime session over the graph in ``path`` (or its bytes, ``graph``), on the
    CPU unless a GPU provider is installed."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # warnings such as unused initializers are not the user's
    # without its arena ONNX Runtime frees each batch's activations: peak memory stays that of
    # one batch (the arena kept 4 GiB after three batches of 64 through the champion)
    options.enable_cpu_mem_arena = False
    try:
        source = str(path) if graph is None else graph
        return ort.InferenceSession(source, options, providers=ort.get_available_providers())
    except Exception as err:  # ORT raises its own Fail/InvalidGraph types
        raise CorruptModelError(path, family, f"{type(err).__name__}: {err}") from err


def load_exported(directory: Path) -> ExportedModel:
    """The export in ``directory``, with the meta of its ``glomx.json``."""
    meta, extra = ModelMeta.read(directory)
    return ExportedModel(meta, extra, directory)
