"""What a run is tagged with so that its result can be traced (git commit and dirty files, data
and params hashes, Keras backend), and links to runs and versions in the MLflow UI."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from glomx.config import PARAMS_FILE, ParamsError, file_hash, flatten, read
from glomx.tracking.names import (
    EXPERIMENT,
    GIT_COMMIT_TAG,
    KERAS_BACKEND_TAG,
    REGISTERED_MODEL,
    STAGE_TAG,
)
from glomx.tracking.store import sqlite_path, tracking_uri

UNKNOWN = "unknown"
# MLflow 3.17's UI shows every experiment in its GenAI view (traces) unless the address asks
# for "Model training"; the experiment kind tag does not change that default.
ML_VIEW = "?workflowType=machine_learning"
# a stage's outputs that git tracks besides the ones dvc.yaml declares
PIPELINE_FILES = ("dvc.lock",)
CHANGED_LIMIT = 2000  # characters of the changed-files tag
StageContext = tuple[dict[str, Any], dict[str, Any]]  # a stage's definition, its ${...} values


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


def _stage_contexts(spec: dict[str, Any], params: dict[str, Any]) -> Iterator[StageContext]:
    """Each stage of a ``dvc.yaml`` with what its ``${...}`` references resolve from
    (``params.yaml`` and the dicts of ``vars``); a ``foreach`` stage's ``do`` once per key and
    item of its collection, as DVC expands it."""
    context = dict(params)
    for entry in spec.get("vars") or []:
        context.update(entry if isinstance(entry, dict) else {})
    for stage in (spec.get("stages") or {}).values():
        if not isinstance(stage, dict):
            continue
        if "foreach" not in stage:
            yield stage, context
            continue
        each: Any = stage["foreach"]
        if isinstance(each, str) and (ref := re.fullmatch(r"\$\{\s*([\w.-]+)\s*\}", each)):
            each = context  # ${families}: a collection from vars or params
            for part in ref[1].split("."):
                each = each.get(part) if isinstance(each, dict) else None
        pairs = each.items() if isinstance(each, dict) else ((None, v) for v in each or [])
        for key, item in pairs:
            yield stage.get("do") or {}, {**context, "key": key, "item": item}


def pipeline_outputs(workdir: Path) -> list[str]:
    """Paths the pipeline itself writes: ``dvc.lock`` and every stage's outs, metrics and
    plots in ``dvc.yaml`` (templated from ``params.yaml`` and ``vars``, a ``foreach`` stage
    once per key), relative to ``workdir``."""
    try:
        spec = yaml.safe_load((workdir / "dvc.yaml").read_text()) or {}
        params = read(workdir / PARAMS_FILE)
        stages = list(_stage_contexts(spec, params))
    except (OSError, yaml.YAMLError, AttributeError, TypeError, ParamsError):
        return list(PIPELINE_FILES)
    paths = {
        _interpolate(str(next(iter(entry)) if isinstance(entry, dict) else entry), context)
        .strip("/")
        .removeprefix("./")
        for stage, context in stages
        for kind in ("outs", "metrics", "plots")
        for entry in stage.get(kind) or []
    }
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
        return {GIT_COMMIT_TAG: commit or UNKNOWN, "git.dirty": UNKNOWN}
    prefix = (_git(workdir, "rev-parse", "--show-prefix") or "").strip()  # workdir in the repo
    outputs = [prefix + o for o in pipeline_outputs(workdir)]
    changed = sorted(p for p in _changed_paths(status) if not _is_under(p, outputs))
    tags = {GIT_COMMIT_TAG: commit, "git.dirty": str(bool(changed)).lower()}
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
        STAGE_TAG: stage,
        **_git_tags(workdir),
        "data.dvc_md5": _dvc_md5(workdir / "data.dvc"),
        "data.kind": data_kind,
        "params.md5": file_hash(params) if params.is_file() else UNKNOWN,
    }
    if exp := os.environ.get("DVC_EXP_NAME"):
        tags["dvc.exp"] = exp
    if backend := keras_backend():
        tags[KERAS_BACKEND_TAG] = backend
    return tags


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
    db = sqlite_path(uri)
    exp = None
    if db is not None and db.is_file():
        with contextlib.suppress(MlflowException, OSError):
            exp = MlflowClient(uri).get_experiment_by_name(EXPERIMENT)
    path = f"experiments/{exp.experiment_id}" if exp else "experiments"
    return f"{base.rstrip('/')}/#/{path}{ML_VIEW}"
