"""The one door to MLflow: tracking URI, experiment, provenance tags, stage runs, model logging.

Only this package imports ``mlflow``. :mod:`glomx.tracking.pyfunc` (the served model) is
imported on demand, so opening a run does not load the model layer.
"""

from glomx.tracking.runs import (
    EXPERIMENT,
    REGISTERED_MODEL,
    StageRun,
    TrackingError,
    connect,
    experiment_id,
    provenance_tags,
    stage_run,
    tracking_uri,
)
from glomx.tracking.runs import _lock_explained as lock_explained  # the stages' own, for the CLI

__all__ = [
    "EXPERIMENT",
    "REGISTERED_MODEL",
    "StageRun",
    "TrackingError",
    "connect",
    "experiment_id",
    "lock_explained",
    "provenance_tags",
    "stage_run",
    "tracking_uri",
]
