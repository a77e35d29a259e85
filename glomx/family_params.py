"""The model families' own params: each ``train_<family>`` section with its ``model:`` and
``fit:`` typed here, in the base layer, so :func:`glomx.config.load` checks every key of the
file without importing Keras; the families' modules (:mod:`glomx.models`) build from these.

A Keras family's ``fit:`` is :class:`FitConfig` over the shared ``keras_fit`` values, merged
once, on loading (:meth:`KerasTrainSection.over`). Each ``model:`` and ``fit:`` remembers which
keys the file set, so MLflow logs the file's values and not the defaults it left out
(:meth:`TrainSection.logged`).
"""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import AfterValidator, Field, field_validator, model_validator

from glomx.section import Section

BACKBONES = ("mobilenet_v2", "efficientnet_lite0", "resnet50")  # built by glomx.models.backbones
OUTPUT = "output"  # a probe's layer: the backbone's last feature map


def _known(name: str) -> str:
    if name not in BACKBONES:
        raise ValueError(f"must be one of {', '.join(BACKBONES)}")
    return name


Backbone = Annotated[str, AfterValidator(_known)]  # a params value naming one of BACKBONES


# ---------------------------------------------------------------- model: and fit: parts


class LRModel(Section):
    """Input of the model (the ``model:`` part of ``train_lr`` in params.yaml)."""

    size: int = Field(32, ge=1)  # prepared images are resized to size×size before flattening
    channels: Literal[3, 4] = 3  # 3 = RGB, 4 = RGBA (the original study: 256×256×4)


class LRFit(Section):
    """Optimisation (the ``fit:`` part of ``train_lr``)."""

    epochs: int = Field(10, ge=1)  # passes of SGD over the training store
    alpha: float = Field(1.0, gt=0)  # L2 penalty on standardised pixels
    average: bool = False  # averaged SGD (ASGD)
    select: Literal["val_loss", "val_auc", "val_balanced_accuracy", "last"] = "val_auc"
    seed: int = 42


class CNNConfig(Section):
    """Architecture settings (the ``model:`` part of ``train_cnn`` in params.yaml)."""

    size: int = Field(128, ge=2)  # input side: prepared images are resized to it on the fly
    channels: Literal[3, 4] = 3  # 3 = RGB, 4 = RGBA
    filters: tuple[int, ...] = (32, 64, 128, 256)  # one Conv-BN-ReLU-MaxPool block each
    kernel: int = Field(3, ge=1)
    dropout: float = Field(0.3, ge=0, lt=1)
    standardize: bool = True  # per image and channel: zero mean, unit variance; else x / 255

    @model_validator(mode="after")
    def _fits_poolings(self) -> Self:
        if self.size < 2 ** len(self.filters):
            raise ValueError(f"size {self.size} is too small for {len(self.filters)} poolings")
        return self


class FitConfig(Section):
    """Training settings shared by the Keras families (``keras_fit``, and the ``fit:`` part of
    their sections over it)."""

    epochs: int = Field(30, ge=1)
    batch_size: int = Field(32, ge=1)
    learning_rate: float = Field(1e-3, gt=0)
    lr_schedule: Literal["cosine", "plateau", "constant"] = "cosine"
    monitor: Literal["balanced_accuracy", "auc"] = (
        "balanced_accuracy"  # early stopping, best weights
    )
    patience: int = Field(8, ge=1)  # epochs without improvement before a phase stops
    dihedral: bool = True  # random rot90 × flip per image and epoch
    color_jitter: float = Field(0.1, ge=0, lt=1)  # per-channel gain in [1 - j, 1 + j]; 0 = off
    jit_compile: bool = True  # XLA; faster on CPU (see the family docstrings)
    mixed_precision: bool = False  # float16 compute: slower on CPU, faster on recent GPUs
    workers: int = Field(1, ge=1)  # PyDataset worker threads
    seed: int = 42


class TransferConfig(Section):
    """Backbone and fine-tuning settings (the ``model:`` part of ``train_mobilenet``)."""

    backbone: Backbone = "mobilenet_v2"  # mobilenet_v2 | efficientnet_lite0 | resnet50
    size: int = Field(224, ge=32)  # input side
    weights: str = "imagenet"  # imagenet | none | path to a .weights.h5 of the backbone
    fallback: bool = False  # imagenet unavailable → warn and train from random init
    dropout: float = Field(0.2, ge=0, lt=1)
    finetune_blocks: int = Field(3, ge=0)  # blocks unfrozen in phase 2 (from the top, head too)
    finetune_epochs: int = Field(4, ge=0)  # phase 2 length; 0 = head only
    finetune_learning_rate: float = Field(1e-4, gt=0)


class ResNetConfig(TransferConfig):
    """``train_resnet``'s ``model:``: ResNet-50 at 128 px, random-init fallback allowed."""

    backbone: Backbone = "resnet50"
    size: int = Field(128, ge=32)
    fallback: bool = True
    dropout: float = Field(0.3, ge=0, lt=1)
    finetune_learning_rate: float = Field(1e-5, gt=0)


class ProbeConfig(Section):
    """The frozen feature extractor (the ``model:`` part of ``train_probe``)."""

    backbone: Backbone = "mobilenet_v2"  # mobilenet_v2 | efficientnet_lite0 | resnet50
    layer: str = OUTPUT  # the backbone layer whose activations are pooled; output = its last
    size: int = Field(224, ge=32)  # input side
    weights: str = "imagenet"  # imagenet | path to a .weights.h5 of the backbone

    @field_validator("weights")
    @classmethod
    def _pretrained(cls, weights: str) -> str:
        if weights == "none":
            raise ValueError("a linear probe on random features is meaningless; use imagenet")
        return weights


class ProbeFit(Section):
    """The logistic regression and its selection (the ``fit:`` part of ``train_probe``)."""

    C: tuple[Annotated[float, Field(gt=0)], ...] = Field(
        (0.001, 0.003, 0.01, 0.03, 0.1), min_length=1
    )  # inverse L2 strength, candidates
    select: Literal["log_loss", "auc", "balanced_accuracy"] = "log_loss"  # picks C
    views: int = Field(1, ge=1, le=8)  # dihedral views per training image (1 = as stored)
    batch_size: int = Field(32, ge=1)
    max_iter: int = Field(2000, ge=1)
    seed: int = 42


# ---------------------------------------------------------------- train_<family> sections


class Threshold(Section):
    tune: bool = False  # true: each fold model's threshold maximises `metric` on inner slides
    metric: Literal["accuracy", "balanced_accuracy", "precision", "recall", "specificity", "f1"] = (
        "balanced_accuracy"
    )


class TrainSection(Section):
    """What every ``train_<family>`` section has; each family's subclass types its ``model``
    and ``fit``."""

    model: Section
    fit: Section
    class_weight: Literal["none", "balanced"] = "none"
    stain: Literal["none", "macenko", "reinhard"] = "none"
    threshold: Threshold = Threshold()

    def logged(self) -> dict[str, object]:
        """The section as MLflow logs it: ``model:`` and ``fit:`` with the keys the file sets
        (a Keras family's ``fit:`` with ``keras_fit``'s too), the rest with its defaults."""
        return {
            "model": self.model.model_dump(mode="json", exclude_unset=True),
            "fit": self.fit.model_dump(mode="json", exclude_unset=True),
            **self.model_dump(exclude={"model", "fit"}),
        }


class KerasTrainSection(TrainSection):
    """A Keras family's section: its ``fit:`` is :class:`FitConfig` over ``keras_fit``."""

    fit: FitConfig = Field(default_factory=FitConfig)

    def over(self, keras_fit: FitConfig) -> Self:
        """This section with its ``fit:`` over ``keras_fit``: the keys either sets, its own
        winning."""
        values = keras_fit.model_dump(exclude_unset=True) | self.fit.model_dump(exclude_unset=True)
        return self.model_copy(update={"fit": FitConfig.model_validate(values)})


class LRSection(TrainSection):
    model: LRModel = Field(default_factory=LRModel)
    fit: LRFit = Field(default_factory=LRFit)


class CNNSection(KerasTrainSection):
    model: CNNConfig = Field(default_factory=CNNConfig)


class ResNetSection(KerasTrainSection):
    model: ResNetConfig = Field(default_factory=ResNetConfig)


class MobileNetSection(KerasTrainSection):
    model: TransferConfig = Field(default_factory=TransferConfig)


class ProbeSection(TrainSection):
    model: ProbeConfig = Field(default_factory=ProbeConfig)
    fit: ProbeFit = Field(default_factory=ProbeFit)


# family → the type of its ``train_<family>`` section (glomx.models.FAMILIES names the same)
TRAIN_SECTIONS: dict[str, type[TrainSection]] = {
    "lr": LRSection,
    "cnn": CNNSection,
    "resnet": ResNetSection,
    "mobilenet": MobileNetSection,
    "probe": ProbeSection,
}
