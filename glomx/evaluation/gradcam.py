"""Grad-CAM: where in the patch a Keras model found evidence for "globally sclerotic".

The map is taken at the model's last spatial (4-D) feature map: channel weights are
the spatially averaged gradients of the class-1 logit, the map is the ReLU of the weighted sum
of that layer's activations, scaled to [0, 1] per image and resized to the input.

Keras 3 has no backend-neutral gradient, so the gradient is taken with the active backend's
own autodiff; only the TensorFlow backend is implemented. Under another backend
:func:`unavailable_reason` says so, and evaluate writes that sentence into the report instead
of the overlays.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import keras
import numpy as np
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from PIL import Image

from glomx.data.adapt import adapt

CASES = ("true positive", "true negative", "false positive", "false negative")
CMAP = "inferno"
MAX_ALPHA = 0.6  # overlay opacity where the map is 1; it fades out where there is no evidence


def unavailable_reason(backend: str | None = None) -> str | None:
    """Why Grad-CAM cannot run under ``backend`` (default: the active Keras backend); None
    when it can."""
    backend = backend or keras.backend.backend()
    if backend == "tensorflow":
        return None
    return (
        f"Grad-CAM needs the TensorFlow backend (KERAS_BACKEND={backend} here); rerun evaluate "
        "with KERAS_BACKEND=tensorflow for the Grad-CAM figures."
    )


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
    if reason := unavailable_reason():
        raise RuntimeError(reason)
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


def overlay(image: np.ndarray, cam: np.ndarray) -> np.ndarray:
    """One tile under its map as a single RGB uint8 image, blended as :func:`overlay_figure`
    draws it (the colour more opaque where the evidence is stronger), for pages that show
    pictures rather than figures."""
    rgb = image[..., :3].astype(np.float32) / 255
    alpha = (MAX_ALPHA * np.clip(cam, 0, 1))[..., None]
    colour = colormaps[CMAP](np.clip(cam, 0, 1))[..., :3]
    return np.round(255 * ((1 - alpha) * rgb + alpha * colour)).astype(np.uint8)


def pick_cases(
    y_true: np.ndarray, proba: np.ndarray, threshold: float, per_case: int
) -> dict[str, np.ndarray]:
    """Indices of the most confident examples of each of :data:`CASES` (highest probability
    among predicted positives, lowest among predicted negatives)."""
    y = np.asarray(y_true)
    pred = proba >= threshold
    masks = {
        "true positive": (y == 1) & pred,
        "true negative": (y == 0) & ~pred,
        "false positive": (y == 0) & pred,
        "false negative": (y == 1) & ~pred,
    }
    out = {}
    for case, mask in masks.items():
        idx = np.flatnonzero(mask)
        confidence = proba[idx] if case.endswith("positive") else -proba[idx]
        out[case] = idx[np.argsort(-confidence, kind="stable")[:per_case]]
    return out


def overlay_figure(
    title: str,
    images: Mapping[str, np.ndarray],
    maps: Mapping[str, np.ndarray],
    proba: Mapping[str, np.ndarray],
    captions: Mapping[str, Sequence[str]],
) -> Figure:
    """One row per case of :data:`CASES`; each example as the original tile (captioned, e.g.
    with its slide and site, and P(sclerotic)) beside the same tile under its Grad-CAM map,
    which is more opaque where the evidence is stronger; one colour bar for all."""
    cases = [c for c in CASES if len(images.get(c, ()))]
    cols = max((len(images[c]) for c in cases), default=1)
    rows = max(len(cases), 1)
    fig = Figure(figsize=(2.0 * 2 * cols + 1.2, 2.3 * rows + 0.6), dpi=100, layout="constrained")
    fig.suptitle(f"Grad-CAM, {title}: where the model found evidence for 'sclerotic'")
    axes = fig.subplots(rows, 2 * cols, squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    norm = Normalize(0, 1)
    for row, case in enumerate(cases):
        axes[row, 0].annotate(
            case, (-0.08, 0.5), xycoords="axes fraction", rotation=90, ha="right", va="center",
            fontweight="bold",
        )  # fmt: skip
        examples = zip(images[case], maps[case], proba[case], captions[case], strict=True)
        for col, (image, cam, p, caption) in enumerate(examples):
            tile, overlay = axes[row, 2 * col], axes[row, 2 * col + 1]
            tile.imshow(image[..., :3])
            tile.set_title(f"{caption}\np(sclerotic) = {p:.2f}", fontsize="small")
            overlay.imshow(image[..., :3])
            overlay.imshow(cam, cmap=CMAP, norm=norm, alpha=MAX_ALPHA * np.clip(cam, 0, 1))
            overlay.set_title("Grad-CAM", fontsize="small")
    if cases:
        bar = fig.colorbar(ScalarMappable(norm, CMAP), ax=axes, shrink=0.6, pad=0.01)
        bar.set_label("evidence for 'sclerotic' (relative per tile; fades out towards 0)")
    else:
        axes[0, 0].text(0.5, 0.5, "no examples", ha="center", va="center")
    return fig
