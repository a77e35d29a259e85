"""A stage's door: ``params.yaml`` parsed once into typed :class:`~glomx.config.Params`, so a
misspelled key anywhere stops every stage with one line naming it, before any work starts.

The families' own ``model:`` and ``fit:`` parts are typed in the base layer
(:mod:`glomx.family_params`), so they are checked here too without loading TensorFlow."""

from __future__ import annotations

from pathlib import Path

from glomx.config import PARAMS_FILE, Params, ParamsError, load
from glomx.models import FAMILIES


def load_config(path: str | Path = PARAMS_FILE) -> Params:
    """The whole params file, typed and checked."""
    params = load(path)
    for name in ("choose", "evaluate"):
        section = getattr(params, name)
        unknown = [f for f in (section.families if section else []) if f not in FAMILIES]
        if unknown:
            raise ParamsError(
                f"params.yaml: {name}.families names an unknown family {unknown[0]!r}; "
                f"known: {', '.join(FAMILIES)}"
            )
    return params
