"""Pictures of what the CNN's first convolution learnt: its filters and their responses."""

from __future__ import annotations

import math
from pathlib import Path

import keras
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from glomx.data.adapt import adapt
from glomx.data.store import ArrayStore

FIRST_CONV = "conv1"
FIRST_ACTIVATION = "conv1_relu"
CLASS_NAMES = {0: "not sclerotic", 1: "globally sclerotic"}


def _grid(rows: int, cols: int, tile: float) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(cols * tile, rows * tile + 0.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    return fig, axes


def filters_figure(model: keras.Model, cols: int = 8) -> Figure:
    """Every first-layer filter as a small RGB image, each stretched to its own range."""
    kernel = keras.ops.convert_to_numpy(model.get_layer(FIRST_CONV).kernel)[:, :, :3, :]
    count = kernel.shape[-1]
    fig, axes = _grid(math.ceil(count / cols), cols, 0.9)
    for i, ax in zip(range(count), axes.flat, strict=False):
        f = kernel[..., i]
        ax.imshow((f - f.min()) / (np.ptp(f) or 1.0), interpolation="nearest")
    fig.suptitle(f"{FIRST_CONV}: {count} filters {kernel.shape[0]}×{kernel.shape[1]} (RGB)")
    return fig


def feature_maps_figure(
    model: keras.Model, images: np.ndarray, labels: np.ndarray, maps: int = 8
) -> Figure:
    """Per image: the input and the first ``maps`` channels of the first conv block's output."""
    _, size, _, channels = model.input_shape
    x = adapt(images, size, channels)
    probe = keras.Model(model.input, model.get_layer(FIRST_ACTIVATION).output)
    activations = keras.ops.convert_to_numpy(probe(x.astype(np.float32), training=False))
    fig, axes = _grid(len(x), maps + 1, 1.3)
    for row, (image, label) in enumerate(zip(x, labels, strict=True)):
        axes[row, 0].imshow(image[..., :3])
        axes[row, 0].set_title(CLASS_NAMES[int(label)], fontsize=8)
        for c in range(min(maps, activations.shape[-1])):
            axes[row, c + 1].imshow(activations[row, ..., c], cmap="viridis")
            axes[row, c + 1].set_title(f"map {c}", fontsize=8)
    fig.suptitle(f"{FIRST_ACTIVATION} feature maps")
    return fig


def class_examples(store: ArrayStore) -> tuple[np.ndarray, np.ndarray]:
    """The first image of each class in the store (fewer if a class is absent)."""
    picks = [int(np.flatnonzero(store.labels == c)[0]) for c in (1, 0) if (store.labels == c).any()]
    return store.read(picks), store.labels[picks]


def save_cnn_figures(model: keras.Model, train: ArrayStore, directory: Path) -> list[Path]:
    """Write ``filters.png`` and ``feature_maps.png`` (one image per class of ``train``)."""
    directory.mkdir(parents=True, exist_ok=True)
    images, labels = class_examples(train)
    figures = {
        "filters.png": filters_figure(model),
        "feature_maps.png": feature_maps_figure(model, images, labels),
    }
    paths = []
    for name, fig in figures.items():
        fig.savefig(directory / name, dpi=110)
        paths.append(directory / name)
    return paths
