"""Grad-CAM on a Keras model, also when the backbone is a nested model (as in ResNet)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import layers

from glomx.evaluation import gradcam
from glomx.models.cnn import CNNConfig, build_cnn

needs_tensorflow = pytest.mark.skipif(
    gradcam.unavailable_reason() is not None, reason="Grad-CAM needs TensorFlow"
)


def _nested() -> keras.Model:
    inner = keras.Input((16, 16, 3))
    backbone = keras.Model(inner, layers.Conv2D(4, 3, padding="same", activation="relu")(inner))
    inputs = keras.Input((16, 16, 3))
    x = backbone(layers.Rescaling(1 / 255)(inputs), training=False)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(1, activation="sigmoid")(x))


@needs_tensorflow
def test_maps_at_image_size_in_unit_range() -> None:
    keras.utils.set_random_seed(0)
    images = np.random.default_rng(0).integers(0, 256, (3, 20, 20, 3), dtype=np.uint8)
    for model, side in ((build_cnn(CNNConfig(size=16, filters=(4, 8))), 4), (_nested(), 16)):
        assert gradcam.feature_map(model).shape[1:3] == (side, side)
        maps = gradcam.gradcam(model, images, 16, 3)
        assert maps.shape == (3, 20, 20) and maps.min() >= 0 and maps.max() <= 1


@needs_tensorflow
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
    y = np.array([1, 1, 0, 0, 1, 1, 0])
    p = np.array([0.9, 0.6, 0.8, 0.1, 0.2, 0.45, 0.3])
    cases = gradcam.pick_cases(y, p, 0.5, per_case=1)
    assert {k: v.tolist() for k, v in cases.items()} == {
        "true positive": [0],
        "true negative": [3],
        "false positive": [2],
        "false negative": [4],
    }


def test_each_tile_sits_beside_its_overlay_with_caption_and_colour_bar() -> None:
    cases = ("true positive", "true negative")
    images = {c: np.full((2, 8, 8, 3), 200, np.uint8) for c in cases}
    maps = {c: np.tile(np.linspace(0, 1, 8), (2, 8, 1)) for c in cases}
    proba = {"true positive": np.array([0.9, 0.8]), "true negative": np.array([0.1, 0.2])}
    captions = {c: ["SAS_1 (SAS)", "VUHSK_2 (VUHSK)"] for c in cases}
    fig = gradcam.overlay_figure("cnn", images, maps, proba, captions)
    tiles = [ax for ax in fig.axes if ax.images]
    assert len(tiles) == 2 * 2 * 2  # two cases × two examples × (tile, overlay)
    assert [len(ax.images) for ax in tiles[:2]] == [1, 2]  # the overlay is drawn over a copy
    overlay = tiles[1].images[1]
    alpha = np.asarray(overlay.get_alpha())
    assert alpha.min() == 0 and alpha.max() == pytest.approx(gradcam.MAX_ALPHA)  # translucent
    assert tiles[2].get_title() == "VUHSK_2 (VUHSK)\np(sclerotic) = 0.80"
    assert any(ax.get_label() == "<colorbar>" for ax in fig.axes)
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert "true negative" in texts


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_other_backends_are_told_plainly_that_gradcam_needs_tensorflow(backend: str) -> None:
    reason = gradcam.unavailable_reason(backend)
    assert reason is not None
    assert reason.startswith(f"Grad-CAM needs the TensorFlow backend (KERAS_BACKEND={backend}")
    assert gradcam.unavailable_reason("tensorflow") is None
