"""Grad-CAM: where in the patch a Keras model found evidence for "globally sclerotic".

The map is taken at the model's last spatial (4-D) feature map: channel weights are
the spatially averaged gradients of the class-1 logit, the map is the ReLU of the weighted sum
of that layer's activations, scaled to [0, 1] per image and resized to the input.

Keras 3 has no backend-neutral gradient, so the gradient is taken with the active backend's
own autodiff; only the TensorFlow backend is implemented (:func:`available` says whether Grad-
CAM can run, and evaluate skips the overlays with a warning when it cannot).
"""

from __future__ import annotations

from collections.abc import Mapping

import keras
import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from glomx.data.adapt import adapt

CASES = ("true positive", "false positive", "false negative")


def available() -> bool:
    """Whether Grad-CAM runs on the active Keras backend."""
    return keras.backend.backend() == "tensorflow"


def feature_map(model: keras.Model) -> keras.KerasTensor:
    """The last 4-D feature map of ``model``'s own graph: the input of its last layer that
    turns a spatial map into a vector (global pooling, flatten). Taking the consumer's input
    also works when the backbone is a nested model, whose own ``output`` lies in its graph."""
    for layer in reversed(model.layers):
        inputs, output = getattr(layer, "input", None), getattr(layer, "output", None)
        if inputs is None or output is None or isinstance(inputs, list | tuple):
            continue
        if len(inputs.shape) == 4 and len(output.shape) != 4:
            return inputs
    raise ValueError(f"model {model.name} has no spatial feature map for Grad-CAM")


def gradcam(model: keras.Model, images: np.ndarray, size: int, channels: int) -> np.ndarray:
    """``(N, H, W, C)`` uint8 → ``(N, H, W)`` float maps in [0, 1] at the images' own size."""
    if not available():
        raise RuntimeError(
            f"Grad-CAM needs the TensorFlow backend, not {keras.backend.backend()!r}"
        )
    import tensorflow as tf

    probe = keras.Model(model.inputs, [feature_map(model), model.outputs[0]])
    x = tf.convert_to_tensor(adapt(images, size, channels).astype(np.float32))
    with tf.GradientTape() as tape:
        features, proba = probe(x, training=False)
        p = tf.clip_by_value(tf.cast(proba[:, 0], tf.float32), 1e-6, 1 - 1e-6)
        logit = tf.math.log(p) - tf.math.log1p(-p)
    grads = tape.gradient(logit, features)
    weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
    cams = tf.nn.relu(tf.reduce_sum(weights * tf.cast(features, tf.float32), axis=-1)).numpy()
    peak = cams.reshape(len(cams), -1).max(axis=1)
    cams = cams / np.where(peak > 0, peak, 1)[:, None, None]
    height, width = images.shape[1:3]
    return np.stack(
        [np.asarray(Image.fromarray(c.astype(np.float32)).resize((width, height))) for c in cams]
    ).clip(0, 1)


def pick_cases(
    y_true: np.ndarray, proba: np.ndarray, threshold: float, per_case: int
) -> dict[str, np.ndarray]:
    """Indices of the most confident true positives, false positives and false negatives."""
    y = np.asarray(y_true)
    pred = proba >= threshold
    masks = {
        "true positive": (y == 1) & pred,
        "false positive": (y == 0) & pred,
        "false negative": (y == 1) & ~pred,
    }
    out = {}
    for case, mask in masks.items():
        idx = np.flatnonzero(mask)
        confidence = proba[idx] if case != "false negative" else -proba[idx]
        out[case] = idx[np.argsort(-confidence, kind="stable")[:per_case]]
    return out


def overlay_figure(
    title: str,
    images: Mapping[str, np.ndarray],
    maps: Mapping[str, np.ndarray],
    proba: Mapping[str, np.ndarray],
) -> Figure:
    """Rows of cases, columns of examples: each patch with its Grad-CAM map over it."""
    cases = [c for c in CASES if len(images.get(c, ()))]
    cols = max((len(images[c]) for c in cases), default=1)
    fig = Figure(figsize=(2.2 * cols, 2.4 * max(len(cases), 1)), dpi=100, layout="constrained")
    fig.suptitle(f"Grad-CAM, {title}: evidence for 'sclerotic'")
    axes = fig.subplots(max(len(cases), 1), cols, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for row, case in enumerate(cases):
        examples = zip(images[case], maps[case], proba[case], strict=True)
        for col, (image, cam, p) in enumerate(examples):
            ax = axes[row, col]
            ax.imshow(image[..., :3])
            ax.imshow(cam, cmap="jet", alpha=0.4, vmin=0, vmax=1)
            ax.set_title(f"{case}\np={p:.2f}", fontsize="small")
    if not cases:
        axes[0, 0].text(0.5, 0.5, "no examples", ha="center", va="center")
    return fig
