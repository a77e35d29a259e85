"""Where MLflow runs go, what they are tagged with, and what a training stage logs.

By default runs go to an embedded SQLite store under ``<root>/mlruns/`` (artifacts in
``mlruns/artifacts``), with ``root`` the DVC repository root (``DVC_ROOT``, which DVC points at
the parent repository even for ``dvc exp run --temp`` and queued experiments) or the current
directory. ``MLFLOW_TRACKING_URI`` overrides it, e.g. with a shared tracking server.
"""

from __future__ import annotations

import logging
import os
import subprocess
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import mlflow
import numpy as np
import yaml
from mlflow import MlflowClient
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.exceptions import MlflowException
from mlflow.types import Schema, TensorSpec

from glomx.data.store import INDEX, MANIFEST, ArrayStore
from glomx.errors import GlomxError
from glomx.params import PARAMS_FILE, file_hash, flatten

if TYPE_CHECKING:
    from matplotlib.figure import Figure

EXPERIMENT = "glomx"
REGISTERED_MODEL = "glomx"
PROBE_TIMEOUT_S = 3.0
UNKNOWN = "unknown"

# MLflow's own retries can keep a dead server busy for minutes; keep them short.
_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
# stage output: no progress bars, no "Creating initial MLflow database tables..." chatter
_QUIET_LOGGERS = ("mlflow.store.db.utils", "alembic", "mlflow.pyfunc", "mlflow.models.model")


class TrackingError(GlomxError, RuntimeError):
    """MLflow cannot be used (unreachable server, unusable store); the message names the URI."""


def tracking_uri(root: str | Path | None = None) -> str:
    """``MLFLOW_TRACKING_URI``, else ``sqlite:///<abs root>/mlruns/mlflow.db``."""
    if uri := os.environ.get("MLFLOW_TRACKING_URI"):
        return uri
    base = Path(root or os.environ.get("DVC_ROOT") or Path.cwd()).resolve()
    return f"sqlite:///{base / 'mlruns' / 'mlflow.db'}"


def _sqlite_path(uri: str) -> Path | None:
    prefix = "sqlite:///"
    return Path(uri[len(prefix) :].split("?")[0]).resolve() if uri.startswith(prefix) else None


def _probe(uri: str) -> None:
    """Fail fast, naming the URI, when an HTTP tracking server does not answer."""
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=PROBE_TIMEOUT_S):
            pass
    except urllib.error.HTTPError:
        pass  # it answered, even if not with 200: reachable
    except (OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        raise TrackingError(
            f"MLflow tracking server {uri} is unreachable ({reason}); start it, correct "
            "MLFLOW_TRACKING_URI, or unset it to log to the local mlruns/ store"
        ) from None


def connect(root: str | Path | None = None) -> str:
    """Point MLflow at :func:`tracking_uri` after checking it can be used; returns the URI."""
    uri = tracking_uri(root)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    if urlparse(uri).scheme in ("http", "https"):
        for name, value in _HTTP_DEFAULTS.items():
            os.environ.setdefault(name, value)
        _probe(uri)
    elif db := _sqlite_path(uri):
        db.parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    return uri


def experiment_id(uri: str) -> str:
    """The project experiment's id, created (with its artifact location) on first use."""
    client = MlflowClient(uri)
    try:
        exp = client.get_experiment_by_name(EXPERIMENT)
        if exp is None:
            db = _sqlite_path(uri)
            location = (db.parent / "artifacts").as_uri() if db else None
            try:
                return client.create_experiment(EXPERIMENT, artifact_location=location)
            except MlflowException:  # created meanwhile by a parallel run
                exp = client.get_experiment_by_name(EXPERIMENT)
                if exp is None:
                    raise
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    except MlflowException as err:
        raise TrackingError(f"MLflow store {uri} cannot be used: {err.message}") from err


def _git(workdir: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args], cwd=workdir, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _dvc_md5(path: Path) -> str:
    """The data hash recorded in a ``.dvc`` file (first output's md5)."""
    try:
        return str(yaml.safe_load(path.read_text())["outs"][0]["md5"])
    except (OSError, KeyError, IndexError, TypeError, yaml.YAMLError):
        return UNKNOWN


def provenance_tags(stage: str, data_kind: str, workdir: Path | None = None) -> dict[str, str]:
    """Stage, git commit and dirty flag, data and params hashes of the working directory."""
    workdir = workdir or Path.cwd()
    commit = _git(workdir, "rev-parse", "HEAD")
    status = _git(workdir, "status", "--porcelain") if commit else None
    params = workdir / PARAMS_FILE
    tags = {
        "glomx.stage": stage,
        "git.commit": commit or UNKNOWN,
        "git.dirty": UNKNOWN if status is None else str(bool(status)).lower(),
        "data.dvc_md5": _dvc_md5(workdir / "data.dvc"),
        "data.kind": data_kind,
        "params.md5": file_hash(params) if params.is_file() else UNKNOWN,
    }
    if exp := os.environ.get("DVC_EXP_NAME"):
        tags["dvc.exp"] = exp
    return tags


def _scalar(value: Any) -> str:
    return "null" if value is None else str(value)


@dataclass
class StageRun:
    """The MLflow run of one training-stage execution; use inside :func:`stage_run`."""

    run_id: str
    stage: str
    data_kind: str
    _step: int = 0

    def _active(self) -> None:
        run = mlflow.active_run()
        if run is None or run.info.run_id != self.run_id:
            raise TrackingError(f"run {self.run_id} is not active; log inside `with stage_run()`")

    def log_params(self, params: dict[str, Any]) -> None:
        """Nested params, flattened to ``a.b.c`` keys."""
        self._active()
        mlflow.log_params({k: _scalar(v) for k, v in flatten(params).items()})

    def set_tags(self, tags: dict[str, str]) -> None:
        self._active()
        mlflow.set_tags(tags)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self._active()
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    def log_epoch(self, logs: dict[str, Any]) -> None:
        """One epoch's metrics as ``epoch/<name>`` at the next step (steps count on across
        fit phases); the prefix keeps them apart from the final ``val_*`` metrics."""
        numeric = {f"epoch/{k}": float(v) for k, v in logs.items() if np.ndim(v) == 0}
        self.log_metrics(numeric, step=self._step)
        self._step += 1

    def log_history(self, history: dict[str, list[float]]) -> None:
        """A whole per-epoch history after the fact (families without live logging)."""
        epochs = max((len(v) for v in history.values()), default=0)
        for i in range(epochs):
            self.log_epoch({k: v[i] for k, v in history.items() if i < len(v)})

    def keras_callback(self) -> Any:
        """A ``keras.callbacks.Callback`` logging each epoch's metrics as it ends."""
        import keras  # lazily: the LR stage never loads TensorFlow

        run = self

        class MlflowEpochLogger(keras.callbacks.Callback):
            def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
                run.log_epoch(logs or {})

        return MlflowEpochLogger()

    def log_text(self, text: str, file: str) -> None:
        self._active()
        mlflow.log_text(text, file)

    def log_dict(self, data: dict[str, Any], file: str) -> None:
        self._active()
        mlflow.log_dict(data, file)

    def log_figure(self, fig: Figure, file: str) -> None:
        self._active()
        mlflow.log_figure(fig, file)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._active()
        mlflow.log_artifact(str(path), artifact_path)

    def log_dataset(self, store: ArrayStore, context: str) -> None:
        """The store as a metadata-only dataset (path, digest, shape); pixels are not read."""
        self._active()
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
        dataset = MetaDataset(source, name=store.path.name, digest=digest, schema=schema)
        counts = store.manifest.get("class_counts", {})
        tags = {
            "images": str(len(store)),
            "class_0": str(counts.get("0", "")),
            "class_1": str(counts.get("1", "")),
            "slides": str(store.manifest.get("slides", "")),
            "source_hash": str(store.manifest.get("source_hash", "")),
        }
        mlflow.log_input(dataset, context=context, tags=tags)

    def log_and_register(
        self,
        model_dir: str | Path,
        classifier: Any,
        input_example_images: np.ndarray,
        metrics: dict[str, float] | None = None,
    ) -> str:
        """Log the glomx pyfunc (and the family's native flavor), register a new version of
        :data:`REGISTERED_MODEL` tagged with family, stage, data kind and ``metrics``."""
        from glomx.tracking import pyfunc  # imports the model layer; keep runs.py light

        self._active()
        info = pyfunc.log_model(Path(model_dir), classifier, input_example_images)
        pyfunc.log_native_model(classifier, input_example_images)
        tags = {
            "family": classifier.meta.family,
            "stage": self.stage,
            "data_kind": self.data_kind,
            "threshold": str(classifier.meta.threshold),
            **{k: f"{v:.6g}" for k, v in (metrics or {}).items()},
        }
        version = mlflow.register_model(info.model_uri, REGISTERED_MODEL, tags=tags)
        return str(version.version)


@contextmanager
def stage_run(
    stage: str, params: dict[str, Any], data_kind: str, root: str | Path | None = None
) -> Iterator[StageRun]:
    """One MLflow run named after ``stage``, tagged with provenance, ``params`` logged.

    The run ends FAILED if the block raises. Raises :class:`TrackingError` within seconds when
    the tracking server is unreachable.
    """
    uri = connect(root)
    exp = experiment_id(uri)
    tags = provenance_tags(stage, data_kind)
    with mlflow.start_run(experiment_id=exp, run_name=stage, tags=tags) as active:
        run = StageRun(active.info.run_id, stage, data_kind)
        run.log_params(params)
        yield run
