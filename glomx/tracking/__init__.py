"""The only gateway to MLflow. Only this package imports ``mlflow``.

A stack, each module importing only those above it in this list:

- :mod:`~glomx.tracking.names`: what glomx calls things in MLflow (experiment, model, tags);
- :mod:`~glomx.tracking.store`: tracking URI, connection, experiment, the store's errors;
- :mod:`~glomx.tracking.provenance`: git, DVC and params tags; links into the MLflow UI;
- :mod:`~glomx.tracking.runs`: stage runs, nested runs (Ray workers), killed runs closed;
- :mod:`~glomx.tracking.pyfunc` (and ``served.py``, MLflow's entry point): the served model;
- :mod:`~glomx.tracking.http_guard`: MLflow's scoring app behind limits (``glomx serve``);
- :mod:`~glomx.tracking.registry`: registering, finding and promoting versions.

This package exports the run side only: opening a run does not load the model layer, which
``pyfunc`` and ``registry`` import (use them as ``glomx.tracking.registry``).
"""

from glomx.tracking.names import EXPERIMENT, REGISTERED_MODEL
from glomx.tracking.provenance import provenance_tags, run_link, ui_url, version_link
from glomx.tracking.runs import RunRef, StageRun, nested_run, stage_run
from glomx.tracking.store import (
    TrackingError,
    connect,
    experiment_id,
    lock_explained,
    tracking_uri,
)

__all__ = [
    "EXPERIMENT",
    "REGISTERED_MODEL",
    "RunRef",
    "StageRun",
    "TrackingError",
    "connect",
    "experiment_id",
    "lock_explained",
    "nested_run",
    "provenance_tags",
    "run_link",
    "stage_run",
    "tracking_uri",
    "ui_url",
    "version_link",
]
