"""Reading ``params.yaml``: the one place where stages get their settings."""

from __future__ import annotations

import hashlib
from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

import yaml

from glomx.errors import GlomxError

PARAMS_FILE = Path("params.yaml")
T = TypeVar("T")


class ParamsError(GlomxError, ValueError):
    """params.yaml is missing, malformed or lacks a required key."""


def load_params(path: str | Path = PARAMS_FILE) -> dict[str, Any]:
    """The whole params file as a nested dict."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path} not found; run stages from the repository root")
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise ParamsError(f"{path} must hold a mapping of sections, got {type(data).__name__}")
    return data


def section(name: str, path: str | Path = PARAMS_FILE) -> dict[str, Any]:
    """One stage's section of the params file."""
    params = load_params(path)
    if name not in params:
        raise ParamsError(f"{path} has no '{name}' section; known: {', '.join(params)}")
    return params[name]


def flatten(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}``, for logging nested params as flat keys."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def file_hash(path: str | Path) -> str:
    """md5 of a file's bytes (params file, data.dvc), for provenance tags."""
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def dataclass_from(cls: type[T], params: dict[str, Any] | None, where: str) -> T:
    """A config dataclass from a params mapping; unknown keys are named in the error."""
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(params or {}) - known)
    if unknown:
        raise ParamsError(f"{where} has unknown key(s) {unknown}; known: {sorted(known)}")
    return cls(**(params or {}))
