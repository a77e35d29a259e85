"""``params.yaml`` as frozen, typed objects, parsed once, when a stage starts.

Every section is a :class:`~glomx.section.Section`, which refuses unknown keys and ill-typed
values with a one-line :class:`ParamsError` naming the key's full path. The model families'
``train_<family>`` sections, their ``model:`` and ``fit:`` included, are typed in
:mod:`glomx.family_params`; ``keras_fit`` holds the ``fit:`` values the Keras families share,
and each Keras family's ``fit:`` is laid over it here, once. So :func:`load` checks every key
of the file, without importing Keras.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeAlias

import yaml
from pydantic import AfterValidator, Field, ValidationInfo, field_validator

from glomx.family_params import (
    TRAIN_SECTIONS,
    CNNSection,
    FitConfig,
    KerasTrainSection,
    LRSection,
    MobileNetSection,
    ProbeSection,
    ResNetSection,
    TrainSection,
)
from glomx.section import ParamsError, Section, parse

PARAMS_FILE = Path("params.yaml")
TRAIN_PREFIX = "train_"


# ---------------------------------------------------------------- sections


Policy = Literal["error", "skip"]
Positive = Field(ge=1)
Share = Field(gt=0, lt=1)


class Paths(Section):
    """Where every stage reads and writes (relative to the repository root)."""

    data: str
    prepared: str
    augmented: str
    balanced: str
    models: str
    cv: str
    selection: str
    metrics: str
    plots: str
    reports: str


class CataloguePolicy(Section):
    """Per catalogue problem: stop (error) or drop the file and report it (skip)."""

    missing_file: Policy = "error"
    unlisted_file: Policy = "error"
    bad_label: Policy = "error"
    wrong_folder: Policy = "error"
    duplicate: Policy = "error"
    unsafe_path: Policy = "error"
    bad_name: Policy = "error"
    unreadable_image: Policy = "error"


class ImageParams(Section):
    """How a raw patch becomes a prepared array."""

    size: int = Field(ge=8)
    channels: Literal[3, 4]
    method: Literal["resize", "pad", "center_crop", "crop_min"]
    fill: Literal["white", "black"]
    max_pixels: int = Positive


class SplitParams(Section):
    """The fixed test slides and the K slide-grouped folds of the others."""

    strategy: Literal["grouped", "random"]
    folds: int = Field(ge=2)
    val: float = Share
    test: float = Share
    seed: int


class Prepare(Section):
    csv: str
    slide_regex: str
    site_regex: str | None  # the hospital in a slide id: folds balance sites; evaluate per site
    policy: CataloguePolicy
    image: ImageParams
    split: SplitParams
    chunk_size: int = Positive
    workers: int = Positive


class Toggle(Section):
    enabled: bool


class Rotation(Toggle):
    degrees: float = Field(ge=0)


class Factor(Toggle):
    factor: float = Field(ge=0)


class Brightness(Toggle):
    delta: float = Field(ge=0)


class StainJitter(Toggle):
    scale: float = Field(ge=0)
    shift: float = Field(ge=0)


class AugmentOps(Section):
    """Label-preserving operations; each copy draws every strength uniformly in ±value."""

    dihedral: Toggle
    rotate: Rotation
    shear: Rotation
    zoom: Factor
    brightness: Brightness
    contrast: Factor
    stain: StainJitter


class AugmentTarget(Section):
    mode: Literal["multiplier", "count"]
    per_class: dict[int, float]  # class (0, 1) -> multiplier or count

    @field_validator("per_class")
    @classmethod
    def _classes(cls, per_class: dict[int, float]) -> dict[int, float]:
        if set(per_class) - {0, 1}:
            raise ValueError("must map the classes 0 and 1 (and nothing else) to a value")
        return per_class


class Grid(Section):
    per_class: int = Positive
    copies: int = Positive


class Augment(Section):
    seed: int
    target: AugmentTarget
    ops: AugmentOps
    chunk_size: int = Positive
    workers: int = Positive
    grid: Grid


class Smote(Section):
    k_neighbors: int = Positive
    chunk_size: int = Positive


class Balance(Section):
    strategy: Literal["none", "oversample", "undersample", "smote"]
    seed: int
    chunk_size: int = Positive
    smote: Smote


class Bootstrap(Section):
    """Percentile intervals from resampling whole slides."""

    n_resamples: int = Positive
    confidence: float = Share
    seed: int


class Restyle(Toggle):
    """RandStainNA-style restyling of a fold trial's training images (glomx.data.stain)."""

    probability: float = Field(gt=0, le=1)  # share of training images restyled
    spread: float = Field(gt=0)  # × the training images' spread of each style statistic


class CV(Section):
    inner_val: float = Share
    seed: int
    cpus_per_trial: float = Field(gt=0)
    gpus_per_trial: Literal["auto"] | float  # auto: 1 where the Ray cluster has a GPU, else 0
    bootstrap: Bootstrap
    restyle: Restyle

    @field_validator("gpus_per_trial", mode="before")
    @classmethod
    def _gpus(cls, value: Any) -> Any:
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if value == "auto" or (number and value >= 0):
            return value
        raise ValueError("must be auto or a number of GPUs ≥ 0")


def _known_families(families: list[str]) -> list[str]:
    unknown = [f for f in families if f not in TRAIN_SECTIONS]
    if unknown:
        raise ValueError(
            f"names an unknown family {unknown[0]!r}; known: {', '.join(TRAIN_SECTIONS)}"
        )
    return families


Families = Annotated[list[str], Field(min_length=1), AfterValidator(_known_families)]


class Choose(Section):
    families: Families


class Promotion(Section):
    metric: Literal["balanced_accuracy", "roc_auc", "recall", "specificity"]  # shown in cv.json
    margin: float = Field(ge=0)


class Evaluate(Section):
    families: Families
    tta: bool
    batch_size: int = Positive
    baseline: bool
    bootstrap: Bootstrap
    calibration_bins: int = Field(ge=2)
    gradcam_per_case: int = Field(ge=0)
    promotion: Promotion


class Params(Section):
    """The whole file. A section a stage needs but the file lacks is named when asked for
    (:meth:`need`), so a test or a lab can keep a file with only the sections it runs."""

    paths: Paths | None = None
    prepare: Prepare | None = None
    augment: Augment | None = None
    balance: Balance | None = None
    cv: CV | None = None
    choose: Choose | None = None
    keras_fit: FitConfig = Field(default_factory=FitConfig)
    evaluate: Evaluate | None = None
    # one per family of TRAIN_SECTIONS, after keras_fit: fields are validated in this order
    train_lr: LRSection | None = None
    train_cnn: CNNSection | None = None
    train_resnet: ResNetSection | None = None
    train_mobilenet: MobileNetSection | None = None
    train_probe: ProbeSection | None = None

    @field_validator(*(f"{TRAIN_PREFIX}{family}" for family in TRAIN_SECTIONS))
    @classmethod
    def _over_keras_fit(cls, section: TrainSection | None, info: ValidationInfo) -> object:
        """A Keras family's ``fit:`` laid over ``keras_fit`` (absent when that is invalid:
        its own error is the one reported)."""
        keras_fit = info.data.get("keras_fit")
        if isinstance(section, KerasTrainSection) and isinstance(keras_fit, FitConfig):
            return section.over(keras_fit)
        return section

    @property
    def train(self) -> dict[str, TrainSection]:
        """Family → its ``train_<family>`` section, for the families the file has."""
        sections = {f: getattr(self, f"{TRAIN_PREFIX}{f}") for f in TRAIN_SECTIONS}
        return {family: s for family, s in sections.items() if s is not None}

    def need(self, name: str) -> Any:
        """Section ``name``, or a :class:`ParamsError` saying the file lacks it."""
        value = getattr(self, name, None) if name in type(self).model_fields else None
        if value is None:
            raise ParamsError(f"params.yaml has no '{name}' section; this stage needs it")
        return value


Json: TypeAlias = str | int | float | bool | list["Json"] | dict[str, "Json"] | None  # YAML


def read(path: str | Path = PARAMS_FILE) -> dict[str, Json]:
    """The params file as plain YAML (for provenance and tests that write variants of it)."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path} not found; run stages from the repository root")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ParamsError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ParamsError(f"{path} must hold a mapping of sections, got {type(data).__name__}")
    return data


def load(path: str | Path = PARAMS_FILE) -> Params:
    """The params file, typed and validated, every family's ``model:`` and ``fit:`` too."""
    return parse(Params, read(path), "")


def flatten(params: Mapping[str, object], prefix: str = "") -> dict[str, object]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}``, for logging nested params as flat keys."""
    flat: dict[str, object] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def file_hash(path: str | Path) -> str:
    """md5 of a file's bytes (params file, data.dvc), for provenance tags."""
    return hashlib.md5(Path(path).read_bytes()).hexdigest()
