"""Where MLflow runs go, and the errors a person reads when that store cannot be used.

By default runs go to an embedded SQLite store under ``<root>/mlruns/`` (artifacts in
``mlruns/artifacts``), with ``root`` the DVC repository root (``DVC_ROOT``, which DVC points at
the parent repository even for ``dvc exp run --temp`` and queued experiments) or the current
directory. ``MLFLOW_TRACKING_URI`` overrides it, e.g. with a shared tracking server.
"""

from __future__ import annotations

import hashlib
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from glomx.errors import GlomxError
from glomx.tracking.names import EXPERIMENT, NOTE_DIGEST_TAG, NOTE_TAG

PROBE_TIMEOUT_S = 3.0
# MLflow 3's experiment type: model training, not the GenAI (traces) view
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
EXPERIMENT_NOTE = """\
Kidney glomeruli patches (PAS stain): globally sclerotic (1) or not (0). One run per DVC stage
execution, tagged `glomx.stage` and with its provenance (`git.*`, `data.*`, `params.md5`).

- `train@<family>` runs cross-validate a family over slide-grouped folds of the non-test
  slides: one child run per fold (`epoch/<metric>` per-epoch curves; early stopping and
  threshold on an inner split of the training folds; `oof_<metric>` on the fold's held-out
  slides). `selected/cv_<metric>` are the pooled out-of-fold scores of the bag of fold models
  the run registers as a version of model `glomx`.
- The `choose` run compares the families on their out-of-fold predictions (paired slide
  bootstrap): the champion is the best family, or the `ensemble`, the mean of the families
  the data cannot tell apart.
- `evaluate` runs, the only readers of the test split: one child run per evaluated model with
  the same `test_<metric>` names (95 % slide-bootstrap intervals in `test_metrics.json`),
  linked to the scored version and its training run. Evaluate moves alias `champion` of
  `glomx` to the chosen version; test scores never choose it.
"""
# digests of the descriptions earlier glomx releases wrote, before NOTE_DIGEST_TAG recorded them
FORMER_NOTES = {"e5d270faab5a97720911605b4da7717f061d8e8048ab40cead83d8c844eac3d5"}
SQLITE_LOCKED = (
    "MLflow store {uri} stayed locked by another process: SQLite lets one process write at a "
    "time and MLflow waits 20 s for the lock, so parallel jobs (`dvc queue start -j N`) can "
    "fail this way. Run parallel experiments against the team's tracking server: `make server`, "
    "then MLFLOW_TRACKING_URI=http://127.0.0.1:5000 (README: Working as a team)"
)

# MLflow's own retries can keep a dead server busy for minutes; keep them short.
_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
# stage output: no progress bars, no "Creating initial MLflow database tables..." chatter
_QUIET_LOGGERS = ("mlflow.store.db.utils", "alembic", "mlflow.pyfunc", "mlflow.models.model")


class TrackingError(GlomxError, RuntimeError):
    """MLflow cannot be used (unreachable server, unusable store); the message names the URI."""


class NotRegistered(GlomxError, LookupError):
    """No registry, model, version or alias of that name; the message says how to get one."""


def tracking_uri(root: str | Path | None = None) -> str:
    """``MLFLOW_TRACKING_URI``, else ``sqlite:///<abs root>/mlruns/mlflow.db``."""
    if uri := os.environ.get("MLFLOW_TRACKING_URI"):
        return uri
    base = Path(root or os.environ.get("DVC_ROOT") or Path.cwd()).resolve()
    return f"sqlite:///{base / 'mlruns' / 'mlflow.db'}"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI; None for any other store."""
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
    elif db := sqlite_path(uri):
        db.parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    return uri


def existing_client() -> MlflowClient:
    """A client for reading only: a local SQLite store that does not exist is not created
    (:class:`NotRegistered` saying how to get one)."""
    uri = tracking_uri()
    db = sqlite_path(uri)
    if db is not None and not db.is_file():
        raise NotRegistered(
            f"no MLflow registry at {uri}; run the pipeline (`dvc repro`) here, set "
            "MLFLOW_TRACKING_URI, or pass a saved model folder"
        )
    connect()
    return MlflowClient()


def experiment_id(uri: str) -> str:
    """The project experiment's id, created (with its artifact location) on first use."""
    client = MlflowClient(uri)
    try:
        exp = client.get_experiment_by_name(EXPERIMENT)
        if exp is None:
            db = sqlite_path(uri)
            location = (db.parent / "artifacts").as_uri() if db else None
            tags = {
                EXPERIMENT_KIND_TAG: EXPERIMENT_KIND,
                NOTE_TAG: EXPERIMENT_NOTE,
                NOTE_DIGEST_TAG: _digest(EXPERIMENT_NOTE),
            }
            try:
                return client.create_experiment(EXPERIMENT, location, tags)
            except MlflowException:  # created meanwhile by a parallel run
                exp = client.get_experiment_by_name(EXPERIMENT)
                if exp is None:
                    raise
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        _describe(client, exp.experiment_id, exp.tags)
        return exp.experiment_id
    except MlflowException as err:
        raise TrackingError(f"MLflow store {uri} cannot be used: {err.message}") from err


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _describe(client: MlflowClient, exp_id: str, tags: dict[str, str]) -> None:
    """Give the experiment its kind, and its description where it has none or holds one an
    earlier glomx wrote (brought up to date); a description someone wrote in the UI is kept."""
    if not tags.get(EXPERIMENT_KIND_TAG):
        client.set_experiment_tag(exp_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    note = tags.get(NOTE_TAG, "")
    ours = not note or _digest(note) in {tags.get(NOTE_DIGEST_TAG), *FORMER_NOTES}
    if ours and note != EXPERIMENT_NOTE:
        client.set_experiment_tag(exp_id, NOTE_TAG, EXPERIMENT_NOTE)
        client.set_experiment_tag(exp_id, NOTE_DIGEST_TAG, _digest(EXPERIMENT_NOTE))


@contextmanager
def lock_explained(uri: str) -> Iterator[None]:
    """SQLite's ``database is locked`` as a :class:`TrackingError` that says why and what to do."""
    try:
        yield
    except Exception as err:
        if sqlite_path(uri) is None or "database is locked" not in str(err):
            raise
        raise TrackingError(SQLITE_LOCKED.format(uri=uri)) from err
