"""Adapting prepared batches to a model's input size and channels."""

import numpy as np
import pytest

from glomx.data.adapt import adapt


def test_downscale_keeps_flat_colour_and_shape() -> None:
    images = np.full((3, 32, 32, 3), (200, 100, 50), dtype=np.uint8)
    out = adapt(images, 8, 3)
    assert out.shape == (3, 8, 8, 3) and out.dtype == np.uint8
    assert (out == (200, 100, 50)).all()


def test_channels_are_added_opaque_or_dropped() -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (2, 6, 6, 3), dtype=np.uint8)
    rgba = adapt(rgb, 6, 4)
    assert (rgba[..., 3] == 255).all() and (rgba[..., :3] == rgb).all()
    assert (adapt(rgba, 6, 3) == rgb).all()


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="uint8"):
        adapt(np.zeros((2, 4, 4, 3), np.float32), 4, 3)
    with pytest.raises(ValueError, match="channels"):
        adapt(np.zeros((2, 4, 4, 3), np.uint8), 4, 2)
