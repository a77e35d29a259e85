"""The served model: log + register an LR model, load it back by URI, predict raw image files."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from PIL import Image
from sklearn.linear_model import SGDClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from glomx.data.adapt import adapt
from glomx.data.images import load_image
from glomx.models.base import FitRecord, ModelMeta, Preprocessing
from glomx.models.logistic import LogisticClassifier, LRFit
from glomx.tracking import EXPERIMENT, REGISTERED_MODEL, stage_run
from glomx.tracking.names import DIGEST_TAG
from glomx.tracking.pyfunc import files_digest, input_example
from glomx.tracking.registry import register

PRE = Preprocessing(size=24, channels=3, method="pad", fill="white")


def centre(dark: bool, size: int, rng: np.random.Generator) -> np.ndarray:
    """A noisy tile whose centre is dark (class 1) or bright (class 0)."""
    image = rng.integers(100, 160, (size, size, 3))
    c = slice(size // 4, 3 * size // 4)
    image[c, c] += -80 if dark else 80
    return image.astype(np.uint8)


@pytest.fixture
def lr_model(tmp_path: Path) -> tuple[LogisticClassifier, Path]:
    """An LR model fitted on 40 centre tiles (scikit-learn directly), saved."""
    rng = np.random.default_rng(0)
    labels = np.arange(40) % 2
    images = np.stack([centre(bool(y), PRE.size, rng) for y in labels])
    pixels = adapt(images, 12, 3).reshape(40, -1).astype(np.float32)
    pipeline = Pipeline([("scale", StandardScaler()), ("sgd", SGDClassifier(loss="log_loss"))])
    pipeline.fit(pixels, labels)
    clf = LogisticClassifier(ModelMeta("lr", 12, 3, PRE), FitRecord(), LRFit(), pipeline)
    clf.save(tmp_path / "models" / "lr")
    return clf, tmp_path / "models" / "lr"


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def test_registered_pyfunc_predicts_from_base64_bytes_only(
    lr_model: tuple[LogisticClassifier, Path], tmp_path: Path, isolated_mlflow: str
) -> None:
    clf, model_dir = lr_model
    rng = np.random.default_rng(1)
    example = centre(True, PRE.size, rng)[None]
    with stage_run("train@lr", {}, "synthetic") as run:
        version = register(run, model_dir, clf, example, {"val_roc_auc": 1.0})

    # raw files as a client has them: a 40 px RGBA PNG (challenge format) and a 30 px RGB file
    dark = np.dstack([centre(True, 40, rng), np.full((40, 40), 255, np.uint8)])
    bright = centre(False, 30, rng)
    frame = pd.DataFrame(
        {
            "image": [
                base64.b64encode(png_bytes(dark)).decode(),
                base64.b64encode(png_bytes(bright)).decode(),
                "bm90IGFuIGltYWdl",  # "not an image"
                None,
                "not base64!",
                base64.b64encode(png_bytes(bright[..., 0])).decode(),  # one grey channel
            ]
        }
    )
    served = mlflow.pyfunc.load_model(f"models:/{REGISTERED_MODEL}/{version}")
    out = served.predict(frame)

    assert list(out.columns) == ["probability", "label", "error"]
    expected = [clf.predict_proba(load_image(png_bytes(x), PRE)[None])[0] for x in (dark, bright)]
    assert out["probability"][:2].tolist() == pytest.approx(expected, abs=1e-6)
    assert out["label"][:2].tolist() == [1, 0] and out["error"][:2].isna().all()
    # failed rows: None (JSON null), never NaN
    assert out["probability"][2:].tolist() == out["label"][2:].tolist() == [None] * 4
    assert out["error"][2].startswith("row 2: not a readable image")
    assert "row 3: no image" in out["error"][3] and "not valid base64" in out["error"][4]
    assert out["error"][5].startswith("row 5: greyscale image (PIL mode L)")
    # a request without its image (a file path instead, any other column) is refused, and so
    # is one naming a file beside its image
    with_path = {"image": [base64.b64encode(png_bytes(dark)).decode()], "path": [str(tmp_path)]}
    for columns in ({"path": [str(tmp_path)]}, {"file": ["x.png"]}, with_path):
        with pytest.raises(MlflowException, match=r"exactly one column, 'image'.*no file paths"):
            served.predict(pd.DataFrame(columns))

    client = MlflowClient(isolated_mlflow)
    mv = client.get_model_version(REGISTERED_MODEL, version)
    assert mv.tags["family"] == "lr" and mv.tags["val_roc_auc"] == "1"
    info = mlflow.models.get_model_info(f"models:/{REGISTERED_MODEL}/{version}")
    assert info.signature.inputs.input_names() == ["image", "path"]
    requirements = Path(mlflow.pyfunc.get_model_dependencies(info.model_uri)).read_text()
    assert "scikit-learn==" in requirements and "mlflow==" in requirements

    # the sklearn flavor is logged beside it, unregistered, with a signature
    exp = client.get_experiment_by_name(EXPERIMENT).experiment_id
    logged = {m.name: m for m in mlflow.search_logged_models([exp], output_format="list")}
    assert set(logged) == {"glomx", "sklearn"}
    assert logged["glomx"].tags[DIGEST_TAG] == files_digest(model_dir)  # traces folder copies
    native = mlflow.models.get_model_info(logged["sklearn"].model_uri)
    assert native.signature is not None and native.flavors.keys() >= {"sklearn"}
    assert len(client.search_model_versions(f"name='{REGISTERED_MODEL}'")) == 1


def test_input_example_is_a_small_rgba_png() -> None:
    image = np.random.default_rng(0).integers(0, 256, (1, 80, 80, 3), dtype=np.uint8)
    (encoded,) = input_example(image)["image"]
    with Image.open(io.BytesIO(base64.b64decode(encoded))) as png:
        assert png.format == "PNG" and png.mode == "RGBA" and png.size == (32, 32)


class _TinyKeras:
    """The native-model hook as a Keras family provides it."""

    native_flavor = "keras"

    def __init__(self, keras: object) -> None:
        k = keras
        self.model = k.Sequential(  # type: ignore[attr-defined]
            [k.Input((8, 8, 3)), k.layers.Flatten(), k.layers.Dense(1, activation="sigmoid")]  # type: ignore[attr-defined]
        )

    def native_model(self, images: np.ndarray) -> tuple[object, np.ndarray]:
        return self.model, images.astype(np.float32)


def test_keras_flavor_is_logged_with_signature_and_input_example(isolated_mlflow: str) -> None:
    import keras

    from glomx.tracking.pyfunc import log_native_model

    clf = _TinyKeras(keras)
    with stage_run("train@cnn", {}, "synthetic"):
        info = log_native_model(clf, np.zeros((3, 8, 8, 3), np.uint8))  # type: ignore[arg-type]
    assert info is not None and "keras" in info.flavors
    assert info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, 8, 8, 3)
    example = mlflow.models.Model.load(info.model_uri).load_input_example(
        mlflow.artifacts.download_artifacts(info.model_uri)
    )
    assert example.shape == (1, 8, 8, 3)
    loaded = mlflow.pyfunc.load_model(info.model_uri)
    assert loaded.predict(example).shape == (1, 1)
