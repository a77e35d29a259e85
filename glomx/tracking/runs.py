"""Where MLflow runs go, what they are tagged with, and what a training stage logs.

By default runs go to an embedded SQLite store under ``<root>/mlruns/`` (artifacts in
``mlruns/artifacts``), with ``root`` the DVC repository root (``DVC_ROOT``, which DVC points at
the parent repository even for ``dvc exp run --temp`` and queued experiments) or the current
directory. ``MLFLOW_TRACKING_URI`` overrides it, e.g. with a shared tracking server.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import subprocess
import sys
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
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

from glomx.config import PARAMS_FILE, file_hash, flatten
from glomx.data.store import INDEX, MANIFEST, ArrayStore
from glomx.errors import GlomxError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

EXPERIMENT = "glomx"
REGISTERED_MODEL = "glomx"
PROBE_TIMEOUT_S = 3.0
UNKNOWN = "unknown"
NOTE_TAG = "mlflow.note.content"  # the run/experiment description the MLflow UI shows
# MLflow 3.17's UI shows every experiment in its GenAI view (traces) unless the address asks
# for "Model training"; the experiment kind tag below does not change that default.
ML_VIEW = "?workflowType=machine_learning"
# MLflow 3's experiment type: model training, not the GenAI (traces) view
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
EXPERIMENT_NOTE = """\
Kidney glomeruli patches (PAS stain): globally sclerotic (1) or not (0). One run per DVC stage
execution, tagged `glomx.stage` and with its provenance (`git.*`, `data.*`, `params.md5`).

- `train-<family>` runs: `epoch/<metric>` are per-epoch curves; `selected/<metric>` are the
  validation scores of the model the run kept (best epoch by its early-stopping monitor, at its
  decision threshold) and registered as a version of model `glomx`.
- `evaluate` runs: one child run per evaluated model with the same `test_<metric>` names
  (test split; 95 % slide-bootstrap intervals in `test_metrics.json`), linked to the scored
  version and its training run. Alias `champion` of `glomx` is chosen on validation only.
"""
MODEL_DESCRIPTION = """\
P(globally sclerotic) for a PAS-stained kidney glomerulus patch. Each version is one training
run's selected model (tag `family`; its validation scores as `val_<metric>` tags). Alias
`champion` is the version with the best validation balanced accuracy (ROC-AUC breaks ties; see
its `promotion.reason`), `previous` the champion it replaced. Test scores: the experiment's
`evaluate` runs.
"""
# a stage's outputs that git tracks besides the ones dvc.yaml declares
PIPELINE_FILES = ("dvc.lock",)
CHANGED_LIMIT = 2000  # characters of the changed-files tag
HOST_TAG, PID_TAG = "glomx.host", "glomx.pid"

log = logging.getLogger(__name__)

# MLflow's own retries can keep a dead server busy for minutes; keep them short.
_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
# stage output: no progress bars, no "Creating initial MLflow database tables..." chatter
_QUIET_LOGGERS = ("mlflow.store.db.utils", "alembic", "mlflow.pyfunc", "mlflow.models.model")


SQLITE_LOCKED = (
    "MLflow store {uri} stayed locked by another process: SQLite lets one process write at a "
    "time and MLflow waits 20 s for the lock, so parallel jobs (`dvc queue start -j N`) can "
    "fail this way. Run parallel experiments against the team's tracking server: `make server`, "
    "then MLFLOW_TRACKING_URI=http://127.0.0.1:5000 (README: Working as a team)"
)


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
            tags = {**EXPERIMENT_KIND, NOTE_TAG: EXPERIMENT_NOTE}
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


def _describe(client: MlflowClient, exp_id: str, tags: dict[str, str]) -> None:
    """Give an experiment created before these tags existed its kind and description (a
    description someone wrote in the UI is kept)."""
    for key, value in {**EXPERIMENT_KIND, NOTE_TAG: EXPERIMENT_NOTE}.items():
        if not tags.get(key):
            client.set_experiment_tag(exp_id, key, value)


def _git(workdir: Path, *args: str) -> str | None:
    """``git args`` output (unstripped: porcelain lines start with a space), None on failure."""
    try:
        done = subprocess.run(
            ["git", *args], cwd=workdir, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def _dvc_md5(path: Path) -> str:
    """The data hash recorded in a ``.dvc`` file (first output's md5)."""
    try:
        return str(yaml.safe_load(path.read_text())["outs"][0]["md5"])
    except (OSError, KeyError, IndexError, TypeError, yaml.YAMLError):
        return UNKNOWN


def _interpolate(text: str, params: dict[str, Any]) -> str:
    """``${paths.models}/lr`` → ``models/lr`` from ``params.yaml`` (DVC's templating); a
    reference it cannot resolve stays as it is."""
    flat = flatten(params)
    return re.sub(r"\$\{\s*([\w.-]+)\s*\}", lambda m: str(flat.get(m[1], m[0])), text)


def pipeline_outputs(workdir: Path) -> list[str]:
    """Paths the pipeline itself writes: ``dvc.lock`` and every stage's outs, metrics and
    plots in ``dvc.yaml`` (templated from ``params.yaml``), relative to ``workdir``."""
    try:
        stages = (yaml.safe_load((workdir / "dvc.yaml").read_text()) or {}).get("stages") or {}
        params = yaml.safe_load((workdir / PARAMS_FILE).read_text()) or {}
    except (OSError, yaml.YAMLError, AttributeError):
        return list(PIPELINE_FILES)
    entries = [
        next(iter(entry)) if isinstance(entry, dict) else entry
        for stage in stages.values()
        if isinstance(stage, dict)
        for kind in ("outs", "metrics", "plots")
        for entry in stage.get(kind) or []
    ]
    paths = {_interpolate(str(e), params).strip("/").removeprefix("./") for e in entries}
    return [*PIPELINE_FILES, *sorted(paths)]


def _changed_paths(porcelain: str) -> list[str]:
    """Paths from ``git status --porcelain -z`` (a rename's old path is skipped)."""
    entries, paths = porcelain.split("\0"), []
    i = 0
    while i < len(entries):
        entry = entries[i]
        if len(entry) > 3:
            paths.append(entry[3:])
            if entry[0] in "RC":
                i += 1
        i += 1
    return paths


def _is_under(path: str, outputs: list[str]) -> bool:
    return any(path == o or path.startswith(o + "/") for o in outputs)


def _git_tags(workdir: Path) -> dict[str, str]:
    """``git.commit``; ``git.dirty``: whether files other than the pipeline's own outputs
    (:func:`pipeline_outputs`, which every ``dvc repro`` rewrites) differ from that commit;
    ``git.changed``: those files, when there are any."""
    commit = (_git(workdir, "rev-parse", "HEAD") or "").strip()
    status = _git(workdir, "status", "--porcelain", "-z", "--untracked-files=all")
    if not commit or status is None:
        return {"git.commit": commit or UNKNOWN, "git.dirty": UNKNOWN}
    prefix = (_git(workdir, "rev-parse", "--show-prefix") or "").strip()  # workdir in the repo
    outputs = [prefix + o for o in pipeline_outputs(workdir)]
    changed = sorted(p for p in _changed_paths(status) if not _is_under(p, outputs))
    tags = {"git.commit": commit, "git.dirty": str(bool(changed)).lower()}
    if changed:
        listing = ", ".join(changed)
        if len(listing) > CHANGED_LIMIT:
            shown = listing[:CHANGED_LIMIT].rsplit(", ", 1)[0]
            listing = f"{shown}, ... ({len(changed)} files)"
        tags["git.changed"] = listing
    return tags


def keras_backend() -> str | None:
    """The Keras backend of this process when it has loaded Keras (never imports it)."""
    keras = sys.modules.get("keras")
    return keras.backend.backend() if keras is not None else None


def provenance_tags(stage: str, data_kind: str, workdir: Path | None = None) -> dict[str, str]:
    """Stage, git commit and dirty flag (:func:`_git_tags`), data and params hashes of the
    working directory, and the Keras backend when Keras is loaded."""
    workdir = workdir or Path.cwd()
    params = workdir / PARAMS_FILE
    tags = {
        "glomx.stage": stage,
        **_git_tags(workdir),
        "data.dvc_md5": _dvc_md5(workdir / "data.dvc"),
        "data.kind": data_kind,
        "params.md5": file_hash(params) if params.is_file() else UNKNOWN,
    }
    if exp := os.environ.get("DVC_EXP_NAME"):
        tags["dvc.exp"] = exp
    if backend := keras_backend():
        tags["keras.backend"] = backend
    return tags


def _scalar(value: Any) -> str:
    return "null" if value is None else str(value)


def _model_id(version: str) -> str | None:
    """The MLflow 3 logged model behind a registered version of :data:`REGISTERED_MODEL`."""
    mv = MlflowClient().get_model_version(REGISTERED_MODEL, version)
    if mv.model_id:
        return str(mv.model_id)
    source = mv.source or ""
    return source.removeprefix("models:/") if source.startswith("models:/m-") else None


def run_link(run_id: str) -> str:
    """A markdown link to a run's page in the MLflow UI, named after the run."""
    run = MlflowClient().get_run(run_id)
    return f"[{run.info.run_name}](#/experiments/{run.info.experiment_id}/runs/{run_id}{ML_VIEW})"


def version_link(version: str) -> str:
    """A markdown link to a version of :data:`REGISTERED_MODEL` in the MLflow UI."""
    return (
        f"[{REGISTERED_MODEL} v{version}](#/models/{REGISTERED_MODEL}/versions/{version}{ML_VIEW})"
    )


def ui_url(base: str) -> str:
    """The address of the project experiment in the MLflow UI served at ``base`` over the
    local store, opened on "Model training"; the experiment list when there is no such
    experiment yet (or the store is a tracking server, whose ids are not looked up here)."""
    uri = tracking_uri()
    db = _sqlite_path(uri)
    exp = None
    if db is not None and db.is_file():
        with contextlib.suppress(MlflowException, OSError):
            exp = MlflowClient(uri).get_experiment_by_name(EXPERIMENT)
    path = f"experiments/{exp.experiment_id}" if exp else "experiments"
    return f"{base.rstrip('/')}/#/{path}{ML_VIEW}"


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

    def log_selected(self, metrics: dict[str, float]) -> None:
        """The scores of the model a training run keeps, as ``selected/<name>``: set apart
        from the per-epoch curves ``epoch/<name>`` of every epoch fitted."""
        self.log_metrics({f"selected/{k}": v for k, v in metrics.items()})

    def log_scores(self, metrics: dict[str, float], version: str | None, context: str) -> None:
        """Scores of registered ``version`` on the dataset this run logged under ``context``:
        linked to the version's logged model and that dataset, so they also show on the
        model's page of the MLflow UI (and the model as an input of this run)."""
        self._active()
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

    def log_table(self, rows: list[dict[str, Any]], file: str) -> None:
        """Rows of one table as an MLflow table artifact (JSON; the UI shows it as a table)."""
        import pandas as pd  # an MLflow dependency; only tables need it

        self._active()
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
        self._active()
        merged = {**self.tags, **tags}
        with mlflow.start_run(
            experiment_id=self.experiment_id, run_name=name, nested=True, tags=merged
        ) as active:
            yield StageRun(
                active.info.run_id, self.stage, self.data_kind, self.experiment_id, merged
            )

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
        self._datasets[context] = dataset

    def log_and_register(
        self,
        model_dir: str | Path,
        classifier: Any,
        input_example_images: np.ndarray,
        metrics: dict[str, float] | None = None,
        tags: dict[str, str] | None = None,
    ) -> str:
        """Log the glomx pyfunc (and the family's native flavor), register a new version of
        :data:`REGISTERED_MODEL` tagged with family, stage, data kind, ``metrics`` and
        ``tags``."""
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
            **(tags or {}),
        }
        if classifier.native_flavor == "keras" and (backend := keras_backend()):
            tags["keras_backend"] = backend
        version = mlflow.register_model(info.model_uri, REGISTERED_MODEL, tags=tags)
        client = MlflowClient()
        if not client.get_registered_model(REGISTERED_MODEL).description:
            client.update_registered_model(REGISTERED_MODEL, MODEL_DESCRIPTION)
        return str(version.version)


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
    with _lock_explained(parent.uri):
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
        if "glomx.stage" not in tags or tags.get(HOST_TAG) != host:
            continue
        if not pid.isdigit() or _alive(int(pid)):
            continue
        note = f"process {pid} on {host} ended without closing this run; marked KILLED"
        client.set_tag(run.info.run_id, "glomx.closed", note)
        client.set_terminated(run.info.run_id, "KILLED")
        closed.append(run.info.run_id)
    return closed


@contextmanager
def _lock_explained(uri: str) -> Iterator[None]:
    """SQLite's ``database is locked`` as a :class:`TrackingError` that says why and what to do."""
    try:
        yield
    except Exception as err:
        if _sqlite_path(uri) is None or "database is locked" not in str(err):
            raise
        raise TrackingError(SQLITE_LOCKED.format(uri=uri)) from err


@contextmanager
def stage_run(
    stage: str, params: dict[str, Any], data_kind: str, root: str | Path | None = None
) -> Iterator[StageRun]:
    """One MLflow run named after ``stage``, tagged with provenance, ``params`` logged.

    The run ends FAILED if the block raises. Raises :class:`TrackingError` within seconds when
    the tracking server is unreachable, and one saying why when a SQLite store is locked.
    """
    with _lock_explained(tracking_uri(root)):
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
            yield run
            if "keras.backend" not in tags and (backend := keras_backend()):
                run.set_tags({"keras.backend": backend})  # Keras was loaded inside the block
