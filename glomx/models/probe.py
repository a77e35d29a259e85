"""Linear probe: logistic regression on a frozen pretrained backbone's pooled features.

Fitting computes the backbone's global-pooled features once per training image (and per
extra dihedral view when ``fit.views`` > 1) and once per validation image, standardises them,
and fits ``LogisticRegression`` for every candidate ``C`` in ``fit.C``; the candidate with the
best validation ``fit.select`` score is kept (model selection on validation, never on test).
The standardisation and the logistic regression are then folded into one Dense layer on top
of the backbone, so the fitted probe *is* a Keras model like the other Keras families:
predict, serving, TTA and Grad-CAM need nothing probe-specific.

``model.layer`` names the backbone layer that is pooled: ``output`` (the backbone's last
feature map) or an inner one; the backbone is cut there, so later layers are never computed.

Why: ImageNet features transfer to histology with no training of the network, and an inner
layer transfers better than the last one, which is tuned to ImageNet's classes. On train + val
of the shared slice (``bench/probe_sites.py``, never test) EfficientNet-Lite0's block-14
expansion reached slide-grouped CV balanced accuracy 0.956 and ROC-AUC 0.992, against
0.935 / 0.981 for MobileNetV2's output with Macenko (the former default). Cost on a 2-core CPU
at 224 px: features at tens of images/s (``make bench-models``); the logistic fits take
seconds.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from itertools import islice
from typing import ClassVar

import keras
import numpy as np
from keras import layers
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from glomx.config import ParamsError
from glomx.data.adapt import dihedral_views
from glomx.data.store import ArrayStore
from glomx.evaluation.metrics import epoch_scores
from glomx.family_params import OUTPUT, ProbeConfig, ProbeFit
from glomx.models.backbones import block_of, load_backbone
from glomx.models.base import EpochHook, FitRecord
from glomx.models.keras_common import KerasClassifier, log_gpus

log = logging.getLogger(__name__)


@dataclass
class ProbeRecord(FitRecord):
    """A probe's state: the backbone's weights source, the C chosen and the size of the
    feature matrix it was fitted on."""

    weights: str | None = None  # the backbone's weights source (imagenet or a file)
    C: float | None = None
    features: int | None = None  # pooled features per image
    training_rows: int | None = None  # training images × views
    ORDER: ClassVar[tuple[str, ...]] = (
        "model", "fit", "stain", "weights", "C", "best_epoch", "epochs_run", "features",
        "training_rows", "class_weight",
    )  # fmt: skip


@dataclass
class Candidate:
    """One C's validation scores."""

    C: float
    scores: dict[str, float] = field(default_factory=dict)

    def key(self, select: str) -> float:
        value = self.scores[f"val_{'loss' if select == 'log_loss' else select}"]
        value = -value if select == "log_loss" else value
        return -math.inf if math.isnan(value) else value


def truncate(backbone: keras.Model, layer: str) -> keras.Model:
    """``backbone`` up to ``layer`` (its 4-D activations); ``output`` keeps it whole."""
    if layer == OUTPUT:
        return backbone
    try:
        output = backbone.get_layer(layer).output
    except ValueError:
        blocks = dict.fromkeys(filter(None, (block_of(x.name) for x in backbone.layers)))
        raise ParamsError(
            f"train_probe.model.layer: {backbone.name} has no layer {layer!r}; use output or "
            f"a layer name such as block14_expand_relu (its blocks: {', '.join(blocks)})"
        ) from None
    if len(output.shape) != 4:
        raise ParamsError(
            f"train_probe.model.layer: {layer!r} of {backbone.name} is not a 4-D feature map"
        )
    return keras.Model(backbone.inputs, output, name=backbone.name)


def build_probe(backbone: keras.Model, size: int) -> keras.Model:
    """Frozen backbone, global pooling, one sigmoid unit (weights set by the fit)."""
    backbone.trainable = False
    inputs = keras.Input((size, size, 3), name="image")
    x = backbone(inputs, training=False)
    x = layers.GlobalAveragePooling2D(name="global_pool")(x)
    outputs = layers.Dense(1, activation="sigmoid", dtype="float32", name="p_sclerotic")(x)
    return keras.Model(inputs, outputs, name=f"glomx_probe_{backbone.name}")


class ProbeClassifier(KerasClassifier):
    """Standardised frozen features → logistic regression, folded into one Keras model."""

    family = "probe"
    config_class = ProbeConfig
    fit_config_class = ProbeFit
    record_class = ProbeRecord
    record: ProbeRecord
    channels = 3

    def build_model(self) -> keras.Model:
        cfg = self.config
        backbone, self.record.weights = load_backbone(
            cfg.backbone, cfg.size, cfg.weights, fallback=False
        )
        return build_probe(truncate(backbone, cfg.layer), cfg.size)

    def _features(self, store: ArrayStore, views: int) -> tuple[np.ndarray, np.ndarray]:
        """Pooled features of every image under ``views`` dihedral views, and their labels."""
        pooled = keras.Model(
            self.keras_model.inputs, self.keras_model.get_layer("global_pool").output
        )
        feats, labels = [], []
        for start, chunk in store.iter_chunks(self.fit_config.batch_size):
            x = self.model_input(chunk)
            for view in islice(dihedral_views(x), views):
                feats.append(np.asarray(pooled.predict(view, verbose=0), dtype=np.float32))
                labels.append(store.labels[start : start + len(chunk)])
        return np.concatenate(feats), np.concatenate(labels)

    def _fit(
        self,
        train: ArrayStore,
        val: ArrayStore,
        class_weight: dict[int, float] | None,
        on_epoch: EpochHook,
    ) -> dict[str, list[float]]:
        """Features once, then one logistic regression per C; keeps the best on validation.
        The history has one step per C."""
        cfg = self.fit_config
        log_gpus()
        keras.utils.set_random_seed(cfg.seed)
        self._model = self.build_model()
        log.info("probe: features of %d training images × %d view(s)", len(train), cfg.views)
        x_train, y_train = self._features(train, cfg.views)
        x_val, _ = self._features(val, 1)
        scaler = StandardScaler().fit(x_train)
        z_train, z_val = scaler.transform(x_train), scaler.transform(x_val)
        weights = {int(k): float(v) for k, v in class_weight.items()} if class_weight else None
        candidates, fitted = [], []
        for c in cfg.C:
            lr = LogisticRegression(C=c, class_weight=weights, max_iter=cfg.max_iter)
            lr.fit(z_train, y_train)
            candidates.append(Candidate(c, epoch_scores(val.labels, lr.predict_proba(z_val)[:, 1])))
            on_epoch({**candidates[-1].scores, "C": c})
            fitted.append(lr)
        best = max(range(len(candidates)), key=lambda i: candidates[i].key(cfg.select))
        self._fold(scaler, fitted[best])
        history = {k: [cand.scores[k] for cand in candidates] for k in candidates[0].scores}
        history["C"] = [cand.C for cand in candidates]
        record = self.record
        record.C, record.best_epoch = candidates[best].C, best + 1
        record.epochs_run, record.features = len(candidates), int(x_train.shape[1])
        record.training_rows = len(x_train)
        return history

    def _fold(self, scaler: StandardScaler, lr: LogisticRegression) -> None:
        """Standardisation + logistic regression as the Dense layer's kernel and bias."""
        coef = lr.coef_[0] / scaler.scale_
        bias = lr.intercept_[0] - float(np.dot(coef, scaler.mean_))
        dense = self.keras_model.get_layer("p_sclerotic")
        dense.set_weights([coef[:, None].astype(np.float32), np.array([bias], np.float32)])

    def summary(self) -> str:
        """The Keras summary plus the chosen C."""
        record = self.record
        return (
            f"{super().summary()}\nlinear probe on {self.config.backbone} "
            f"{self.config.layer} features "
            f"({record.features}-d, {record.training_rows} training rows): "
            f"C = {record.C} chosen on validation {self.fit_config.select}\n"
        )
