"""What every ``params.yaml`` section is: a frozen pydantic model that refuses unknown keys and
ill-typed values with a one-line :class:`ParamsError` naming the key's full path, e.g.
``params.yaml: train_cnn.fit.epochs must be a valid integer, got 'ten'`` or
``params.yaml: prepare.split.fold is not a known key; valid: strategy, folds, ...``. So a
misspelled key can never silently fall back to a default.

Apart from :mod:`glomx.config` (the stages' sections) and :mod:`glomx.family_params` (the model
families' own), so both build on it and the file's whole type is known in the base layer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from glomx.errors import GlomxError

S = TypeVar("S", bound="Section")


class ParamsError(GlomxError, ValueError):
    """params.yaml is missing, malformed, or has an unknown, missing or ill-typed key."""


class Section(BaseModel):
    """A frozen params section that refuses keys it does not know."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: object) -> object:
        if isinstance(data, Mapping):
            for key in data:
                if key not in cls.model_fields:
                    raise PydanticCustomError(
                        "unknown_key",
                        "unknown key {key}",
                        {"key": str(key), "valid": ", ".join(cls.model_fields)},
                    )
        return data


def _message(err: ValidationError, where: str) -> str:
    """The first error of ``err`` as ``<where>.<key> <what>, got <value>``."""
    e = err.errors()[0]
    # a union's member ("literal['auto']", "float") is not a key
    parts = [str(p) for p in (where, *e["loc"]) if str(p) and "[" not in str(p)]
    parts = parts if len(parts) < 2 or parts[-1] not in ("float", "int", "str") else parts[:-1]
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


def parse(cls: type[S], data: object, where: str, source: str = "params.yaml") -> S:
    """``data`` (from ``source``) as ``cls``; a :class:`ParamsError` naming the key's full
    path (``where`` and below) if it does not fit."""
    try:
        return cls.model_validate({} if data is None else data)
    except ValidationError as err:
        raise ParamsError(f"{source}: {_message(err, where)}") from None
