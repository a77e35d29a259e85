"""glomx.json's ``extra`` as earlier versions wrote it (an untyped dict) reads into each
family's typed record and writes back byte-identical, so registered models keep loading and
new ones save the same files."""

from __future__ import annotations

import json
from typing import Any

import pytest
from family_zoo import PREPROCESSING, build

from glomx.models import FAMILIES, family_class
from glomx.models.base import ModelMeta
from glomx.models.mean import MeanModel

PARAMS = {"model": {"size": 40}, "fit": {"seed": 1}}
STAIN = {"method": "reinhard", "mean": [1.0, 2.0, 3.0], "std": [0.5, 0.5, 0.5]}
WEIGHTS = {"0": 0.75, "1": 1.5}
# family → extra as the untyped dict wrote it: keys in the order the fit set them
SAVED: dict[str, dict[str, Any]] = {
    "lr": {**PARAMS, "stain": STAIN, "best_epoch": 3, "epochs_run": 10, "class_weight": WEIGHTS},
    "cnn": {**PARAMS, "best_epoch": 1, "epochs_run": 2, "class_weight": None},
    "mobilenet": {
        **PARAMS, "weights": "imagenet", "stain": STAIN, "best_epoch": 2, "epochs_run": 4,
        "class_weight": WEIGHTS,
    },
    "resnet": {**PARAMS, "weights": "random-fallback", "best_epoch": 1, "epochs_run": 1,
               "class_weight": None},
    "probe": {
        **PARAMS, "stain": STAIN, "weights": "imagenet", "C": 0.01, "best_epoch": 1,
        "epochs_run": 5, "features": 1280, "training_rows": 48, "class_weight": WEIGHTS,
    },
}  # fmt: skip


def test_every_family_has_a_saved_layout() -> None:
    assert set(SAVED) == set(FAMILIES)


@pytest.mark.parametrize("family", sorted(SAVED))
def test_a_family_record_writes_back_the_saved_extra_byte_for_byte(family: str) -> None:
    extra = SAVED[family]
    record = family_class(family).record_class.from_json(extra)
    assert json.dumps(record.to_json(), indent=2) == json.dumps(extra, indent=2)


def test_an_unfitted_record_leaves_out_what_fitting_sets() -> None:
    record = family_class("probe").record_class.from_json({**PARAMS, "old_key": "ignored"})
    assert record.to_json() == {**PARAMS, "class_weight": None}


def test_a_bag_writes_back_its_saved_extra() -> None:
    extra = {"cv": {"folds": 2, "heldout_slides": {"0": ["s0"], "1": ["s1"]}}, "members": ["a"]}
    member = build("lr", PARAMS)
    meta = ModelMeta("lr", 40, 3, PREPROCESSING)
    bag = MeanModel.from_json(meta, extra, {"a": member})
    assert json.dumps(bag._extra()) == json.dumps(extra)
    ensemble = MeanModel.of("ensemble", {"a": member}, PREPROCESSING)
    assert ensemble.cv is None and ensemble._extra() == {"members": ["a"]}
