"""On-disk uint8 image arrays written in chunks and read back in bounded memory.

A store is a directory holding:

- ``images.npy``: one ``(N, H, W, C)`` uint8 array in standard ``.npy`` format,
- ``labels.npy``: ``(N,)`` uint8 labels (0 = non-globally sclerotic, 1 = globally sclerotic),
- ``index.csv``: ``name,label,slide`` per row, in array order,
- ``manifest.json``: shape, dtype, counts, the params that produced it and a source hash.

Writing appends raw bytes after a header that is rewritten on close, and reading uses
explicit ``readinto`` calls rather than memory maps, so resident memory stays at one chunk
whatever the number of images. A store is written in a temporary sibling folder and renamed
into place on close, so a failed writer leaves the previous complete store, or nothing.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from glomx.errors import GlomxError
from glomx.files import discard, naming, put_in_place, temporary_sibling

IMAGES = "images.npy"
LABELS = "labels.npy"
INDEX = "index.csv"
MANIFEST = "manifest.json"
_HEADER_BYTES = 128  # fixed, so the header can be rewritten in place once N is known


class StoreError(GlomxError, RuntimeError):
    """A store directory is missing, incomplete or inconsistent."""


def _npy_header(shape: tuple[int, ...]) -> bytes:
    """A version-1.0 ``.npy`` header for a C-ordered uint8 array, padded to a fixed size."""
    body = repr({"descr": "|u1", "fortran_order": False, "shape": shape}).encode("latin1")
    pad = _HEADER_BYTES - 10 - len(body) - 1
    if pad < 0:
        raise StoreError(f"shape {shape} does not fit a {_HEADER_BYTES}-byte npy header")
    header = body + b" " * pad + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header


@dataclass(frozen=True)
class Row:
    """One image's identity in a store."""

    name: str
    label: int
    slide: str


class StoreWriter:
    """Appends chunks of images to a new store; use as a context manager.

    Everything is written into a hidden temporary sibling of ``path``, which :meth:`close`
    completes and renames over ``path``; a writer that fails (an exception, a full disk) removes
    it, so ``path`` keeps its previous complete store, or stays absent.
    """

    def __init__(
        self,
        path: str | Path,
        image_shape: tuple[int, int, int],
        params: dict[str, Any] | None = None,
        source_hash: str | None = None,
    ) -> None:
        self.path = Path(path)
        self.image_shape = tuple(int(v) for v in image_shape)
        self.params = params or {}
        self.source_hash = source_hash
        with naming(self.path):
            self._temporary = temporary_sibling(self.path, directory=True)
            self._images = open(self._temporary / IMAGES, "wb")  # noqa: SIM115 - see close()
            self._images.write(_npy_header((0, *self.image_shape)))
        self._rows: list[Row] = []

    def append(
        self,
        images: np.ndarray,
        labels: Sequence[int] | np.ndarray,
        names: Sequence[str],
        slides: Sequence[str],
    ) -> None:
        """Write one chunk: ``images`` is ``(n, H, W, C)`` uint8 matching the store's shape."""
        if images.dtype != np.uint8 or tuple(images.shape[1:]) != self.image_shape:
            raise StoreError(
                f"chunk of dtype {images.dtype} and shape {images.shape[1:]} does not match "
                f"the store's uint8 {self.image_shape}"
            )
        if not (len(images) == len(labels) == len(names) == len(slides)):
            raise StoreError("images, labels, names and slides differ in length")
        with naming(self.path):
            self._images.write(np.ascontiguousarray(images).tobytes())
        self._rows.extend(
            Row(str(n), int(lab), str(s)) for n, lab, s in zip(names, labels, slides, strict=True)
        )

    def close(self, extra: dict[str, Any] | None = None) -> ArrayStore:
        """Finalise header, labels, index and manifest, and put the store in place; returns it
        opened for reading."""
        try:
            with naming(self.path):
                self._finish(extra)
                put_in_place(self._temporary, self.path)
        finally:
            discard(self._temporary)  # gone once in place; removed when finishing failed
        return ArrayStore(self.path)

    def _finish(self, extra: dict[str, Any] | None) -> None:
        n = len(self._rows)
        self._images.seek(0)
        self._images.write(_npy_header((n, *self.image_shape)))
        self._images.close()
        folder = self._temporary
        np.save(folder / LABELS, np.array([r.label for r in self._rows], dtype=np.uint8))
        with open(folder / INDEX, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["name", "label", "slide"])
            w.writerows((r.name, r.label, r.slide) for r in self._rows)
        labels = [r.label for r in self._rows]
        manifest = {
            "shape": [n, *self.image_shape],
            "dtype": "uint8",
            "count": n,
            "class_counts": {"0": labels.count(0), "1": labels.count(1)},
            "slides": len({r.slide for r in self._rows}),
            "params": self.params,
            "source_hash": self.source_hash,
            **(extra or {}),
        }
        (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None and not self._images.closed:
            self.close()
            return
        with suppress(OSError):  # on a full disk this last flush fails too
            self._images.close()
        discard(self._temporary)  # nothing once close() has put the store in place


class ArrayStore:
    """Read access to a finished store: metadata in memory, pixels streamed from disk."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        manifest = self.path / MANIFEST
        if not manifest.is_file():
            raise StoreError(
                f"{self.path} is not a finished array store (no {MANIFEST}); "
                "rerun the stage that writes it, e.g. `dvc repro`"
            )
        self.manifest: dict[str, Any] = json.loads(manifest.read_text())
        shape = tuple(self.manifest["shape"])
        self.image_shape: tuple[int, int, int] = shape[1:]  # type: ignore[assignment]
        self.labels: np.ndarray = np.load(self.path / LABELS)
        with open(self.path / INDEX, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        self.names = [r["name"] for r in rows]
        self.slides = [r["slide"] for r in rows]
        self._item_bytes = int(np.prod(self.image_shape))
        self._offset = _HEADER_BYTES
        expected = self._offset + shape[0] * self._item_bytes
        actual = os.path.getsize(self.path / IMAGES)
        if len(self.labels) != shape[0] or len(rows) != shape[0] or actual != expected:
            raise StoreError(
                f"{self.path} is inconsistent: manifest says {shape[0]} images, labels "
                f"{len(self.labels)}, index {len(rows)}, images.npy {actual} bytes "
                f"(expected {expected}); rerun the stage that writes it"
            )

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def params(self) -> dict[str, Any]:
        """The params recorded by the stage that wrote this store."""
        return self.manifest.get("params", {})

    @property
    def data_kind(self) -> str:
        """``real`` or ``synthetic``, as recorded by prepare and carried by later stages."""
        if "data_kind" not in self.manifest:
            raise StoreError(
                f"{self.path}/{MANIFEST} has no data_kind; rerun prepare (`dvc repro prepare`)"
            )
        return str(self.manifest["data_kind"])

    def read(self, indices: slice | Sequence[int] | np.ndarray) -> np.ndarray:
        """Images at ``indices`` (a slice with step 1, or any integer sequence) as a new array."""
        with open(self.path / IMAGES, "rb", buffering=0) as f:
            if isinstance(indices, slice):
                start, stop, step = indices.indices(len(self))
                if step != 1:
                    raise StoreError("slices with a step are not supported; pass indices")
                out = np.empty((max(stop - start, 0), *self.image_shape), dtype=np.uint8)
                f.seek(self._offset + start * self._item_bytes)
                f.readinto(out.data.cast("B"))
                return out
            idx = np.asarray(indices, dtype=np.int64)
            out = np.empty((len(idx), *self.image_shape), dtype=np.uint8)
            for i in np.argsort(idx, kind="stable"):  # ascending offsets read faster
                f.seek(self._offset + int(idx[i]) * self._item_bytes)
                f.readinto(memoryview(out[i]).cast("B"))
            return out

    def iter_chunks(self, chunk_size: int = 256) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(start, images)`` in order, ``chunk_size`` images at a time."""
        for start in range(0, len(self), chunk_size):
            yield start, self.read(slice(start, min(start + chunk_size, len(self))))

    def rows(self) -> list[Row]:
        """Name, label and slide of every image, in array order."""
        return [
            Row(n, int(lab), s)
            for n, lab, s in zip(self.names, self.labels, self.slides, strict=True)
        ]


def write_subset(
    src: ArrayStore,
    indices: Sequence[int] | np.ndarray,
    path: str | Path,
    extra: dict[str, Any] | None = None,
    chunk_size: int = 128,
    transform: Callable[[int, np.ndarray], np.ndarray] | None = None,
) -> ArrayStore:
    """A new store of ``src``'s images at ``indices`` (in that order), copied chunk by chunk,
    each chunk passed through ``transform(first output row, images)`` when given; it keeps
    ``src``'s params, source hash and data kind."""
    idx = np.asarray(indices, dtype=np.int64)
    carried = {k: src.manifest[k] for k in ("data_kind",) if k in src.manifest}
    with StoreWriter(path, src.image_shape, src.params, src.manifest.get("source_hash")) as w:
        for start in range(0, len(idx), chunk_size):
            part = idx[start : start + chunk_size]
            images = src.read(part)
            w.append(
                transform(start, images) if transform else images,
                src.labels[part],
                [src.names[i] for i in part],
                [src.slides[i] for i in part],
            )
        return w.close({**carried, **(extra or {})})
