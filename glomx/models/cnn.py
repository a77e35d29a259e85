"""A small CNN trained from scratch: four Conv-BN-ReLU-MaxPool blocks, pooling, one sigmoid.

The original study used 128×128×3 inputs and reached 98.3 % accuracy on a split that leaked
slides between train and test; here the split is by slide, so compare with the colour-only
logistic baseline instead (about 0.80 balanced accuracy on the shared real data).

Stain colour differs by hospital and so does the class mix, so colour alone predicts the
label on training slides and misleads on new ones. ``standardize`` (the default) scales every
image's channels to zero mean and unit variance inside the model, leaving texture and shape:
on the shared real data (856 augmented training images, 117 validation images from other
slides) it lifted validation balanced accuracy at threshold 0.5 from 0.85 to 0.97–0.98 (ROC AUC
0.987 → 0.999) in about 3 minutes on 2 CPU cores. Per-channel colour jitter is then moot: the
standardisation undoes channel gains.

Speed on a 2-core CPU (TensorFlow): about 40–45 images/s training at 128 px with XLA
(``fit.jit_compile``); mixed precision is 2–4× slower on CPU, so it stays off unless on a
recent GPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
from keras import layers

from glomx.data.store import ArrayStore
from glomx.family_params import CNNConfig
from glomx.models.cnn_viz import save_cnn_figures
from glomx.models.keras_common import KerasClassifier


@keras.saving.register_keras_serializable(package="glomx")
class PerImageStandardization(layers.Layer):
    """Each image's channels to zero mean and unit variance, removing colour and light casts."""

    def call(self, inputs: Any) -> Any:
        mean = keras.ops.mean(inputs, axis=(1, 2), keepdims=True)
        std = keras.ops.std(inputs, axis=(1, 2), keepdims=True)
        return (inputs - mean) / (std + 1.0)  # + 1 grey level: flat images stay finite


def build_cnn(config: CNNConfig) -> keras.Model:
    """The network: uint8-valued float images in, P(globally sclerotic) out."""
    inputs = keras.Input((config.size, config.size, config.channels), name="image")
    if config.standardize:
        x = PerImageStandardization(name="standardize_per_image")(inputs)
    else:
        x = layers.Rescaling(1 / 255, name="scale_to_unit")(inputs)
    for i, width in enumerate(config.filters, start=1):
        x = layers.Conv2D(width, config.kernel, padding="same", use_bias=False, name=f"conv{i}")(x)
        x = layers.BatchNormalization(momentum=0.9, name=f"conv{i}_bn")(x)
        x = layers.ReLU(name=f"conv{i}_relu")(x)
        x = layers.MaxPooling2D(2, name=f"conv{i}_pool")(x)
    x = layers.GlobalAveragePooling2D(name="global_pool")(x)
    x = layers.Dropout(config.dropout, name="dropout")(x)
    outputs = layers.Dense(1, activation="sigmoid", dtype="float32", name="p_sclerotic")(x)
    return keras.Model(inputs, outputs, name="glomx_cnn")


class CNNClassifier(KerasClassifier):
    """The small CNN behind the Classifier contract."""

    family = "cnn"
    config_class = CNNConfig

    def build_model(self) -> keras.Model:
        return build_cnn(self.config)

    def write_figures(self, train: ArrayStore, directory: Path) -> list[Path]:
        """First-layer filters and feature maps (one training image per class) as PNGs."""
        return save_cnn_figures(self.keras_model, train, directory)
