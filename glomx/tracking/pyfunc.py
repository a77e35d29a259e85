"""The served form of a glomx model: raw image files in, probability and label out.

:class:`GlomxModel` wraps a saved model directory (``models/<family>/``) as an MLflow
``pyfunc``. Each input row carries one image file's bytes, base64-encoded, in column ``image``
(PNG/JPEG/TIFF/BMP/WEBP, as a client would upload it), and nothing else: a served model never
opens a file path, so a remote caller can neither make the server read its own files nor learn
which of them exist (``glomx predict`` reads local files itself). Rows are decoded and
homogenised exactly as the prepare stage did for training (:func:`glomx.data.images.load_image`
with the model's recorded preprocessing), so a served model sees the pixels it was trained on.
An unreadable row does not fail the batch: its ``probability`` and ``label`` are None (JSON
``null``, never a bare ``NaN``) and ``error`` says why.

Pixels are bounded before any is decoded, from each image's header: an image over
``GLOMX_SERVE_MAX_PIXELS`` (default 4 Mpx; glomerulus patches are well under 1 Mpx), or one
that would take the request over ``GLOMX_SERVE_MAX_REQUEST_PIXELS`` (default 64 Mpx) in all,
gets an error row instead. Bodies, concurrent requests and error replies are bounded by the
server in front of the model (:mod:`glomx.tracking.http_guard`, ``glomx serve``).

The glomx package travels with the model (``code_paths``), so loading it needs only the pinned
requirements, not this repository.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import os
from importlib import import_module, metadata
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature, infer_signature
from mlflow.models.model import ModelInfo
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel
from mlflow.types import ColSpec, DataType, Schema
from PIL import Image

import glomx
from glomx.data.adapt import adapt
from glomx.data.images import ImageError, image_size, load_image
from glomx.models import load_predictor
from glomx.models.base import Classifier, Predictor
from glomx.models.mean import fitted_models
from glomx.tracking.names import ARTIFACT, DIGEST_TAG

BATCH = 16  # rows decoded and predicted at a time (32: ~250 MiB more peak RSS when served)
EXAMPLE_SIZE = 32  # side of the input example PNG
# (environment variable, default): decoded pixels allowed per image and per request
MAX_IMAGE_PIXELS = ("GLOMX_SERVE_MAX_PIXELS", 4_000_000)
MAX_REQUEST_PIXELS = ("GLOMX_SERVE_MAX_REQUEST_PIXELS", 64_000_000)
# MLflow drops columns the schema does not declare before GlomxModel sees the request. `image`
# is optional and `path` declared only so that a request naming a file in `path`, alone or
# beside `image`, reaches GlomxModel and gets its refusal, instead of `path` being ignored.
SIGNATURE = ModelSignature(
    inputs=Schema(
        [
            ColSpec(DataType.string, "image", required=False),
            ColSpec(DataType.string, "path", required=False),
        ]
    ),
    outputs=Schema(
        [
            ColSpec(DataType.double, "probability", required=False),
            ColSpec(DataType.long, "label", required=False),
            ColSpec(DataType.string, "error", required=False),
        ]
    ),
)
INPUT_REFUSAL = (
    "input needs exactly one column, 'image': each image file's bytes, base64-encoded "
    "(PNG/JPEG/TIFF/BMP/WEBP); a served model reads no file paths or other columns"
)
# what the glomx code imports when a served model loads, and what each native flavor adds
_GLOMX = (
    "mlflow", "numpy", "pandas", "pillow", "pyspng", "pyyaml", "matplotlib", "scikit-learn",
    "onnxruntime",
)  # fmt: skip
_FLAVOR = {"sklearn": ("scikit-learn",), "keras": ("keras", "tensorflow-cpu")}


def requirements(flavors: str | set[str] | None, glomx_code: bool = True) -> list[str]:
    """Pinned pip requirements (installed versions): the glomx pyfunc's, or with
    ``glomx_code=False`` only the native flavors'."""
    base = _GLOMX if glomx_code else ("mlflow", "numpy")
    names = {flavors} if isinstance(flavors, str) else (flavors or set())
    extra = tuple(p for f in sorted(names) for p in _FLAVOR.get(f, ()))
    pins = []
    for name in dict.fromkeys(base + extra):
        try:
            pins.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue  # e.g. tensorflow instead of tensorflow-cpu
    return pins


def model_flavors(model: Predictor) -> set[str]:
    """The MLflow flavors whose libraries loading ``model`` needs: its family models' native
    flavors (a mean model's are its members')."""
    return {m.native_flavor for m in fitted_models(model) if m.native_flavor}


def encode_png(image: np.ndarray) -> str:
    """One uint8 ``(H, W, C)`` image as a base64 PNG string."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def input_example(images: np.ndarray) -> pd.DataFrame:
    """A one-row request in the served format: a small RGBA PNG (the challenge files' format)
    made from the first of ``images``."""
    return pd.DataFrame({"image": [encode_png(adapt(images[:1], EXAMPLE_SIZE, 4)[0])]})


def _file_bytes(image: object, name: str) -> bytes:
    """A row's ``image`` cell (base64 text) as the image file's bytes."""
    if not isinstance(image, str) or not image:
        raise ImageError(name, "no image: put the file's bytes, base64-encoded, in column 'image'")
    try:
        return base64.b64decode(image, validate=True)
    except binascii.Error as err:
        raise ImageError(name, f"column 'image' is not valid base64 ({err})") from None


def env_limit(setting: tuple[str, int], unit: str = "pixels") -> int:
    """The limit an environment variable sets (a positive whole number), else its default."""
    name, default = setting
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{name}={raw!r} is not a positive whole number of {unit}; unset it")
    return int(raw)


class GlomxModel(PythonModel):
    """A saved glomx model served on raw image files, with bounded pixels per request."""

    def load_context(self, context: Any) -> None:
        self.classifier: Predictor = load_predictor(context.artifacts[ARTIFACT])
        self.max_pixels = env_limit(MAX_IMAGE_PIXELS)
        self.max_request_pixels = env_limit(MAX_REQUEST_PIXELS)

    def _within_limits(self, data: bytes, name: str, spent: int) -> int:
        """Pixels of one image by its header; ImageError when over a limit."""
        width, height = image_size(data) or (0, 0)  # unreadable: decode() says why
        pixels = width * height
        if pixels > self.max_pixels:
            raise ImageError(
                name,
                f"{width}x{height} px is over this server's limit of {self.max_pixels} px per "
                f"image ({MAX_IMAGE_PIXELS[0]}); send glomerulus patches, downscaled if need be",
            )
        if spent + pixels > self.max_request_pixels:
            raise ImageError(
                name,
                f"over this server's limit of {self.max_request_pixels} px per request "
                f"({MAX_REQUEST_PIXELS[0]}); send this row in another request",
            )
        return pixels

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        """``image`` rows → ``probability``, ``label`` (None where the image is unreadable)
        and ``error`` columns; a frame with any other column is refused."""
        frame = pd.DataFrame(model_input)
        if list(frame.columns) != ["image"]:  # a 400 with this message when served
            raise MlflowException(INPUT_REFUSAL, error_code=INVALID_PARAMETER_VALUE)
        meta = self.classifier.meta
        proba: list[float | None] = [None] * len(frame)
        errors: list[str | None] = [None] * len(frame)
        spent = 0  # pixels decoded for this request
        for start in range(0, len(frame), BATCH):
            images, rows = [], []
            for i in range(start, min(start + BATCH, len(frame))):
                try:
                    data = _file_bytes(frame["image"].iloc[i], f"row {i}")
                    spent += self._within_limits(data, f"row {i}", spent)
                    pre = meta.preprocessing
                    images.append(load_image(data, pre, self.max_pixels, name=f"row {i}"))
                    rows.append(i)
                except ImageError as err:
                    errors[i] = str(err)
            if images:
                for i, p in zip(rows, self.classifier.predict_proba(np.stack(images)), strict=True):
                    proba[i] = float(p)
        label = [None if p is None else int(p >= meta.threshold) for p in proba]
        # object columns keep None as None: JSON null in a served response, not NaN
        columns = {"probability": proba, "label": label, "error": errors}
        return pd.DataFrame({k: pd.Series(v, dtype=object) for k, v in columns.items()})


def files_digest(model_dir: Path) -> str:
    """sha256 over a saved model folder: each file's relative path and content digest, in
    order; the same files give the same digest wherever they lie."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(model_dir).rglob("*") if p.is_file()):
        with open(path, "rb") as f:
            content = hashlib.file_digest(f, "sha256").hexdigest()
        digest.update(f"{path.relative_to(model_dir).as_posix()}\0{content}\n".encode())
    return digest.hexdigest()


def log_model(model_dir: Path, classifier: Predictor, images: np.ndarray) -> ModelInfo:
    """Log ``model_dir`` as a :class:`GlomxModel` in the active run, tagged with its
    :func:`files_digest` so that a copy of the folder can be traced to its versions."""
    return mlflow.pyfunc.log_model(
        name="glomx",
        python_model=str(Path(__file__).with_name("served.py")),
        artifacts={ARTIFACT: str(model_dir)},
        code_paths=[str(Path(glomx.__file__).parent)],
        signature=SIGNATURE,
        input_example=input_example(images),
        pip_requirements=requirements(model_flavors(classifier)),
        tags={DIGEST_TAG: files_digest(model_dir)},
    )


def _save_keras(path: str, **kwargs: Any) -> None:
    """``mlflow.keras.save_model`` with its directory made first: MLflow 3.17 writes the input
    example before creating it (mlflow/mlflow#16183)."""
    os.makedirs(path, exist_ok=True)
    import_module("mlflow.keras").save_model(path=path, **kwargs)


_KERAS = SimpleNamespace(__name__="mlflow.keras", save_model=_save_keras)


def log_native_model(classifier: Classifier, images: np.ndarray) -> ModelInfo | None:
    """Log the family's own framework model (sklearn pipeline, Keras model), unregistered,
    when the classifier offers one: ``native_flavor`` names the MLflow flavor and
    ``native_model(images)`` returns ``(model, example input)`` in that model's own format."""
    flavor = classifier.native_flavor
    if flavor is None:
        return None
    model, example = classifier.native_model(images[:1])
    common = {
        "name": flavor,
        "input_example": example,
        "pip_requirements": requirements(flavor, glomx_code=False),
    }
    if flavor == "keras":
        signature = infer_signature(example, model.predict(example, verbose=0))
        return Model.log(None, _KERAS, model=model, signature=signature, **common)
    return import_module(f"mlflow.{flavor}").log_model(model, **common)
