"""Where every stage's inputs and outputs live, derived once from ``paths:`` so that a stage
asks for "the split file" or "cnn's out-of-fold table" rather than joining folder names."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from glomx.config import Paths
from glomx.data.images import Preprocessing
from glomx.data.store import ArrayStore
from glomx.evaluation.selection import ENSEMBLE

SPLIT_FILE = "split.csv"  # prepare's slide → split and fold table
DECISION_FILE = "decision.json"  # choose's decision, read by evaluate


@dataclass(frozen=True)
class Layout:
    """The files of one pipeline, from its ``paths:`` section."""

    paths: Paths

    def prepared(self, split: str) -> Path:
        """Prepare's array store of ``split`` (``train``: every cross-validated slide)."""
        return Path(self.paths.prepared) / split

    @property
    def split_csv(self) -> Path:
        return Path(self.paths.prepared) / SPLIT_FILE

    @property
    def augmented(self) -> Path:
        return Path(self.paths.augmented)

    @property
    def balanced(self) -> Path:
        return Path(self.paths.balanced)

    def model(self, family: str) -> Path:
        """The saved bag of ``family``'s fold models."""
        return Path(self.paths.models) / family

    def oof(self, family: str) -> Path:
        """``family``'s out-of-fold predictions."""
        return Path(self.paths.cv) / f"{family}.csv"

    def metrics(self, name: str) -> Path:
        return Path(self.paths.metrics) / f"{name}.json"

    def plots(self, name: str) -> Path:
        return Path(self.paths.plots) / name

    @property
    def reports(self) -> Path:
        return Path(self.paths.reports)

    @property
    def selection(self) -> Path:
        return Path(self.paths.selection)

    @property
    def decision(self) -> Path:
        return self.selection / DECISION_FILE

    @property
    def ensemble(self) -> Path:
        return self.selection / ENSEMBLE

    def preprocessing(self) -> Preprocessing:
        """The image homogenisation prepare recorded in the cross-validation store."""
        store = ArrayStore(self.prepared("train"))
        image = store.params.get("image", {})
        try:
            return Preprocessing(*(image[k] for k in ("size", "channels", "method", "fill")))
        except KeyError as err:
            raise ValueError(
                f"{store.path}/manifest.json lacks params.image.{err.args[0]}; "
                "rerun `dvc repro prepare`"
            ) from None
