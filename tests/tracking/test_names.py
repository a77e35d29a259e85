"""The tag names in :mod:`glomx.tracking.names` are what registries already hold: a new spelling
would hide every existing version's tags from the code that reads them."""

from __future__ import annotations

from glomx.cli import build_parser
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


def test_run_tag_and_artifact_names_are_those_runs_already_hold() -> None:
    written = (
        names.GIT_COMMIT_TAG, names.KERAS_BACKEND_TAG, names.MEMBER_PREFIX,
        names.EVALUATED_VERSION, names.OOF_DIR, names.TEST_TABLE, names.CALIBRATION_REPORT,
    )  # fmt: skip
    assert written == (
        "git.commit", "keras.backend", "member.", "evaluated.version", "cv",
        "test_metrics.json", "calibration.json",
    )  # fmt: skip


def test_every_model_option_names_the_default_model_in_its_help() -> None:
    """The commands resolve a missing --model to DEFAULT_MODEL at run time (importing MLflow
    only then), so their help spells it out: it must spell the same."""
    (commands,) = [a.choices for a in build_parser()._actions if a.dest == "command"]
    helps = {
        name: action.help
        for name, sub in commands.items()
        for action in sub._actions
        if "--model" in action.option_strings
    }
    assert set(helps) == {"predict", "calibrate", "serve"}
    assert all(f"default: {names.DEFAULT_MODEL})" in str(h) for h in helps.values()), helps
