"""Stage runs: the MLflow run of one DVC stage execution, the runs nested under it (here or in a
Ray worker elsewhere), and the closing of runs whose process was killed.

:func:`stage_run` opens the run in the store of :mod:`glomx.tracking.store`, tagged by
:mod:`glomx.tracking.provenance`. A run logs; registering a model from it is
:func:`glomx.tracking.registry.register`, a layer above.
"""

from __future__ import annotations

import logging
import os
import socket
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import numpy as np
from mlflow import MlflowClient
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.types import Schema, TensorSpec

from glomx.config import file_hash, flatten
from glomx.data.store import INDEX, MANIFEST, ArrayStore
from glomx.tracking.names import (
    HOST_TAG,
    KERAS_BACKEND_TAG,
    NOTE_TAG,
    PID_TAG,
    REGISTERED_MODEL,
    STAGE_TAG,
)
from glomx.tracking.provenance import keras_backend, provenance_tags
from glomx.tracking.store import (
    TrackingError,
    connect,
    experiment_id,
    lock_explained,
    tracking_uri,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)


def _scalar(value: Any) -> str:
    return "null" if value is None else str(value)


def _model_id(version: str) -> str | None:
    """The MLflow 3 logged model behind a registered version of :data:`REGISTERED_MODEL`."""
    mv = MlflowClient().get_model_version(REGISTERED_MODEL, version)
    if mv.model_id:
        return str(mv.model_id)
    source = mv.source or ""
    return source.removeprefix("models:/") if source.startswith("models:/m-") else None


@dataclass
class StageRun:
    """The MLflow run of one stage execution; use inside :func:`stage_run`."""

    run_id: str
    stage: str
    data_kind: str
    experiment_id: str
    tags: dict[str, str] = field(default_factory=dict)  # provenance, inherited by children
    _step: int = 0
    _datasets: dict[str, MetaDataset] = field(default_factory=dict)  # by context

    def require_active(self) -> None:
        """Refuse to log outside this run's block (MLflow would log to another run)."""
        run = mlflow.active_run()
        if run is None or run.info.run_id != self.run_id:
            raise TrackingError(f"run {self.run_id} is not active; log inside `with stage_run()`")

    def log_params(self, params: dict[str, Any]) -> None:
        """Nested params, flattened to ``a.b.c`` keys."""
        self.require_active()
        mlflow.log_params({k: _scalar(v) for k, v in flatten(params).items()})

    def set_tags(self, tags: dict[str, str]) -> None:
        self.require_active()
        mlflow.set_tags(tags)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.require_active()
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    def log_selected(self, metrics: dict[str, float]) -> None:
        """The scores of the model a training run keeps, as ``selected/<name>``: set apart
        from the per-epoch curves ``epoch/<name>`` of every epoch fitted."""
        self.log_metrics({f"selected/{k}": v for k, v in metrics.items()})

    def log_scores(self, metrics: dict[str, float], version: str | None, context: str) -> None:
        """Scores of registered ``version`` on the dataset this run logged under ``context``:
        linked to the version's logged model and that dataset, so they also show on the
        model's page of the MLflow UI (and the model as an input of this run)."""
        self.require_active()
        dataset = self._datasets.get(context)
        if dataset is None:
            raise TrackingError(f"run {self.run_id} logged no dataset as {context!r}")
        model_id = _model_id(version) if version else None
        values = {k: float(v) for k, v in metrics.items()}
        mlflow.log_metrics(values, model_id=model_id, dataset=dataset)

    def log_epoch(self, logs: dict[str, Any]) -> None:
        """One epoch's metrics as ``epoch/<name>`` at the next step (steps count on across
        fit phases); :meth:`log_selected` names the kept model's scores apart."""
        numeric = {f"epoch/{k}": float(v) for k, v in logs.items() if np.ndim(v) == 0}
        self.log_metrics(numeric, step=self._step)
        self._step += 1

    def log_text(self, text: str, file: str) -> None:
        self.require_active()
        mlflow.log_text(text, file)

    def log_dict(self, data: dict[str, Any], file: str) -> None:
        self.require_active()
        mlflow.log_dict(data, file)

    def log_figure(self, fig: Figure, file: str) -> None:
        self.require_active()
        mlflow.log_figure(fig, file)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.require_active()
        mlflow.log_artifact(str(path), artifact_path)

    def log_table(self, rows: list[dict[str, Any]], file: str) -> None:
        """Rows of one table as an MLflow table artifact (JSON; the UI shows it as a table)."""
        import pandas as pd  # an MLflow dependency; only tables need it

        self.require_active()
        mlflow.log_table(pd.DataFrame(rows), file)

    def set_note(self, markdown: str) -> None:
        """The run's description in the MLflow UI (markdown; links from :func:`run_link` and
        :func:`version_link` work there)."""
        self.set_tags({NOTE_TAG: markdown})

    def ref(self) -> RunRef:
        """What a process elsewhere (a Ray worker) needs to nest a run under this one."""
        return RunRef(
            mlflow.get_tracking_uri(),
            self.experiment_id,
            self.run_id,
            self.stage,
            self.data_kind,
            dict(self.tags),
        )

    @contextmanager
    def child(self, name: str, tags: dict[str, str]) -> Iterator[StageRun]:
        """A nested run under this one, with this run's provenance tags plus ``tags``."""
        self.require_active()
        merged = {**self.tags, **tags}
        with mlflow.start_run(
            experiment_id=self.experiment_id, run_name=name, nested=True, tags=merged
        ) as active:
            yield StageRun(
                active.info.run_id, self.stage, self.data_kind, self.experiment_id, merged
            )

    def log_dataset(self, store: ArrayStore, context: str) -> None:
        """The store as a metadata-only dataset (path, digest, shape); pixels are not read."""
        self.require_active()
        digest = file_hash(store.path / MANIFEST)[:8] + file_hash(store.path / INDEX)[:8]
        schema = Schema(
            [
                TensorSpec(np.dtype(np.uint8), (-1, *store.image_shape), "image"),
                TensorSpec(np.dtype(np.uint8), (-1,), "label"),
            ]
        )
        with warnings.catch_warnings():  # two registered local sources, the same class
            warnings.simplefilter("ignore", UserWarning)
            source = resolve_dataset_source(str(store.path.resolve()))
        # MLflow leaves Dataset.profile abstract in MetaDataset; Dataset is no ABC, so it builds
        dataset = MetaDataset(source, name=store.path.name, digest=digest, schema=schema)  # type: ignore[abstract]
        counts = store.manifest.get("class_counts", {})
        tags = {
            "images": str(len(store)),
            "class_0": str(counts.get("0", "")),
            "class_1": str(counts.get("1", "")),
            "slides": str(store.manifest.get("slides", "")),
            "source_hash": str(store.manifest.get("source_hash", "")),
        }
        mlflow.log_input(dataset, context=context, tags=tags)
        self._datasets[context] = dataset


@dataclass(frozen=True)
class RunRef:
    """A stage run as plain values, picklable for another process or machine."""

    uri: str
    experiment_id: str
    run_id: str
    stage: str
    data_kind: str
    tags: dict[str, str]


@contextmanager
def nested_run(parent: RunRef, name: str, tags: dict[str, str]) -> Iterator[StageRun]:
    """A run nested under ``parent`` from any process (a Ray trial on this machine or another),
    on the parent's tracking URI, carrying its provenance and this process's host and pid (so
    that a killed trial's run is closed like a killed stage's)."""
    os.environ["MLFLOW_TRACKING_URI"] = parent.uri
    with lock_explained(parent.uri):
        connect()
        process = {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}
        merged = {**parent.tags, **process, **tags, "mlflow.parentRunId": parent.run_id}
        with mlflow.start_run(
            experiment_id=parent.experiment_id, run_name=name, tags=merged
        ) as active:
            yield StageRun(
                active.info.run_id, parent.stage, parent.data_kind, parent.experiment_id, merged
            )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def close_stale_runs(client: MlflowClient, exp_id: str) -> list[str]:
    """Mark every stage's (and fold trial's) runs that are still RUNNING but whose process on
    this host is gone (killed with SIGKILL, out of memory, power cut) as KILLED; returns their
    ids. Any stage closes them, not only the killed one's next run: DVC may restore that stage
    from its cache without running any code. Runs of live processes (a parallel ``dvc exp``
    worker, this process) and of other hosts are left alone."""
    host = socket.gethostname()
    query = "attributes.status = 'RUNNING'"
    closed = []
    for run in client.search_runs([exp_id], query):
        tags = run.data.tags
        pid = tags.get(PID_TAG, "")
        if STAGE_TAG not in tags or tags.get(HOST_TAG) != host:
            continue
        if not pid.isdigit() or _alive(int(pid)):
            continue
        note = f"process {pid} on {host} ended without closing this run; marked KILLED"
        client.set_tag(run.info.run_id, "glomx.closed", note)
        client.set_terminated(run.info.run_id, "KILLED")
        closed.append(run.info.run_id)
    return closed


@contextmanager
def stage_run(
    stage: str, params: dict[str, Any], data_kind: str, root: str | Path | None = None
) -> Iterator[StageRun]:
    """One MLflow run named after ``stage``, tagged with provenance, ``params`` logged.

    The run ends FAILED if the block raises, KILLED if it is stopped (SIGTERM's
    ``SystemExit``, Ctrl-C). Raises :class:`TrackingError` within seconds when the tracking
    server is unreachable, and one saying why when a SQLite store is locked.
    """
    with lock_explained(tracking_uri(root)):
        uri = connect(root)
        exp = experiment_id(uri)
        for stale in close_stale_runs(MlflowClient(uri), exp):
            log.warning(
                "%s: run %s was left RUNNING by a killed process; marked KILLED", stage, stale
            )
        process = {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}
        tags = {**provenance_tags(stage, data_kind), **process}
        with mlflow.start_run(experiment_id=exp, run_name=stage, tags=tags) as active:
            run = StageRun(active.info.run_id, stage, data_kind, exp, tags)
            run.log_params(params)
            try:
                yield run
            except (SystemExit, KeyboardInterrupt):
                log.warning("%s: stopped; run %s marked KILLED", stage, run.run_id)
                mlflow.end_run("KILLED")
                raise
            if KERAS_BACKEND_TAG not in tags and (backend := keras_backend()):
                run.set_tags({KERAS_BACKEND_TAG: backend})  # Keras was loaded inside the block
