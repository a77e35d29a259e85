"""Decoding alone: ``glomx predict``'s own path with a predictor that does no work.

:func:`glomx.predict.predict_files` decodes the files with a model's preprocessing in its pool
of decoding processes and writes its rows, as ``glomx predict`` does, but every probability is
0 at no cost: its wall time is predict's floor on this machine, which no model can beat.
``bench/champion.py`` runs it as a process of its own, as it runs ``glomx predict``. Kept apart
from that bench so that the decoding processes, which spawn and import the main script, import
no more than ``glomx predict``'s own do.

Usage: ``python bench/decode_floor.py PATH... --like MODEL_DIR --out CSV``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from glomx.models.base import ModelMeta, Predictor
from glomx.predict import LoadedModel, collect_files, predict_files

SOURCE = "decoding alone"


class NoWork(Predictor):
    """Probability 0 for every image, at no cost: predict's cost without a model."""

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        return np.zeros(len(images), dtype=np.float32)

    def summary(self) -> str:
        return f"{SOURCE}: no model"

    def tags(self) -> dict[str, str]:
        return {}

    def _save_weights(self, directory: Path) -> None:
        raise NotImplementedError(f"{SOURCE} has no weights to save")

    def _extra(self) -> dict[str, Any]:
        return {}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", type=Path, help="image files or folders")
    parser.add_argument("--like", type=Path, required=True, help="model folder: preprocessing")
    parser.add_argument("--out", type=Path, required=True, help="output CSV")
    args = parser.parse_args()
    meta, _ = ModelMeta.read(args.like)
    files = collect_files(args.paths)
    summary = predict_files(files, LoadedModel(NoWork(meta), SOURCE), args.out, progress=False)
    return 0 if files and summary.predicted == len(files) else 1


if __name__ == "__main__":
    raise SystemExit(main())
