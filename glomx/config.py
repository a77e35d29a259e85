"""``params.yaml`` as frozen, typed objects, parsed once at a stage's door.

Every section is a :class:`Section`: a pydantic model that refuses unknown keys and ill-typed
values with a one-line :class:`ParamsError` naming the key's full path, e.g.
``params.yaml: train_cnn.fit.epochs must be a valid integer, got 'ten'`` or
``params.yaml: prepare.split.fold is not a known key; valid: strategy, folds, ...``. So a
misspelled key can never silently fall back to a default.

The model families' own ``model:`` and ``fit:`` parts are typed by the family modules
(:mod:`glomx.models`), which know them; :class:`TrainSection` holds everything else a
``train_<family>`` section has, the same for every family. ``keras_fit`` holds the ``fit:``
values the Keras families share; a family's own ``fit:`` overrides them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from glomx.errors import GlomxError

PARAMS_FILE = Path("params.yaml")
TRAIN_PREFIX = "train_"
S = TypeVar("S", bound="Section")


class ParamsError(GlomxError, ValueError):
    """params.yaml is missing, malformed, or has an unknown, missing or ill-typed key."""


class Section(BaseModel):
    """A frozen params section that refuses keys it does not know."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        return _refuse_unknown(cls, data)


def _refuse_unknown(cls: type[BaseModel], data: Any) -> Any:
    if isinstance(data, Mapping):
        for key in data:
            if key not in cls.model_fields:
                valid = [f"{TRAIN_PREFIX}*" if k == "train" else k for k in cls.model_fields]
                raise PydanticCustomError(
                    "unknown_key", "unknown key {key}", {"key": str(key), "valid": ", ".join(valid)}
                )
    return data


def _message(err: ValidationError, where: str) -> str:
    """The first error of ``err`` as ``<where>.<key> <what>, got <value>``."""
    e = err.errors()[0]
    # a union's member ("literal['auto']", "float") is not a key
    parts = [str(p) for p in (where, *e["loc"]) if str(p) and "[" not in str(p)]
    parts = parts if len(parts) < 2 or parts[-1] not in ("float", "int", "str") else parts[:-1]
    if parts[:1] == ["train"] and len(parts) > 1:  # Params gathers train_<family> under train
        parts = [f"{TRAIN_PREFIX}{parts[1]}", *parts[2:]]
    loc = ".".join(parts)
    if e["type"] == "unknown_key":
        ctx = e.get("ctx") or {}
        key = f"{loc}.{ctx['key']}" if loc else ctx["key"]
        return f"{key} is not a known key; valid: {ctx['valid']}"
    if e["type"] == "missing":
        return f"{loc} is missing; add it (see the comments in params.yaml)"
    what = e["msg"].removeprefix("Value error, ").removeprefix("Input should be")
    what = f"must be{what}" if e["msg"].startswith("Input should be") else what
    return f"{loc} {what}, got {e['input']!r}"


def parse(cls: type[S], data: Any, where: str, source: str = "params.yaml") -> S:
    """``data`` (from ``source``) as ``cls``; a :class:`ParamsError` naming the key's full
    path (``where`` and below) if it does not fit."""
    try:
        return cls.model_validate({} if data is None else data)
    except ValidationError as err:
        raise ParamsError(f"{source}: {_message(err, where)}") from None


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


class Choose(Section):
    families: list[str] = Field(min_length=1)


class Threshold(Section):
    tune: bool = False  # true: each fold model's threshold maximises `metric` on inner slides
    metric: Literal["accuracy", "balanced_accuracy", "precision", "recall", "specificity", "f1"] = (
        "balanced_accuracy"
    )


class TrainSection(Section):
    """A ``train_<family>`` section; ``model`` and ``fit`` are typed by the family itself."""

    model: dict[str, Any] = {}
    fit: dict[str, Any] = {}
    class_weight: Literal["none", "balanced"] = "none"
    stain: Literal["none", "macenko", "reinhard"] = "none"
    threshold: Threshold = Threshold()


class Promotion(Section):
    metric: Literal["balanced_accuracy", "roc_auc", "recall", "specificity"]  # shown in cv.json
    margin: float = Field(ge=0)


class Evaluate(Section):
    families: list[str] = Field(min_length=1)
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
    keras_fit: dict[str, Any] = {}
    evaluate: Evaluate | None = None
    train: dict[str, TrainSection] = {}  # family -> its ``train_<family>`` section

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        """``train_<family>: …`` keys gathered under ``train``; any other unknown key refused."""
        if not isinstance(data, Mapping) or "train" in data:
            return _refuse_unknown(cls, data)
        train = {k.removeprefix(TRAIN_PREFIX): v for k, v in data.items() if _is_train(k)}
        rest = {k: v for k, v in data.items() if not _is_train(k)}
        return _refuse_unknown(cls, rest) | {"train": train}

    def need(self, name: str) -> Any:
        """Section ``name``, or a :class:`ParamsError` saying the file lacks it."""
        if _is_train(name):
            value = self.train.get(name.removeprefix(TRAIN_PREFIX))
        else:
            value = getattr(self, name, None)
        if value is None:
            raise ParamsError(f"params.yaml has no '{name}' section; this stage needs it")
        return value


def _is_train(key: Any) -> bool:
    return isinstance(key, str) and key.startswith(TRAIN_PREFIX)


def read(path: str | Path = PARAMS_FILE) -> dict[str, Any]:
    """The params file as plain YAML (for provenance and the few readers of one raw key)."""
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
    """The params file, typed and validated; the families' own ``model``/``fit`` parts are
    checked by :func:`glomx.models.family_section` at the stage that trains them."""
    return parse(Params, read(path), "")


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}``, for logging nested params as flat keys."""
    flat: dict[str, Any] = {}
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
