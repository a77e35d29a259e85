"""Synthetic patch images shared by the tests' fixtures and by tests that build their own
folders (importable by name: pytest puts tests/ on the path)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 16


def images_for(labels: np.ndarray, seed: int, size: int = SIZE) -> np.ndarray:
    """Noisy tiles, class 1 about 60 grey levels darker."""
    rng = np.random.default_rng(seed)
    base = rng.integers(140, 220, (len(labels), size, size, 3))
    return (base - 60 * labels[:, None, None, None]).astype(np.uint8)


def write_png(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return path
