"""The tag names in :mod:`glomx.tracking.names` are what registries already hold: a new spelling
would hide every existing version's tags from the code that reads them."""

from __future__ import annotations

from glomx.tracking import names


def test_version_tag_names_are_those_registries_already_hold() -> None:
    written = {
        names.FAMILY_TAG, names.VERSION_STAGE_TAG, names.DATA_KIND_TAG, names.THRESHOLD_TAG,
        names.MEMBERS_TAG, names.REASON_TAG, names.LAB_TAG, names.CALIBRATED_FROM,
        *names.CAL_FIGURES.values(), names.CAL_PATCHES, names.CAL_SLIDES, names.CAL_SCLEROTIC,
        names.CAL_NON_SCLEROTIC, names.CAL_THRESHOLD, names.CAL_TTA,
    }  # fmt: skip
    assert written == {
        "family", "stage", "data_kind", "threshold", "members", "promotion.reason", "lab",
        "calibrated_from", "calibration.balanced_accuracy", "calibration.sensitivity",
        "calibration.specificity", "calibration.roc_auc", "calibration.n_patches",
        "calibration.n_slides", "calibration.n_sclerotic", "calibration.n_non_sclerotic",
        "calibration.threshold", "calibration.tta",
    }  # fmt: skip
    assert names.DEFAULT_MODEL == "models:/glomx@champion"
