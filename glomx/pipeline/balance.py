"""Class balancing of the (augmented) training store with imbalanced-learn, in bounded memory.

Strategies (``balance.strategy``):

- ``none``: the store is copied unchanged; training can use the class weights instead.
- ``oversample`` / ``undersample``: ``RandomOverSampler`` / ``RandomUnderSampler`` run on the
  row indices (``X = arange(n).reshape(-1, 1)``), so no pixel is loaded to choose rows; the chosen
  rows are then streamed chunk by chunk. Repeated rows are named ``<name>#dup<k>``.
- ``smote``: ``SMOTE`` needs the images themselves as float vectors. To bound memory the store is
  cut into ``smote.chunk_size``-image random chunks, each stratified (the classes in the same
  proportion as the whole store), and SMOTE runs on each chunk alone, asked for that chunk's share
  of the majority count. The approximation: a synthetic image interpolates between a minority
  image and one of its ``k_neighbors`` nearest neighbours *within its chunk* rather than within
  the whole class. Exact SMOTE when the store fits one chunk. The chunk is handed to SMOTE as
  float64 (scikit-learn's float32 neighbour search keeps per-thread float64 copies that cost
  far more); peak memory is about five float64 copies of a chunk, ``40 * chunk_size * H * W * C``
  bytes (~0.5 GB for 64 images of 256×256×3) on top of the interpreter. A chunk grows beyond
  ``chunk_size`` only if the minority class is too small to give every chunk
  ``k_neighbors + 1`` of its images. Synthetic rows are named ``smote<j>``, slide ``smote``
  (they mix two images, possibly from two slides).

Whatever the strategy, ``class_weights.json`` next to the output store holds scikit-learn's
``compute_class_weight("balanced")`` weights of the output labels (all 1.0 once balanced).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from imblearn.over_sampling import SMOTE, RandomOverSampler
from imblearn.under_sampling import RandomUnderSampler

from glomx.artifacts.layout import Layout
from glomx.config import Balance, Params, flatten
from glomx.data.classes import CLASSES, class_counts, class_weights
from glomx.data.store import ArrayStore, StoreWriter
from glomx.errors import GlomxError
from glomx.files import write_json
from glomx.tracking import stage_run

CLASS_WEIGHTS = "class_weights.json"


class BalanceError(GlomxError, ValueError):
    """Invalid balance params or a store that cannot be balanced."""


def resample_indices(labels: np.ndarray, strategy: str, seed: int) -> np.ndarray:
    """Source rows of the output store for ``none``, ``oversample`` or ``undersample``."""
    if strategy == "none":
        return np.arange(len(labels))
    rows = np.arange(len(labels)).reshape(-1, 1)
    if strategy == "oversample":  # originals in order, then the drawn repeats
        sampler = RandomOverSampler(random_state=seed)
        sampler.fit_resample(rows, labels)
        return np.asarray(sampler.sample_indices_)
    if strategy == "undersample":  # kept rows in store order
        sampler = RandomUnderSampler(random_state=seed)
        sampler.fit_resample(rows, labels)
        return np.sort(sampler.sample_indices_)
    raise BalanceError(f"resample_indices handles none/oversample/undersample, not {strategy!r}")


def _copy_rows(src: ArrayStore, rows: np.ndarray, writer: StoreWriter, chunk_size: int) -> None:
    """Stream ``src`` rows into ``writer``; the k-th repeat of a row is named ``<name>#dup<k>``."""
    seen: Counter[int] = Counter()
    for start in range(0, len(rows), chunk_size):
        part = rows[start : start + chunk_size]
        names = []
        for r in part.tolist():
            names.append(src.names[r] if seen[r] == 0 else f"{src.names[r]}#dup{seen[r]}")
            seen[r] += 1
        writer.append(src.read(part), src.labels[part], names, [src.slides[r] for r in part])


def smote_chunks(
    labels: np.ndarray, chunk_size: int, k_neighbors: int, seed: int
) -> list[np.ndarray]:
    """Stratified random partition of the rows into chunks of about ``chunk_size`` rows.

    Fewer, larger chunks are used when the minority class could not give each chunk
    ``k_neighbors + 1`` images.
    """
    minority = int(min(np.count_nonzero(labels == c) for c in CLASSES))
    if minority < 2:
        raise BalanceError(f"SMOTE needs at least 2 images of each class, got {minority}")
    n_chunks = max(1, min(math.ceil(len(labels) / chunk_size), minority // (k_neighbors + 1)))
    rng = np.random.default_rng(seed)
    parts = [
        np.array_split(rng.permutation(np.flatnonzero(labels == c)), n_chunks) for c in CLASSES
    ]
    return [np.sort(np.concatenate(chunk)) for chunk in zip(*parts, strict=True)]


def _smote(src: ArrayStore, writer: StoreWriter, params: Balance, seed: int) -> None:
    """Originals streamed unchanged, then SMOTE's synthetic minority images chunk by chunk."""
    _copy_rows(src, np.arange(len(src)), writer, params.chunk_size)
    counts = class_counts(src.labels)
    minority = int(min(counts, key=counts.__getitem__))
    k = params.smote.k_neighbors
    chunks = smote_chunks(src.labels, params.smote.chunk_size, k, seed)
    made = 0
    for i, rows in enumerate(chunks):
        y = src.labels[rows]
        n_min = int(np.count_nonzero(y == minority))
        n_maj = len(y) - n_min
        if n_maj == n_min:
            continue
        x = src.read(rows).reshape(len(rows), -1).astype(np.float64)
        sampler = SMOTE(
            sampling_strategy={minority: n_maj},
            k_neighbors=min(k, n_min - 1),
            random_state=seed + i,
        )
        x_res, _ = sampler.fit_resample(x, y)
        new = np.clip(np.rint(x_res[len(rows) :]), 0, 255).astype(np.uint8)
        del x, x_res
        writer.append(
            new.reshape(len(new), *src.image_shape),
            [minority] * len(new),
            [f"smote{made + j}" for j in range(len(new))],
            ["smote"] * len(new),
        )
        made += len(new)


def balance(src: ArrayStore, out: str | Path, params: Balance) -> dict[str, Any]:
    """Write the balanced store and its class weights; returns counts before/after and weights."""
    strategy = params.strategy
    class_weights(src.labels)  # both classes present, or a clear error
    seed = params.seed
    meta = {"image": src.params.get("image"), "balance": params.model_dump()}
    extra = {k: src.manifest[k] for k in ("data_kind",) if k in src.manifest}
    with StoreWriter(out, src.image_shape, meta, src.manifest.get("source_hash")) as writer:
        if strategy == "smote":
            _smote(src, writer, params, seed)
        else:
            _copy_rows(src, resample_indices(src.labels, strategy, seed), writer, params.chunk_size)
        balanced = writer.close(extra)
    weights = class_weights(balanced.labels)
    (Path(out) / CLASS_WEIGHTS).write_text(json.dumps(weights, indent=2) + "\n")
    return {
        "strategy": strategy,
        "before": class_counts(src.labels),
        "after": class_counts(balanced.labels),
        "class_weights": weights,
    }


def run(params: Params) -> str:
    """The balance stage: the balanced store, its class weights, ``metrics/balance.json`` and
    its MLflow run; returns its summary."""
    layout, config = Layout(params.need("paths")), params.need("balance")
    src = ArrayStore(layout.augmented)
    summary = balance(src, layout.balanced, config)
    write_json(layout.metrics("balance"), summary)
    with stage_run("balance", config.model_dump(), src.data_kind) as run:
        run.log_dict(summary, "balance.json")
        run.log_metrics({k: v for k, v in flatten(summary).items() if isinstance(v, int | float)})
        run.log_dataset(ArrayStore(layout.balanced), "balanced")
    return f"balance ({config.strategy}): {summary['before']} → {summary['after']}"
