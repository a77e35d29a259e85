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
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from glomx.data.adapt import adapt
from glomx.data.stain import StainNormalizer, transform_each
from glomx.errors import CorruptModelError
from glomx.models.base import ModelMeta, Predictor

EXPORT_FILE = "inference.onnx"
SPEC_FILE = "inference.json"
CHUNK = 16  # images per ONNX Runtime call; the chunks of a batch run side by side
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

    def normalizer(self) -> StainNormalizer:
        """This input's fitted stain normaliser (``none`` where it has none)."""
        return StainNormalizer.from_dict(self.stain or {"method": "none"})


def feed(inputs: list[InputSpec], images: np.ndarray) -> dict[str, np.ndarray]:
    """Prepared uint8 images → each input's float32 array. Inputs of one size and channels
    are adapted once, and an image's own stain statistics are estimated once for all their
    normalisers (a bag's folds each fitted their own)."""
    arrays: dict[str, np.ndarray] = {}
    for size, channels in dict.fromkeys((i.size, i.channels) for i in inputs):
        group = [i for i in inputs if (i.size, i.channels) == (size, channels)]
        adapted = adapt(images, size, channels)
        normalised = transform_each([i.normalizer() for i in group], adapted)
        arrays.update(
            (i.name, n.astype(np.float32)) for i, n in zip(group, normalised, strict=True)
        )
    return arrays


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
        """The batch in chunks of :data:`CHUNK`, one single-threaded ONNX Runtime call per
        chunk, as many at once as there are cores: side by side they keep the cores busier
        than one call whose threads wait for each other at every layer (on 2 cores the
        champion's networks took 85 ms of CPU per image, not 112), and a chunk's activations
        are a quarter of a batch's of 64."""
        if not len(images):
            return np.empty(0, dtype=np.float32)
        chunks = [images[i : i + CHUNK] for i in range(0, len(images), CHUNK)]
        if len(chunks) == 1:
            return self._run(chunks[0])
        with ThreadPoolExecutor(min(len(chunks), os.cpu_count() or 1)) as pool:
            return np.concatenate(list(pool.map(self._run, chunks)))

    def _run(self, images: np.ndarray) -> np.ndarray:
        (proba,) = self.session.run([OUTPUT], feed(self.spec.inputs, images))
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
    options.intra_op_num_threads = 1  # calls run side by side instead (predict_proba)
    try:
        source = str(path) if graph is None else graph
        session = ort.InferenceSession(source, options, providers=ort.get_available_providers())
    except Exception as err:  # ORT raises its own Fail/InvalidGraph types
        raise CorruptModelError(path, family, f"{type(err).__name__}: {err}") from err
    return session


def load_exported(directory: Path) -> ExportedModel:
    """The export in ``directory``, with the meta of its ``glomx.json``."""
    meta, extra = ModelMeta.read(directory)
    return ExportedModel(meta, extra, directory)
