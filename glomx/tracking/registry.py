"""Promotion through the MLflow model registry: alias ``champion`` follows the best model.

Rules (:func:`decide`), applied by the evaluate stage to the versions it evaluated:

1. The best candidate is the one with the highest *validation* ``metric`` (ties broken by
   ``tiebreak``; a missing or NaN value counts as worst). Test metrics never take part.
2. With no current champion, the best candidate becomes champion.
3. When the best candidate already is the champion, nothing changes: rerunning evaluate on
   unchanged models moves no alias and writes nothing.
4. When champion and candidate were validated on different data (the digest of the
   validation store both training runs logged differs, or one is unknown), their scores are
   not comparable; the candidate wins, since it was validated on the data the pipeline now
   uses (a changed split, new images or new preprocessing all change that digest).
5. Otherwise the candidate must beat the champion by more than ``margin``.

On promotion the old champion gets alias ``previous`` (so it stays reachable as
``models:/glomx@previous``) and the new one gets the reason as tag ``promotion.reason`` and as
its description. A candidate that loses is tagged ``promotion.reason`` with why.
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.artifacts import download_artifacts
from mlflow.exceptions import MlflowException
from mlflow.models import Model

from glomx.models.base import META_FILE
from glomx.tracking.pyfunc import ARTIFACT
from glomx.tracking.runs import REGISTERED_MODEL, connect, tracking_uri

CHAMPION = "champion"
PREVIOUS = "previous"
REASON_TAG = "promotion.reason"
VAL_CONTEXTS = ("validation", "val")  # dataset contexts training runs log the val store under


@dataclass(frozen=True)
class Candidate:
    """A registered version with what promotion looks at."""

    version: str
    family: str
    run_id: str
    val_metrics: dict[str, float]
    val_data: str | None  # digest of the validation store the run logged

    def score(self, metric: str) -> float:
        value = self.val_metrics.get(metric, math.nan)
        return -math.inf if math.isnan(value) else value


@dataclass(frozen=True)
class Decision:
    """Which version is champion after evaluation, and why."""

    version: str | None
    family: str | None
    changed: bool
    reason: str
    previous: str | None = None
    ranking: tuple[dict[str, Any], ...] = ()  # candidates, best first: version, family, scores
    metric: str | None = None  # the validation metric that ranks them

    def as_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "family": self.family,
            "changed": self.changed,
            "reason": self.reason,
            "previous": self.previous,
            "ranking": list(self.ranking),
            "metric": self.metric,
        }


def _val_metrics(tags: dict[str, str]) -> dict[str, float]:
    """Validation metrics from a version's tags (``val_<metric>`` as training registers them)."""
    out = {}
    for key, value in tags.items():
        if key.startswith("val_"):
            try:
                out[key.removeprefix("val_")] = float(value)
            except ValueError:
                continue
    return out


def _val_digest(client: MlflowClient, run_id: str) -> str | None:
    """Digest of the validation dataset the training run logged, if any."""
    try:
        run = client.get_run(run_id)
    except MlflowException:
        return None
    for item in run.inputs.dataset_inputs:
        context = {t.key: t.value for t in item.tags}.get("mlflow.data.context")
        if context in VAL_CONTEXTS:
            return item.dataset.digest
    return None


def candidate(client: MlflowClient, version: str, name: str = REGISTERED_MODEL) -> Candidate:
    """Read one registered version."""
    mv = client.get_model_version(name, version)
    return Candidate(
        version=str(mv.version),
        family=mv.tags.get("family", "?"),
        run_id=mv.run_id or "",
        val_metrics=_val_metrics(mv.tags),
        val_data=_val_digest(client, mv.run_id) if mv.run_id else None,
    )


def current_champion(client: MlflowClient, name: str = REGISTERED_MODEL) -> Candidate | None:
    """The version behind alias ``champion``, or None."""
    try:
        mv = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None
    return candidate(client, mv.version, name)


def ranked(candidates: Sequence[Candidate], metric: str, tiebreak: str) -> list[Candidate]:
    """Best first: highest validation ``metric``, then ``tiebreak``, then the newest version."""
    if not candidates:
        raise ValueError("no candidate versions to choose from")
    return sorted(
        candidates,
        key=lambda c: (c.score(metric), c.score(tiebreak), int(c.version)),
        reverse=True,
    )


def best(candidates: Sequence[Candidate], metric: str, tiebreak: str) -> Candidate:
    """The first of :func:`ranked`."""
    return ranked(candidates, metric, tiebreak)[0]


def decide(
    candidates: Sequence[Candidate],
    champion: Candidate | None,
    metric: str,
    tiebreak: str,
    margin: float,
) -> Decision:
    """Apply the promotion rules (module docstring); pure, no registry access."""
    order = ranked(candidates, metric, tiebreak)
    decision = _rules(order[0], champion, metric, margin)
    shown = dict.fromkeys((metric, tiebreak))
    ranking = tuple(
        {"version": c.version, "family": c.family}
        | {m: c.val_metrics.get(m, math.nan) for m in shown}
        for c in order
    )
    return replace(decision, ranking=ranking, metric=metric)


def _rules(top: Candidate, champion: Candidate | None, metric: str, margin: float) -> Decision:
    """Rules 2-5 for the best candidate ``top``."""
    label = f"version {top.version} ({top.family}, val {metric} {top.score(metric):.4f})"
    if champion is None:
        return Decision(top.version, top.family, True, f"{label}: first champion.")
    if champion.version == top.version:
        return Decision(top.version, top.family, False, f"{label} already is champion.")
    held = f"champion version {champion.version} ({champion.family}, {champion.score(metric):.4f})"
    if champion.val_data is None or champion.val_data != top.val_data:
        return Decision(
            top.version,
            top.family,
            True,
            f"{label} replaces {held}: validated on different data "
            f"({champion.val_data} vs {top.val_data}), so the scores are not comparable and "
            "the candidate, validated on the current data, wins.",
            previous=champion.version,
        )
    gain = top.score(metric) - champion.score(metric)
    if gain > margin:
        return Decision(
            top.version,
            top.family,
            True,
            f"{label} beats {held} by {gain:.4f} > margin {margin} on the same validation data.",
            previous=champion.version,
        )
    return Decision(
        champion.version,
        champion.family,
        False,
        f"{held} stays: best candidate {label} gains {gain:.4f}, not more than margin {margin}.",
    )


def promote(
    versions: Sequence[str],
    metric: str = "balanced_accuracy",
    tiebreak: str = "roc_auc",
    margin: float = 0.0,
    name: str = REGISTERED_MODEL,
) -> Decision:
    """Decide among ``versions`` and apply the decision to the registry's aliases and tags."""
    connect()
    client = MlflowClient()
    candidates = [candidate(client, v, name) for v in versions]
    decision = decide(candidates, current_champion(client, name), metric, tiebreak, margin)
    top = decision.ranking[0]["version"]  # the best candidate, as decide ranked them
    if decision.changed:
        if decision.previous:
            client.set_registered_model_alias(name, PREVIOUS, decision.previous)
        client.set_registered_model_alias(name, CHAMPION, top)
        client.update_model_version(name, top, description=decision.reason)
        client.set_model_version_tag(name, top, REASON_TAG, decision.reason)
    elif top != decision.version:
        mv = client.get_model_version(name, top)
        if mv.tags.get(REASON_TAG) != decision.reason:
            client.set_model_version_tag(name, top, REASON_TAG, decision.reason)
    return decision


def _digests(directory: Path) -> dict[str, str]:
    """md5 of every file under ``directory``, by relative path."""
    digests = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        with open(path, "rb") as f:  # streamed: weights can be large
            digests[str(path.relative_to(directory))] = hashlib.file_digest(f, "md5").hexdigest()
    return digests


def _model_path(name: str, version: str, tmp: Path) -> str:
    """Where the glomx model directory lies inside a registered pyfunc model."""
    local = Path(download_artifacts(artifact_uri=f"models:/{name}/{version}/MLmodel", dst_path=tmp))
    artifacts = Model.load(local).flavors["python_function"].get("artifacts", {})
    if ARTIFACT not in artifacts:
        raise LookupError(f"models:/{name}/{version} is not a glomx pyfunc model")
    return str(artifacts[ARTIFACT]["path"])


def version_of(model_dir: Path, name: str = REGISTERED_MODEL) -> Candidate | None:
    """The registered version holding exactly the files of ``model_dir`` (newest first among
    versions tagged with its family; glomx.json is compared before any weights are fetched)."""
    connect()
    client = MlflowClient()
    local = _digests(model_dir)
    family = json.loads((model_dir / META_FILE).read_text())["family"]
    versions = [
        mv
        for mv in client.search_model_versions(f"name='{name}'")
        if mv.tags.get("family") == family
    ]
    for mv in sorted(versions, key=lambda v: int(v.version), reverse=True):
        with tempfile.TemporaryDirectory(prefix="glomx-match-") as tmp:
            try:
                path = _model_path(name, mv.version, Path(tmp))
                meta = Path(
                    download_artifacts(
                        artifact_uri=f"models:/{name}/{mv.version}/{path}/{META_FILE}",
                        dst_path=f"{tmp}/meta",
                    )
                )
                if hashlib.md5(meta.read_bytes()).hexdigest() != local[META_FILE]:
                    continue
                remote = download_artifacts(
                    artifact_uri=f"models:/{name}/{mv.version}/{path}", dst_path=f"{tmp}/model"
                )
            except (MlflowException, LookupError, OSError):
                continue
            if _digests(Path(remote)) == local:
                return candidate(client, str(mv.version), name)
    return None


def _parse(uri: str) -> tuple[str, str]:
    """``models:/name@alias`` or ``models:/name/version`` → (name, alias-or-version)."""
    body = uri.removeprefix("models:/")
    if "@" in body:
        return tuple(body.split("@", 1))  # type: ignore[return-value]
    if "/" in body:
        return tuple(body.split("/", 1))  # type: ignore[return-value]
    raise ValueError(f"{uri!r} is not models:/NAME@ALIAS or models:/NAME/VERSION")


def _existing_registry() -> MlflowClient:
    """A client for reading; a local SQLite store that does not exist is not created."""
    uri = tracking_uri()
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise LookupError(
            f"no MLflow registry at {uri}; run the pipeline (`dvc repro`) here, set "
            "MLFLOW_TRACKING_URI, or pass a saved model folder"
        )
    connect()
    return MlflowClient()


def resolve(uri: str) -> tuple[str, str]:
    """(name, version) of a ``models:/`` URI; raises LookupError naming what is missing."""
    client = _existing_registry()
    name, ref = _parse(uri)
    try:
        if ref.isdigit():
            return name, str(client.get_model_version(name, ref).version)
        return name, str(client.get_model_version_by_alias(name, ref).version)
    except MlflowException as err:
        raise LookupError(
            f"{uri} not found in the registry at {client.tracking_uri}: {err.message} "
            "(run `dvc repro` to train and evaluate, or pass a saved model folder)"
        ) from None


def load_registered(uri: str) -> tuple[Any, str]:
    """Download the version's glomx model directory and load it → (classifier, source label)."""
    from glomx.models import load_classifier

    name, version = resolve(uri)
    with tempfile.TemporaryDirectory(prefix="glomx-model-") as tmp:
        path = _model_path(name, version, Path(tmp))
        local = download_artifacts(artifact_uri=f"models:/{name}/{version}/{path}", dst_path=tmp)
        classifier = load_classifier(local)
    return classifier, f"models:/{name}/{version}"


def champion_report(name: str = REGISTERED_MODEL) -> str:
    """Text for ``glomx champion``."""
    client = _existing_registry()
    champ = current_champion(client, name)
    if champ is None:
        raise LookupError(
            f"registered model {name!r} has no alias {CHAMPION!r} at {client.tracking_uri}; "
            "run the evaluate stage (`dvc repro`)"
        )
    mv = client.get_model_version(name, champ.version)
    run = client.get_run(champ.run_id) if champ.run_id else None
    lines = [
        f"champion: models:/{name}/{champ.version} ({champ.family})",
        f"trained by run {champ.run_id}"
        + (f" ({run.info.run_name}, {run.data.tags.get('git.commit', '?')[:12]})" if run else ""),
        f"data: {mv.tags.get('data_kind', '?')}; threshold {mv.tags.get('threshold', '?')}",
        "validation: " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(champ.val_metrics.items())),
        f"why: {mv.tags.get(REASON_TAG, mv.description or '?')}",
    ]
    return "\n".join(lines)
