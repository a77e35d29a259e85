"""A tiny pipeline layout for cross-validation tests: prepare's ``train`` store of original
patches with its ``split.csv`` folds, and a training store holding them plus one augmented copy
each (``<name>#aug1``, the same slide), as augment and balance leave it."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import yaml

from glomx.config import CV, Paths, read
from glomx.data.catalogue import Record
from glomx.data.images import Preprocessing
from glomx.data.split import assign_folds, write_split_csv
from glomx.data.store import StoreWriter

REPO = Path(__file__).resolve().parents[1]
PRE = Preprocessing(size=24, channels=3, method="pad", fill="white")
TEST_CV = CV.model_validate(
    {
        **read(REPO / "params.yaml")["cv"],
        "cpus_per_trial": 1,
        "bootstrap": {"n_resamples": 200, "confidence": 0.95, "seed": 0},
    }
)
SITE_REGEX = "^(?P<site>[^_-]+)"
SLIDES = [f"{site}_{i}" for site in ("SAS", "SESCAM", "VUHSK") for i in range(4)]


def centre_images(labels: np.ndarray, seed: int, size: int = PRE.size) -> np.ndarray:
    """Noisy tiles; class 1 has a dark centre, class 0 a bright one."""
    rng = np.random.default_rng(seed)
    images = rng.integers(90, 170, (len(labels), size, size, 3))
    c = slice(size // 4, 3 * size // 4)
    images[:, c, c] += np.where(labels == 1, -70, 70)[:, None, None, None]
    return images.astype(np.uint8)


def _store(path: Path, images: np.ndarray, labels: np.ndarray, names: list[str],
           slides: list[str]) -> None:  # fmt: skip
    with StoreWriter(path, images.shape[1:], {"image": asdict(PRE)}, "src") as w:
        w.append(images, labels, names, slides)
        w.close({"data_kind": "synthetic"})


def cv_layout(root: Path, per_slide: int = 6, folds: int = 3) -> dict[str, str]:
    """12 slides (4 per site), ``per_slide`` patches each, a third sclerotic; returns ``paths``
    as params.yaml names them."""
    paths = {
        k: str(root / k)
        for k in ("prepared", "balanced", "models", "metrics", "plots", "cv", "selection")
    }
    slides = [s for s in SLIDES for _ in range(per_slide)]
    labels = (np.arange(len(slides)) % 3 == 0).astype(np.uint8)
    names = [f"{s}-{i}.png" for i, s in enumerate(slides)]
    images = centre_images(labels, seed=0)
    prepared = Path(paths["prepared"])
    _store(prepared / "train", images, labels, names, slides)
    records = [Record(n, Path(n), int(y), s) for n, y, s in zip(names, labels, slides, strict=True)]
    splits = ["train"] * len(records)
    fold = assign_folds(records, splits, folds, 0, "grouped", SITE_REGEX)
    write_split_csv(prepared / "split.csv", records, splits, fold)
    copies = centre_images(labels, seed=1)
    _store(
        Path(paths["balanced"]),
        np.concatenate([images, copies]),
        np.concatenate([labels, labels]),
        names + [f"{n}#aug1" for n in names],
        slides + slides,
    )
    return paths


def typed(paths: dict[str, str]) -> Paths:
    """``paths`` over the repository's, as a stage gets them from params.yaml."""
    return Paths.model_validate({**read(REPO / "params.yaml")["paths"], **paths})


def stage_project(root: Path, train_lr: dict | None = None, per_slide: int = 6) -> Path:
    """A folder to run ``stages/train.py lr`` in: :func:`cv_layout` under it and a params.yaml
    pointing there (``train_lr`` overrides its section; one CPU per trial). Returns it."""
    params = read(REPO / "params.yaml")
    params["paths"].update(cv_layout(root, per_slide))
    params["train_lr"] = {**params["train_lr"], **(train_lr or {})}
    params["cv"]["cpus_per_trial"] = 1
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root
