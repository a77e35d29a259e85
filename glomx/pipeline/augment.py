"""Label-preserving augmentation of the training store, streamed chunk by chunk.

Every original is kept and followed by its generated copies ``<name>#aug<k>`` (same label and
slide). How many copies each original gets comes from ``augment.target``; the extra copies a
class needs beyond an even share go to a seeded random subset of its originals, so no original is
used more than once more than another. Each copy draws its random parameters from
``numpy.random.default_rng([seed, source_row, k])``, so the output depends on the seed and the
params only, never on the chunk size or the number of workers.

Operations (each switchable in ``augment.ops``): a random non-identity element of the dihedral
group (flips and quarter turns are exact pixel permutations; glomeruli have no orientation),
then one bilinear affine warp with reflect fill combining a small rotation, shear and zoom about
the centre, then stain jitter in scikit-image's HED colour space, contrast and brightness.
Colour operations touch RGB only, so an opaque alpha channel stays 255.

Memory: the reader holds one chunk, and at most ``workers + 1`` chunks are in flight.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from matplotlib.figure import Figure
from skimage.color import hed2rgb, rgb2hed
from skimage.transform import AffineTransform, warp

from glomx.artifacts.layout import Layout
from glomx.config import Augment, AugmentOps, AugmentTarget, Params, parse
from glomx.data.store import ArrayStore, StoreWriter
from glomx.errors import GlomxError
from glomx.evaluation.metrics import CLASS_NAMES
from glomx.tracking import stage_run

GEOMETRIC = ("rotate", "shear", "zoom")
_N_UNIFORM = 11  # rotate, shear, zoom, brightness, contrast, 3 stain scales, 3 stain shifts

T = TypeVar("T")
R = TypeVar("R")


class AugmentError(GlomxError, ValueError):
    """Invalid augment params or an input store that cannot be augmented."""


def parse_ops(ops: AugmentOps | Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """The enabled operations and their strengths (``ops`` as params.yaml or a store's
    manifest has them, or already typed)."""
    if not isinstance(ops, AugmentOps):
        ops = parse(AugmentOps, ops, "augment.ops")
    return {
        name: {k: float(v) for k, v in op.model_dump().items() if k != "enabled"}
        for name, op in ops
        if op.enabled
    }


def dihedral(img: np.ndarray, k: int) -> np.ndarray:
    """Dihedral element ``k`` (0–7): ``k % 4`` quarter turns, then a mirror if ``k >= 4``."""
    out = np.rot90(img, k % 4, axes=(0, 1))
    return out[:, ::-1] if k >= 4 else out


def affine(img: np.ndarray, degrees: float, shear_degrees: float, zoom: float) -> np.ndarray:
    """Rotate, shear and zoom about the centre in one bilinear warp with reflect fill (float)."""
    h, w = img.shape[:2]
    centre = np.array([[1, 0, (w - 1) / 2], [0, 1, (h - 1) / 2], [0, 0, 1]])
    a, s = math.radians(degrees), math.radians(shear_degrees)
    rotation = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    shear = np.array([[1, math.tan(s), 0], [0, 1, 0], [0, 0, 1]])
    forward = centre @ rotation @ shear @ np.diag([zoom, zoom, 1]) @ np.linalg.inv(centre)
    inverse = AffineTransform(matrix=np.linalg.inv(forward))  # output → input coordinates
    return warp(img, inverse, order=1, mode="reflect", preserve_range=True)


def stain_jitter(rgb: np.ndarray, scale: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Scale and shift each HED stain concentration: ``c' = c * scale + shift`` (rgb in [0, 1]).

    ``rgb2hed`` clips negative concentrations, so its round trip is lossy on real PAS patches
    (up to ~70 grey levels on some pixels). The change is therefore applied as a ratio of two
    ``hed2rgb`` reconstructions (an additive change of optical density, as Beer–Lambert has it):
    zero strength is the identity and pixels outside the stain gamut keep their detail.
    """
    hed = rgb2hed(rgb)
    fitted = hed2rgb(hed)
    jittered = hed2rgb(hed * scale + shift)
    return np.clip(rgb * jittered / np.maximum(fitted, 1e-12), 0.0, 1.0)


def brightness_contrast(rgb: np.ndarray, delta: float, factor: float) -> np.ndarray:
    """Scale each channel about its mean by ``factor``, then add ``delta`` (rgb in [0, 1])."""
    mean = rgb.mean(axis=(0, 1), keepdims=True)
    return np.clip((rgb - mean) * factor + mean + delta, 0.0, 1.0)


def augment_image(
    img: np.ndarray, ops: dict[str, dict[str, float]], rng: np.random.Generator
) -> np.ndarray:
    """One random augmentation of a uint8 ``(H, W, C)`` image with the enabled ``ops``.

    The same random numbers are drawn whichever ops are enabled, so switching one op off
    leaves the draws of the others unchanged.
    """
    k = int(rng.integers(1, 8))
    u = rng.uniform(-1.0, 1.0, _N_UNIFORM)
    out = dihedral(img, k) if "dihedral" in ops else img
    if not set(ops) - {"dihedral"}:
        return np.ascontiguousarray(out)
    if set(GEOMETRIC) & set(ops):
        x = affine(
            out,
            u[0] * ops.get("rotate", {}).get("degrees", 0.0),
            u[1] * ops.get("shear", {}).get("degrees", 0.0),
            1.0 + u[2] * ops.get("zoom", {}).get("factor", 0.0),
        )
    else:
        x = out.astype(np.float64)
    rgb = x[..., :3] / 255.0
    if "stain" in ops:
        rgb = stain_jitter(
            rgb, 1.0 + u[5:8] * ops["stain"]["scale"], u[8:11] * ops["stain"]["shift"]
        )
    if "brightness" in ops or "contrast" in ops:
        rgb = brightness_contrast(
            rgb,
            u[3] * ops.get("brightness", {}).get("delta", 0.0),
            1.0 + u[4] * ops.get("contrast", {}).get("factor", 0.0),
        )
    x[..., :3] = rgb * 255.0
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def copies_per_image(labels: np.ndarray, target: AugmentTarget, seed: int) -> np.ndarray:
    """How many augmented copies each original gets, meeting ``target`` per class exactly.

    ``target.mode`` multiplier makes ``round(n * value)`` images of a class (originals
    included), count makes exactly ``value``, with ``value`` from ``target.per_class``.
    Augmentation only adds images, so a target below the originals is an error.
    """
    copies = np.zeros(len(labels), dtype=np.int64)
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        if int(label) not in target.per_class:
            raise AugmentError(
                f"params.yaml augment.target.per_class has no entry for class {int(label)}"
            )
        value = target.per_class[int(label)]
        total = round(len(rows) * value) if target.mode == "multiplier" else int(value)
        extra = total - len(rows)
        if extra < 0:
            raise AugmentError(
                f"params.yaml augment.target.per_class.{label} asks for {total} images but class "
                f"{label} already has {len(rows)}; augmentation only adds images (raise the "
                "target, or drop images with balance.strategy: undersample)"
            )
        copies[rows] = extra // len(rows)
        lucky = np.random.default_rng([seed, int(label)]).permutation(rows)[: extra % len(rows)]
        copies[lucky] += 1
    return copies


@dataclass(frozen=True)
class _Chunk:
    images: np.ndarray
    start: int
    copies: np.ndarray
    ops: dict[str, dict[str, float]]
    seed: int


def _augment_chunk(chunk: _Chunk) -> np.ndarray:
    """Each original of the chunk followed by its copies, as one uint8 array."""
    out = []
    for j, img in enumerate(chunk.images):
        out.append(img)
        for k in range(1, int(chunk.copies[j]) + 1):
            rng = np.random.default_rng([chunk.seed, chunk.start + j, k])
            out.append(augment_image(img, chunk.ops, rng))
    return np.stack(out)


def _in_order(fn: Callable[[T], R], tasks: Iterable[T], workers: int) -> Iterator[R]:
    """``map(fn, tasks)`` over ``workers`` processes with at most ``workers + 1`` in flight."""
    if workers <= 1:
        yield from map(fn, tasks)
        return
    with ProcessPoolExecutor(workers) as pool:
        pending: deque = deque()
        for task in tasks:
            pending.append(pool.submit(fn, task))
            if len(pending) > workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def augment(src: ArrayStore, out: str | Path, params: Augment) -> ArrayStore:
    """Write originals plus augmented copies of ``src`` to a new store at ``out``."""
    kind = src.data_kind
    ops = parse_ops(params.ops)
    seed = params.seed
    copies = copies_per_image(src.labels, params.target, seed)
    if copies.any() and not ops:
        raise AugmentError(
            "params.yaml augment.ops enables no operation, so copies would be duplicates"
        )
    chunk_size = params.chunk_size
    tasks = (
        _Chunk(images, start, copies[start : start + len(images)], ops, seed)
        for start, images in src.iter_chunks(chunk_size)
    )
    meta = {"image": src.params.get("image"), "augment": params.model_dump()}
    with StoreWriter(out, src.image_shape, meta, src.manifest.get("source_hash")) as writer:
        for start, images in zip(
            range(0, len(src), chunk_size),
            _in_order(_augment_chunk, tasks, params.workers),
            strict=True,
        ):
            labels, names, slides = [], [], []
            for i in range(start, min(start + chunk_size, len(src))):
                n = 1 + int(copies[i])
                labels += [int(src.labels[i])] * n
                names += [src.names[i]] + [f"{src.names[i]}#aug{k}" for k in range(1, n)]
                slides += [src.slides[i]] * n
            writer.append(images, labels, names, slides)
        return writer.close({"data_kind": kind, "originals": len(src)})


def describe_ops(ops: dict[str, dict[str, float]]) -> str:
    """``dihedral, rotate ±15°, zoom ±0.08, stain scale ±0.05 shift ±0.005`` for the
    enabled operations from :func:`parse_ops`, in the order of :class:`AugmentOps`."""
    parts = []
    order = list(AugmentOps.model_fields)
    for name, values in sorted(ops.items(), key=lambda item: order.index(item[0])):
        words = [name]
        for key, value in values.items():
            if key == "degrees":
                words.append(f"±{value:g}°")
            else:
                words += [f"±{value:g}"] if len(values) == 1 else [key, f"±{value:g}"]
        parts.append(" ".join(words))
    return ", ".join(parts)


def _grid_rows(store: ArrayStore, per_class: int, copies: int) -> dict[int, list[list[int]]]:
    """Per class, rows of store indices (original first) for the ``per_class`` originals with
    the most copies; every row shows as many copies as all of them have (at most ``copies``),
    so no cell is left empty."""
    position = {name: i for i, name in enumerate(store.names)}
    made = Counter(name.split("#aug")[0] for name in store.names if "#aug" in name)
    chosen = {}
    for label in (0, 1):
        originals = [
            i
            for i, name in enumerate(store.names)
            if store.labels[i] == label and "#aug" not in name and made[name]
        ]
        if originals:
            chosen[label] = sorted(originals, key=lambda i: -made[store.names[i]])[:per_class]
    shown = min([copies, *(made[store.names[i]] for rows in chosen.values() for i in rows)])
    return {
        label: [
            [i, *(position[f"{store.names[i]}#aug{k}"] for k in range(1, shown + 1))] for i in rows
        ]
        for label, rows in chosen.items()
    }


def grid_figure(store: ArrayStore, per_class: int = 3, copies: int = 4) -> Figure:
    """Per class, the originals with the most copies, each followed by up to ``copies`` of its
    augmented copies (as many as every shown original has); the operations in the title."""
    ops = parse_ops(store.params.get("augment", {}).get("ops", {}))
    blocks = _grid_rows(store, per_class, copies)
    if not blocks:
        raise AugmentError(f"{store.path} holds no augmented copies to show")
    cols = len(next(iter(blocks.values()))[0])
    rows_max = max(len(rows) for rows in blocks.values())
    fig = Figure(figsize=(2.1 * cols * len(blocks), 2.1 * rows_max + 1.2), layout="constrained")
    fig.suptitle(f"Training augmentation: {describe_ops(ops)}", fontsize=11, wrap=True)
    subfigs = fig.subfigures(1, len(blocks), squeeze=False)[0]
    for subfig, (label, rows) in zip(subfigs, blocks.items(), strict=True):
        subfig.suptitle(f"{CLASS_NAMES[label]} (class {label})", fontsize=11, fontweight="bold")
        axes = subfig.subplots(len(rows), cols, squeeze=False)
        for r, indices in enumerate(rows):
            for c, img in enumerate(store.read(indices)):
                ax = axes[r, c]
                ax.imshow(img[..., :3])
                ax.set_xticks([])
                ax.set_yticks([])
                if r == 0:
                    ax.set_title("original" if c == 0 else f"copy {c}", fontsize=10)
            axes[r, 0].set_ylabel(store.slides[indices[0]], fontsize=9)
    return fig


def run(params: Params) -> str:
    """The augment stage: the training store grown, a grid of examples (plot and MLflow), and
    its MLflow run; returns its summary."""
    layout, config = Layout(params.need("paths")), params.need("augment")
    src = ArrayStore(layout.prepared("train"))
    out = augment(src, layout.augmented, config)  # workers fork before MLflow starts
    grid = layout.plots("augment") / "grid.png"
    grid.parent.mkdir(parents=True, exist_ok=True)
    figure = grid_figure(out, config.grid.per_class, config.grid.copies)
    figure.savefig(grid, dpi=80)
    with stage_run("augment", config.model_dump(), src.data_kind) as run:
        run.log_metrics(
            {"originals": len(src), "images": len(out)}
            | {f"class_{c}": n for c, n in out.manifest["class_counts"].items()}
        )
        run.log_figure(figure, "augment/grid.png")
        run.log_dataset(out, "augmented")
    return f"augment: {len(src)} → {len(out)} images {out.manifest['class_counts']}"
