"""Adapt a batch of prepared uint8 images to a model's input size and channel count."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from PIL import Image


def adapt(images: np.ndarray, size: int, channels: int) -> np.ndarray:
    """Resize ``(N, H, W, C)`` uint8 images to ``(N, size, size, channels)`` uint8.

    Downscaling is antialiased (PIL bilinear with support scaled to the reduction). Three
    channels become four by appending an opaque alpha; four become three by dropping alpha.
    """
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"expected (N, H, W, C) uint8 images, got {images.dtype} {images.shape}")
    if channels not in (3, 4):
        raise ValueError(f"channels must be 3 or 4, got {channels}")
    rgb = images[..., :3]
    if rgb.shape[1:3] != (size, size):
        rgb = (
            np.stack(
                [
                    np.asarray(Image.fromarray(im).resize((size, size), Image.Resampling.BILINEAR))
                    for im in rgb
                ]
            )
            if len(rgb)
            else np.empty((0, size, size, 3), np.uint8)
        )
    if channels == 3:
        return np.ascontiguousarray(rgb)
    alpha = np.full((*rgb.shape[:3], 1), 255, dtype=np.uint8)
    return np.concatenate([rgb, alpha], axis=-1)


def dihedral_views(images: np.ndarray) -> Iterator[np.ndarray]:
    """The 8 rotations/reflections of a square ``(N, H, W, C)`` batch, identity first."""
    for flipped in (images, images[:, :, ::-1]):
        for k in range(4):
            yield np.ascontiguousarray(np.rot90(flipped, k, axes=(1, 2)))
