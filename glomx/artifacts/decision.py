"""Choose's decision: which candidate evaluate promotes, and why. Written by choose, read by
evaluate and the bench, in one typed shape instead of a dict each side spells by key."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from glomx.artifacts.layout import Layout
from glomx.evaluation.report import strict
from glomx.evaluation.selection import ENSEMBLE, Selection
from glomx.files import write_json
from glomx.models.base import META_FILE


@dataclass(frozen=True)
class Decision:
    """The rule's outcome on the out-of-fold predictions (:class:`Selection` without its
    arrays), and the ensemble's registry version when the candidate is the ensemble."""

    rule: str
    ranking: list[dict[str, Any]]  # best first: family and its pooled metrics with intervals
    differences: dict[str, dict[str, Any]]  # other family -> best minus it, with interval
    tied: list[str]
    candidate: str  # a family, or ENSEMBLE
    reason: str
    ensemble: dict[str, Any]  # the ensemble's OOF metrics when it is the candidate, else {}
    ensemble_version: str | None = None

    @classmethod
    def of(cls, selection: Selection, ensemble_version: str | None) -> Decision:
        return cls(**selection.as_dict(), ensemble_version=ensemble_version)

    def write(self, path: Path) -> None:
        write_json(path, strict(asdict(self)))

    @classmethod
    def read(cls, path: Path) -> Decision:
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found; run the choose stage (`dvc repro choose`)")
        return cls(**json.loads(path.read_text()))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def model_dir(self, layout: Layout) -> Path:
        """The saved model folder of the candidate: a family's bag, or choose's ensemble."""
        directory = layout.ensemble if self.candidate == ENSEMBLE else layout.model(self.candidate)
        if not (directory / META_FILE).is_file():
            raise FileNotFoundError(f"{directory} holds no model; rerun `dvc repro choose`")
        return directory
