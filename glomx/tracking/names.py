"""The names glomx gives things in MLflow, in one place: what a stage writes under one name is
what the registry, ``glomx predict`` and the tests read back under the same one."""

import re

from glomx.errors import UsageError

EXPERIMENT = "glomx"  # the one experiment every stage run goes to
REGISTERED_MODEL = "glomx"  # the one registered model every training run adds a version to
CHAMPION = "champion"  # alias of the model everyone uses
PREVIOUS = "previous"  # alias of the champion the last promotion replaced
DEFAULT_MODEL = f"models:/{REGISTERED_MODEL}@{CHAMPION}"  # what predict, calibrate, serve use
LAB_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")  # what an alias can hold after lab-

STAGE_TAG = "glomx.stage"  # run tag: the DVC stage (marks a run as glomx's own)
HOST_TAG, PID_TAG = "glomx.host", "glomx.pid"  # run tags: the process that owns a run
NOTE_TAG = "mlflow.note.content"  # the run/experiment description the MLflow UI shows
NOTE_DIGEST_TAG = "glomx.note_sha256"  # experiment tag: digest of the description glomx wrote
DIGEST_TAG = "glomx.files_sha256"  # logged-model tag: the saved model folder's files digest
REASON_TAG = "promotion.reason"  # version tag: why promotion did what it did

# version tags of every registered version (registry.register writes them)
FAMILY_TAG = "family"  # the model family (``ensemble`` for the mean of tied families)
VERSION_STAGE_TAG = "stage"  # the DVC stage that registered it
DATA_KIND_TAG = "data_kind"  # real or synthetic
THRESHOLD_TAG = "threshold"  # the model's own threshold, set in training
MEMBERS_TAG = "members"  # an ensemble's: its families and their versions (written by choose)

# version tags of a lab's calibrated copy (written by glomx calibrate; read back by
# glomx champion --lab, the model card and the slide report)
LAB_TAG = "lab"  # the lab's name
CALIBRATED_FROM = "calibrated_from"  # the version whose model files it copies
CAL_PATCHES = "calibration.n_patches"
CAL_SLIDES = "calibration.n_slides"
CAL_SCLEROTIC = "calibration.n_sclerotic"
CAL_NON_SCLEROTIC = "calibration.n_non_sclerotic"
CAL_THRESHOLD = "calibration.threshold"  # the lab's threshold
CAL_TTA = "calibration.tta"  # "true" where the threshold was chosen on TTA scores
CAL_SENSITIVITY = "calibration.sensitivity"
CAL_SPECIFICITY = "calibration.specificity"
CAL_BALANCED_ACCURACY = "calibration.balanced_accuracy"
CAL_ROC_AUC = "calibration.roc_auc"
CAL_FIGURES = {  # the lab's figures at its threshold, as glomx champion --lab lists them
    "balanced_accuracy": CAL_BALANCED_ACCURACY,
    "sensitivity": CAL_SENSITIVITY,
    "specificity": CAL_SPECIFICITY,
    "roc_auc": CAL_ROC_AUC,
}
CALIBRATION_REPORT = "calibration.json"  # artifact of a calibration run: the full report

GIT_COMMIT_TAG = "git.commit"  # run tag: the commit the run's code came from
KERAS_BACKEND_TAG = "keras.backend"  # run tag: the Keras backend of a run that loaded Keras
MEMBER_PREFIX = "member."  # choose run tags member.<family>: the version of each tied family
EVALUATED_VERSION = "evaluated.version"  # tag of an evaluate child run: the version it scored

ARTIFACT = "model"  # key of the saved model directory among the pyfunc's artifacts
OOF_DIR = "cv"  # artifact folder of a training run: <family>.csv, its out-of-fold predictions
TEST_TABLE = "test_metrics.json"  # artifact of an evaluate child run: the test intervals
CV_CONTEXT = "cv"  # dataset context under which training runs log the cross-validated store
CV_PREFIX = "cv_"  # version tags of the pooled out-of-fold metrics


def lab_alias(lab: str) -> str:
    """``lab-<lab>``, the registry alias of a lab's calibrated version; the one check of a lab
    name, so that ``glomx champion --lab`` never advises a name ``glomx calibrate`` refuses."""
    if not LAB_PATTERN.fullmatch(lab):
        raise UsageError(
            f"lab name {lab!r} is not usable in a registry alias: use 1-63 letters, digits, "
            "'-' or '_', starting with a letter or digit (e.g. --lab leiden)"
        )
    return f"lab-{lab}"
