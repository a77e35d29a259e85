"""Grad-CAM on a Keras model, also when the backbone is a nested model (as in ResNet)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import layers

from glomx.evaluation import gradcam
from glomx.models.cnn import CNNConfig, build_cnn

pytestmark = pytest.mark.skipif(not gradcam.available(), reason="Grad-CAM needs TensorFlow")


def _nested() -> keras.Model:
    inner = keras.Input((16, 16, 3))
    backbone = keras.Model(inner, layers.Conv2D(4, 3, padding="same", activation="relu")(inner))
    inputs = keras.Input((16, 16, 3))
    x = backbone(layers.Rescaling(1 / 255)(inputs), training=False)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(1, activation="sigmoid")(x))


def test_maps_at_image_size_in_unit_range() -> None:
    keras.utils.set_random_seed(0)
    images = np.random.default_rng(0).integers(0, 256, (3, 20, 20, 3), dtype=np.uint8)
    for model, side in ((build_cnn(CNNConfig(size=16, filters=(4, 8))), 4), (_nested(), 16)):
        assert gradcam.feature_map(model).shape[1:3] == (side, side)
        maps = gradcam.gradcam(model, images, 16, 3)
        assert maps.shape == (3, 20, 20) and maps.min() >= 0 and maps.max() <= 1


def test_cam_follows_the_evidence() -> None:
    # one conv filter that responds to dark pixels and a positive dense weight: the map peaks
    # where the image is dark
    inputs = keras.Input((16, 16, 3))
    x = layers.Conv2D(1, 1, activation="relu", name="dark")(layers.Rescaling(1 / 255)(inputs))
    model = keras.Model(inputs, layers.Dense(1, activation="sigmoid")(
        layers.GlobalAveragePooling2D()(x)))  # fmt: skip
    model.get_layer("dark").set_weights([np.full((1, 1, 3, 1), -1.0), np.array([3.0])])
    model.layers[-1].set_weights([np.ones((1, 1)), np.zeros(1)])
    image = np.full((1, 16, 16, 3), 255, dtype=np.uint8)
    image[0, :8, :8] = 0
    cam = gradcam.gradcam(model, image, 16, 3)[0]
    assert cam[:8, :8].mean() > 0.9 and cam[8:, 8:].mean() < 0.1


def test_pick_cases_takes_the_most_confident() -> None:
    y = np.array([1, 1, 0, 0, 1, 1])
    p = np.array([0.9, 0.6, 0.8, 0.1, 0.2, 0.45])
    cases = gradcam.pick_cases(y, p, 0.5, per_case=1)
    assert {k: v.tolist() for k, v in cases.items()} == {
        "true positive": [0],
        "false positive": [2],
        "false negative": [4],
    }
    fig = gradcam.overlay_figure("m", {"true positive": np.zeros((1, 8, 8, 3), np.uint8)},
                                 {"true positive": np.zeros((1, 8, 8))},
                                 {"true positive": np.array([0.9])})  # fmt: skip
    assert len(fig.axes) == 1
