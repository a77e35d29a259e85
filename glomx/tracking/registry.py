"""The MLflow model registry: registering a saved model folder, finding the versions a folder
was registered as, and promotion, where alias ``champion`` follows the chosen model.

Training runs (and choose, for the ensemble) :func:`register` their model folder;
:func:`registered_versions` is the one way back from a folder to its versions (by the files
digest its logged models are tagged with).

The choose stage picks the *candidate* on out-of-fold predictions of the non-test slides (a
family, or the ``ensemble`` of the families the data cannot tell apart:
:mod:`glomx.evaluation.selection`). Evaluate then applies these rules (:func:`decide`) to it;
test metrics never take part:

1. With no current champion, the candidate becomes champion.
2. When the candidate already is the champion, nothing changes: rerunning evaluate on
   unchanged models moves no alias.
3. When champion and candidate were cross-validated on different data (the digest of the
   cross-validation store both training runs logged differs, or one is unknown, e.g. a version
   chosen on the former validation split), their scores are not comparable; the candidate
   wins, since it was scored on the data the pipeline now uses.
4. Otherwise the candidate must beat the champion's out-of-fold ``metric`` by more than
   ``margin``.

On promotion the old champion gets alias ``previous`` (so it stays reachable as
``models:/glomx@previous``) and the new one gets the reason as tag ``promotion.reason`` and as
its description. A candidate that loses is tagged ``promotion.reason`` with why.
"""

from __future__ import annotations

import atexit
import json
import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import mlflow
import numpy as np
from mlflow import MlflowClient
from mlflow.artifacts import download_artifacts
from mlflow.exceptions import MlflowException
from mlflow.models import Model

from glomx.errors import UsageError
from glomx.evaluation.metrics import finite
from glomx.evaluation.prevalence import ClassifierAccuracy, unknown_accuracy
from glomx.models import load_classifier, load_predictor
from glomx.models.base import META_FILE, Classifier, Predictor
from glomx.tracking.model_card import write_card
from glomx.tracking.names import (
    ARTIFACT,
    CAL_FIGURES,
    CAL_NON_SCLEROTIC,
    CAL_PATCHES,
    CAL_SCLEROTIC,
    CAL_SENSITIVITY,
    CAL_SLIDES,
    CAL_SPECIFICITY,
    CAL_TTA,
    CALIBRATED_FROM,
    CALIBRATION_REPORT,
    CHAMPION,
    CV_CONTEXT,
    CV_PREFIX,
    DATA_KIND_TAG,
    DIGEST_TAG,
    EXPERIMENT,
    FAMILY_TAG,
    GIT_COMMIT_TAG,
    LAB_TAG,
    PREVIOUS,
    REASON_TAG,
    REGISTERED_MODEL,
    THRESHOLD_TAG,
    VERSION_STAGE_TAG,
    lab_alias,
)
from glomx.tracking.provenance import keras_backend
from glomx.tracking.pyfunc import files_digest, log_model, log_native_model
from glomx.tracking.runs import StageRun, stage_run
from glomx.tracking.store import NotRegistered, TrackingError, connect, existing_client

MODEL_DESCRIPTION = """\
P(globally sclerotic) for a PAS-stained kidney glomerulus patch. Each version is a training
stage's bag of fold models (tag `family`; pooled out-of-fold scores as `cv_<metric>` tags) or
the choose stage's `ensemble` of tied families. Alias `champion` is the candidate choose picked
on out-of-fold predictions, promoted by evaluate (see its `promotion.reason`); `previous` the
champion it replaced; `lab-<name>` a lab's calibrated copy. Test scores: the `evaluate` runs.
"""


@dataclass(frozen=True)
class Candidate:
    """A registered version with what promotion looks at."""

    version: str
    family: str
    run_id: str
    cv_metrics: dict[str, float]
    cv_data: str | None  # digest of the cross-validated store the run logged

    def score(self, metric: str) -> float:
        value = self.cv_metrics.get(metric, math.nan)
        return -math.inf if math.isnan(value) else value


@dataclass(frozen=True)
class Decision:
    """Which version is champion after evaluation, and why."""

    version: str | None
    family: str | None
    changed: bool
    reason: str
    previous: str | None = None
    candidate: str | None = None  # the version the choose stage proposed

    def as_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "family": self.family,
            "changed": self.changed,
            "reason": self.reason,
            "previous": self.previous,
            "candidate": self.candidate,
        }


def cv_tags(pooled: dict[str, float]) -> dict[str, float]:
    """Pooled out-of-fold metrics as a version's ``cv_<metric>`` tags (an undefined, NaN one
    left out), which promotion reads back."""
    return {f"{CV_PREFIX}{k}": v for k, v in finite(pooled).items()}


def _cv_metrics(tags: dict[str, str]) -> dict[str, float]:
    """Pooled out-of-fold metrics from a version's ``cv_<metric>`` tags."""
    out = {}
    for key, value in tags.items():
        if key.startswith(CV_PREFIX):
            try:
                out[key.removeprefix(CV_PREFIX)] = float(value)
            except ValueError:
                continue
    return out


def _cv_input(client: MlflowClient, run_id: str) -> tuple[str, dict[str, str]] | None:
    """(digest, tags) of the cross-validated store the training run logged as its input
    (context :data:`CV_CONTEXT`), if it logged one."""
    try:
        run = client.get_run(run_id)
    except MlflowException:
        return None
    for item in run.inputs.dataset_inputs if run.inputs else []:
        tags = {t.key: t.value for t in item.tags}
        if tags.get("mlflow.data.context") == CV_CONTEXT:
            return item.dataset.digest, tags
    return None


def candidate(client: MlflowClient, version: str, name: str = REGISTERED_MODEL) -> Candidate:
    """Read one registered version."""
    mv = client.get_model_version(name, version)
    cv = _cv_input(client, mv.run_id) if mv.run_id else None
    return Candidate(
        version=str(mv.version),
        family=mv.tags.get(FAMILY_TAG, "?"),
        run_id=mv.run_id or "",
        cv_metrics=_cv_metrics(mv.tags),
        cv_data=cv[0] if cv else None,
    )


def current_champion(client: MlflowClient, name: str = REGISTERED_MODEL) -> Candidate | None:
    """The version behind alias ``champion``, or None."""
    try:
        mv = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None
    return candidate(client, mv.version, name)


def decide(
    top: Candidate, champion: Candidate | None, metric: str, margin: float, why: str = ""
) -> Decision:
    """Apply rules 1-4 (module docstring) to the choose stage's candidate ``top``; ``why`` is
    the selection's reason, which leads the decision's. Pure, no registry access."""
    label = f"version {top.version} ({top.family}, out-of-fold {metric} {top.score(metric):.4f})"
    lead = f"{why} " if why else ""

    def made(version: str, family: str, changed: bool, text: str, previous: str | None = None):
        return Decision(version, family, changed, lead + text, previous, top.version)

    if champion is None:
        return made(top.version, top.family, True, f"{label}: first champion.")
    if champion.version == top.version:
        return made(top.version, top.family, False, f"{label} already is champion.")
    held = f"champion version {champion.version} ({champion.family}, {champion.score(metric):.4f})"
    if champion.cv_data is None or champion.cv_data != top.cv_data:
        return made(
            top.version,
            top.family,
            True,
            f"{label} replaces {held}: cross-validated on different data "
            f"({champion.cv_data} vs {top.cv_data}), so the scores are not comparable and the "
            "candidate, scored on the current data, wins.",
            champion.version,
        )
    gain = top.score(metric) - champion.score(metric)
    if gain > margin:
        return made(
            top.version,
            top.family,
            True,
            f"{label} beats {held} by {gain:.4f} > margin {margin} on the same folds.",
            champion.version,
        )
    return made(
        champion.version,
        champion.family,
        False,
        f"{held} stays: candidate {label} gains {gain:.4f}, not more than margin {margin}.",
    )


def promote(
    version: str,
    why: str = "",
    metric: str = "balanced_accuracy",
    margin: float = 0.0,
    name: str = REGISTERED_MODEL,
) -> Decision:
    """Decide on the candidate ``version`` and apply the decision to the registry's aliases
    and tags."""
    connect()
    client = MlflowClient()
    if source := client.get_model_version(name, version).tags.get(CALIBRATED_FROM):
        raise UsageError(
            f"version {version} is a lab's calibrated copy of version {source}: champion moves "
            "only to a trained candidate, and a lab's version only by its alias"
        )
    top = candidate(client, version, name)
    decision = decide(top, current_champion(client, name), metric, margin, why)
    if decision.changed:
        if decision.previous:
            client.set_registered_model_alias(name, PREVIOUS, decision.previous)
        client.set_registered_model_alias(name, CHAMPION, top.version)
        client.update_model_version(name, top.version, description=decision.reason)
        client.set_model_version_tag(name, top.version, REASON_TAG, decision.reason)
    elif top.version != decision.version:
        mv = client.get_model_version(name, top.version)
        if mv.tags.get(REASON_TAG) != decision.reason:
            client.set_model_version_tag(name, top.version, REASON_TAG, decision.reason)
    return decision


def _model_path(name: str, version: str, tmp: Path) -> str:
    """Where the glomx model directory lies inside a registered pyfunc model."""
    local = Path(
        download_artifacts(artifact_uri=f"models:/{name}/{version}/MLmodel", dst_path=str(tmp))
    )
    artifacts = Model.load(local).flavors["python_function"].get("artifacts", {})
    if ARTIFACT not in artifacts:
        raise NotRegistered(f"models:/{name}/{version} is not a glomx pyfunc model")
    return str(artifacts[ARTIFACT]["path"])


def register(
    run: StageRun,
    model_dir: str | Path,
    classifier: Predictor,
    example: np.ndarray,
    metrics: dict[str, float] | None = None,
    tags: dict[str, str] | None = None,
    site_regex: str | None = None,
) -> str:
    """Log the saved model folder ``model_dir`` in ``run`` as the glomx pyfunc (and the
    family's native flavor, unregistered), and register it as a new version of
    :data:`REGISTERED_MODEL` tagged with family, stage, data kind, threshold, ``metrics`` and
    ``tags``, with its model card (hospitals from ``site_regex``); returns the version.
    :func:`registered_versions` finds it again from the folder."""
    run.require_active()
    info = log_model(Path(model_dir), classifier, example)
    if isinstance(classifier, Classifier):  # a mean model has no single native model
        log_native_model(classifier, example)
    version_tags = {
        FAMILY_TAG: classifier.meta.family,
        VERSION_STAGE_TAG: run.stage,
        DATA_KIND_TAG: run.data_kind,
        THRESHOLD_TAG: str(classifier.meta.threshold),
        **{k: f"{v:.6g}" for k, v in (metrics or {}).items()},
        **(tags or {}),
    }
    if classifier.native_flavor == "keras" and (backend := keras_backend()):
        version_tags["keras_backend"] = backend
    version = mlflow.register_model(info.model_uri, REGISTERED_MODEL, tags=version_tags)
    client = MlflowClient()
    if not client.get_registered_model(REGISTERED_MODEL).description:
        client.update_registered_model(REGISTERED_MODEL, MODEL_DESCRIPTION)
    write_card(client, REGISTERED_MODEL, str(version.version), site_regex)
    return str(version.version)


def refresh_cards(versions: list[str], site_regex: str | None) -> None:
    """Rewrite the cards of ``versions`` (evaluate, once their test figures are logged)."""
    client = MlflowClient()
    for version in versions:
        write_card(client, REGISTERED_MODEL, version, site_regex)


def registered_versions(model_dir: Path, name: str = REGISTERED_MODEL) -> list[str]:
    """Numbers, ascending, of the registered versions logged from exactly the files of
    ``model_dir`` (found by the files digest their logged models are tagged with; nothing is
    downloaded). Raises LookupError where there is no registry (none is created)."""
    client = existing_client()
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        return []
    logged = mlflow.search_logged_models(
        experiment_ids=[experiment.experiment_id],
        filter_string=f"tags.`{DIGEST_TAG}` = '{files_digest(model_dir)}'",
        output_format="list",
    )
    sources = {f"models:/{m.model_id}" for m in logged}  # what a version registered from it
    versions = client.search_model_versions(f"name='{name}'")
    return sorted((str(v.version) for v in versions if v.source in sources), key=int)


def version_of(model_dir: Path, name: str = REGISTERED_MODEL) -> Candidate | None:
    """The newest of :func:`registered_versions`, read as a :class:`Candidate`; None when the
    folder is not registered, or when there is no registry yet."""
    try:
        versions = registered_versions(model_dir, name)
    except LookupError:
        return None
    return candidate(MlflowClient(), versions[-1], name) if versions else None


def _parse(uri: str) -> tuple[str, str]:
    """``models:/name@alias`` or ``models:/name/version`` → (name, alias-or-version)."""
    body = uri.removeprefix("models:/")
    if "@" in body:
        return tuple(body.split("@", 1))  # type: ignore[return-value]
    if "/" in body:
        return tuple(body.split("/", 1))  # type: ignore[return-value]
    raise UsageError(f"{uri!r} is not models:/NAME@ALIAS or models:/NAME/VERSION")


def resolve(uri: str) -> tuple[str, str]:
    """(name, version) of a ``models:/`` URI; raises LookupError naming what is missing."""
    name, ref = _parse(uri)  # a malformed URI is refused before any store is opened
    client = existing_client()
    try:
        if ref.isdigit():
            return name, str(client.get_model_version(name, ref).version)
        return name, str(client.get_model_version_by_alias(name, ref).version)
    except MlflowException as err:
        raise NotRegistered(
            f"{uri} not found in the registry at {client.tracking_uri}: {err.message} "
            "(run `dvc repro` to train and evaluate, or pass a saved model folder)"
        ) from None


def load_registered(uri: str) -> tuple[Predictor, str]:
    """The version's glomx model directory, loaded for prediction (its inference export when
    it has one) → (model, source label). A local store's folder is read in place; a remote
    one is downloaded into a temporary folder kept until the process exits, since a loaded
    export reads its files again when it is pickled (Ray) or saved."""
    name, version = resolve(uri)
    with tempfile.TemporaryDirectory(prefix="glomx-model-") as tmp:
        path = _model_path(name, version, Path(tmp))
    source = MlflowClient().get_model_version_download_uri(name, version)
    if urlparse(source).scheme in ("", "file"):
        local = download_artifacts(artifact_uri=f"models:/{name}/{version}/{path}")
    else:
        kept = tempfile.mkdtemp(prefix="glomx-model-")
        atexit.register(shutil.rmtree, kept, ignore_errors=True)
        local = download_artifacts(artifact_uri=f"models:/{name}/{version}/{path}", dst_path=kept)
    return load_predictor(local), f"models:/{name}/{version}"


def champion_report(name: str = REGISTERED_MODEL) -> str:
    """Text for ``glomx champion``."""
    client = existing_client()
    champ = current_champion(client, name)
    if champ is None:
        raise NotRegistered(
            f"registered model {name!r} has no alias {CHAMPION!r} at {client.tracking_uri}; "
            "run the evaluate stage (`dvc repro`)"
        )
    mv = client.get_model_version(name, champ.version)
    run = client.get_run(champ.run_id) if champ.run_id else None
    lines = [
        f"champion: models:/{name}/{champ.version} ({champ.family})",
        f"trained by run {champ.run_id}"
        + (f" ({run.info.run_name}, {run.data.tags.get(GIT_COMMIT_TAG, '?')[:12]})" if run else ""),
        f"data: {mv.tags.get(DATA_KIND_TAG, '?')}; threshold {mv.tags.get(THRESHOLD_TAG, '?')}",
        "out-of-fold: " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(champ.cv_metrics.items())),
        f"why: {mv.tags.get(REASON_TAG, mv.description or '?')}",
    ]
    return "\n".join(lines)


def version_by_alias(client: MlflowClient, name: str, alias: str) -> Any:
    """The version behind ``alias``, or None."""
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def version_details(name: str, version: str) -> tuple[dict[str, str], list[str]]:
    """A registered version's tags and aliases, for reports that name what made them;
    LookupError when the registry or the version is missing."""
    client = existing_client()
    try:
        mv = client.get_model_version(name, version)
    except MlflowException as err:
        raise LookupError(f"models:/{name}/{version}: {err.message}") from None
    return dict(mv.tags), sorted(mv.aliases)


def register_calibrated(
    name: str,
    version: str,
    threshold: float,
    alias: str,
    tags: dict[str, str],
    example: np.ndarray,
    data_kind: str,
    report: dict[str, Any],
    site_regex: str | None = None,
) -> str:
    """Register a copy of version ``version`` whose top-level glomx.json carries ``threshold``
    (every other file, members of a composite model included, as they are), tagged with
    ``tags``, and point ``alias`` at it; ``champion`` and ``previous`` are left alone. The
    calibrate run logs ``report``; the card (hospitals from ``site_regex``) names the lab and
    its calibration. Returns the new version."""
    if name != REGISTERED_MODEL:
        raise NotRegistered(f"calibration registers versions of {REGISTERED_MODEL!r}, not {name!r}")
    params = {"source": f"models:/{name}/{version}", "alias": alias, "threshold": threshold}
    with tempfile.TemporaryDirectory(prefix="glomx-calibrate-") as tmp:
        path = _model_path(name, version, Path(tmp))
        local = Path(
            download_artifacts(artifact_uri=f"models:/{name}/{version}/{path}", dst_path=tmp)
        )
        meta = json.loads((local / META_FILE).read_text())
        meta["threshold"] = threshold
        (local / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        classifier = load_classifier(local)
        try:
            with stage_run("calibrate", params, data_kind) as run:
                run.log_dict(report, CALIBRATION_REPORT)
                new = register(run, local, classifier, example, tags=tags, site_regex=site_regex)
                MlflowClient().set_registered_model_alias(name, alias, new)
                write_card(MlflowClient(), name, new, site_regex)  # now with its alias
        except MlflowException as err:
            raise TrackingError(
                f"registering the calibrated version failed: {err.message}"
            ) from err
    return new


def lab_report(lab: str, name: str = REGISTERED_MODEL) -> str:
    """Text for ``glomx champion --lab``: the lab's calibrated version, what it was calibrated
    on, and whether the champion has moved on since."""
    alias = lab_alias(lab)
    client = existing_client()
    mv = version_by_alias(client, name, alias)
    if mv is None:
        raise NotRegistered(
            f"registered model {name!r} has no alias {alias!r} at {client.tracking_uri}; "
            f"run `glomx calibrate DATA_DIR --lab {lab}`"
        )
    tags = mv.tags
    champ = current_champion(client, name)
    source = tags.get(CALIBRATED_FROM, "?")
    lines = [
        f"lab {lab}: models:/{name}/{mv.version} ({tags.get(FAMILY_TAG, '?')}), alias {alias}",
        f"threshold {tags.get(THRESHOLD_TAG, '?')}, calibrated from version {source} on "
        f"{tags.get(CAL_PATCHES, '?')} patches ({tags.get(CAL_SCLEROTIC, '?')} sclerotic) from "
        f"{tags.get(CAL_SLIDES, '?')} slides"
        + (", TTA scores" if tags.get(CAL_TTA) == "true" else ""),
        "on the lab's patches: "
        + ", ".join(f"{k} {tags[tag]}" for k, tag in CAL_FIGURES.items() if tag in tags),
    ]
    if champ is not None and champ.version != source:
        lines.append(
            f"note: the champion is now version {champ.version}; recalibrate with "
            f"`glomx calibrate DATA_DIR --lab {lab}` to use it"
        )
    return "\n".join(lines)


def _cv_counts(client: MlflowClient, run_id: str) -> tuple[int, int] | None:
    """(positives, negatives) of the store the training run cross-validated, if known."""
    cv = _cv_input(client, run_id)
    try:
        return (int(cv[1]["class_1"]), int(cv[1]["class_0"])) if cv else None
    except (KeyError, ValueError):
        return None


def version_accuracy(uri: str) -> ClassifierAccuracy:
    """Sensitivity and specificity of a registered version at its own threshold, with the
    patch counts behind them: a calibrated version's calibration figures, else the pooled
    out-of-fold figures training tagged (``cv_recall``, ``cv_specificity``; counts from the
    run's cross-validated input), else unknown."""
    name, version = resolve(uri)
    client = MlflowClient()
    mv = client.get_model_version(name, version)
    tags = mv.tags
    if CAL_SENSITIVITY in tags:
        return ClassifierAccuracy(
            float(tags[CAL_SENSITIVITY]),
            float(tags[CAL_SPECIFICITY]),
            int(tags.get(CAL_SCLEROTIC, 0)),
            int(tags.get(CAL_NON_SCLEROTIC, 0)),
            f"calibration of version {version} on lab {tags.get(LAB_TAG, '?')}",
        )
    if f"{CV_PREFIX}recall" in tags and f"{CV_PREFIX}specificity" in tags:
        counts = _cv_counts(client, mv.run_id) if mv.run_id else None
        where = f"cross-validation of version {version}"
        return ClassifierAccuracy(
            float(tags[f"{CV_PREFIX}recall"]),
            float(tags[f"{CV_PREFIX}specificity"]),
            *(counts or (0, 0)),
            where if counts else f"{where} (patch counts unknown: taken as exact)",
        )
    return unknown_accuracy(f"version {version} has no sensitivity and specificity tags")
