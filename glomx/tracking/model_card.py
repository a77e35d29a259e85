"""A model card for every registered version: what it is for, what it learnt from, how well
it does per hospital, and where it fails, in the sections of the model cards on public model
hubs (Mitchell et al. 2019; Hugging Face's layout without its YAML front matter).

The card is built from the registry alone, so it can be rewritten whenever more is known: at
registration (out-of-fold figures), by evaluate (test figures) and for a lab's calibrated copy
(its calibration). Out-of-fold predictions come from the registering run's ``cv/<family>.csv``;
an ensemble's are its members' mean, a calibrated copy's its source's. Test figures come from
the newest evaluate child run that scored the version (its ``test_metrics.json``). The card is
the version's description (the UI renders it) and ``model_card.md`` among the artifacts of the
logged model it was registered from.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from glomx.data.split import sites_of
from glomx.evaluation.bootstrap import MIN_SLIDES, bootstrap_metrics
from glomx.evaluation.metrics import choose_threshold, classification_metrics
from glomx.evaluation.selection import ENSEMBLE, OOF, SelectionError, mean_of
from glomx.tracking.names import (
    CAL_PATCHES,
    CAL_SCLEROTIC,
    CAL_SLIDES,
    CAL_THRESHOLD,
    CALIBRATED_FROM,
    CALIBRATION_REPORT,
    DATA_KIND_TAG,
    EVALUATED_VERSION,
    FAMILY_TAG,
    LAB_TAG,
    MEMBER_PREFIX,
    MEMBERS_TAG,
    OOF_DIR,
    REASON_TAG,
    TEST_TABLE,
    THRESHOLD_TAG,
    VERSION_STAGE_TAG,
)

CARD_FILE = "model_card.md"
MAX_DESCRIPTION = 5000  # characters MLflow's SQL store keeps of a version's description
SHOWN = {
    "balanced_accuracy": "bal. acc.",
    "roc_auc": "ROC-AUC",
    "recall": "sensitivity",
    "specificity": "specificity",
}
REAL_DATA = (
    "patches from Bueno et al. 2020 (CC BY 4.0), labels from Weishaupt et al. 2025 "
    "(CC BY-NC-SA 4.0): not for commercial use"
)


def _number(tag: str | None) -> str:
    """A threshold tag as people read it (4 significant digits), or ``?``."""
    try:
        return f"{float(tag):.4g}" if tag is not None else "?"
    except ValueError:
        return tag or "?"


def _cell(m: Mapping[str, Any] | None) -> str:
    if not m or m.get("value") is None or math.isnan(float(m["value"])):
        return "n/a"
    low, high = m.get("ci_low"), m.get("ci_high")
    if low is None or high is None or math.isnan(float(low)):
        return f"{float(m['value']):.3f} †"
    return f"{float(m['value']):.3f} [{float(low):.3f}, {float(high):.3f}]"


def _table(rows: Mapping[str, tuple[int, Mapping[str, Any]]], first: str = "scope") -> list[str]:
    """scope → (slides, metric → value/interval) as a markdown table."""
    lines = [
        f"| {first} | slides | " + " | ".join(SHOWN.values()) + " |",
        "|---|--:|" + "---|" * len(SHOWN),
    ]
    for scope, (slides, metrics) in rows.items():
        cells = " | ".join(_cell(metrics.get(k)) for k in SHOWN)
        lines.append(f"| {scope} | {slides} | {cells} |")
    return lines


def _download_json(client: MlflowClient, run_id: str, path: str) -> Any:
    with tempfile.TemporaryDirectory(prefix="glomx-card-") as tmp:
        return json.loads(Path(client.download_artifacts(run_id, path, tmp)).read_text())


def version_oof(client: MlflowClient, name: str, version: str) -> OOF | None:
    """The out-of-fold predictions behind a version, or None where its run logged none."""
    mv = client.get_model_version(name, version)
    tags = mv.tags
    if CALIBRATED_FROM in tags:  # the same model files as its source
        return version_oof(client, name, tags[CALIBRATED_FROM])
    if not mv.run_id:
        return None
    family = tags.get(FAMILY_TAG, "")
    try:
        with tempfile.TemporaryDirectory(prefix="glomx-card-") as tmp:
            path = client.download_artifacts(mv.run_id, f"{OOF_DIR}/{family}.csv", tmp)
            return OOF.read(Path(path))
    except (MlflowException, OSError, SelectionError):
        pass
    if family != ENSEMBLE:
        return None
    run_tags = client.get_run(mv.run_id).data.tags
    members = {
        k.removeprefix(MEMBER_PREFIX): v for k, v in run_tags.items() if k.startswith(MEMBER_PREFIX)
    }
    oofs = {f: version_oof(client, name, v) for f, v in members.items() if v.isdigit()}
    found = {f: o for f, o in oofs.items() if o is not None}
    if not found or len(found) < len(members):
        return None
    return mean_of(found, sorted(found))


def _sites(oof: OOF, site_regex: str | None) -> np.ndarray:
    return (
        sites_of(oof.slides.tolist(), site_regex) if site_regex else np.full(len(oof.names), "all")
    )


def training_section(oof: OOF | None, site_regex: str | None, data_kind: str) -> list[str]:
    """Hospitals, slides, patches of the cross-validated data; the licence."""
    lines = ["## Training data", ""]
    if oof is None:
        return [*lines, "Not recorded: the registering run logged no out-of-fold predictions."]
    sites = _sites(oof, site_regex)
    lines += ["| hospital | slides | patches | sclerotic |", "|---|--:|--:|--:|"]
    for site in sorted(set(sites.tolist())):
        m = sites == site
        lines.append(
            f"| {site} | {len(set(oof.slides[m].tolist()))} | {int(m.sum())} "
            f"| {int(oof.labels[m].sum())} |"
        )
    licence = REAL_DATA if data_kind == "real" else f"{data_kind} data (glomx synth): no licence"
    return [
        *lines,
        "",
        f"The original patches of the {len(set(oof.slides.tolist()))} cross-validated slides "
        "(slide-grouped folds; augmented copies in training only; the test slides never). "
        f"Data: {licence}.",
    ]


def oof_rows(oof: OOF, site_regex: str | None) -> dict[str, tuple[int, dict[str, Any]]]:
    """Pooled and per-hospital out-of-fold figures with slide-bootstrap intervals."""
    sites = _sites(oof, site_regex)
    scopes = {"all": np.ones(len(sites), bool)}
    if len(set(sites.tolist())) > 1:
        scopes |= {f"hospital {s}": sites == s for s in sorted(set(sites.tolist()))}
    return {
        scope: (
            len(set(oof.slides[m].tolist())),
            bootstrap_metrics(oof.labels[m], oof.proba[m], oof.slides[m], oof.thresholds[m]),
        )
        for scope, m in scopes.items()
    }


def transfer_lines(oof: OOF, site_regex: str | None) -> list[str]:
    """Per hospital: out-of-fold balanced accuracy at the version's thresholds against the
    hospital's own best cut, the gap a lab's calibration can close."""
    sites = _sites(oof, site_regex)
    lines = []
    for site in sorted(set(sites.tolist())):
        m = sites == site
        y, p = oof.labels[m], oof.proba[m]
        if not 0 < y.sum() < len(y):
            continue
        own = classification_metrics(y, p, oof.thresholds[m])["balanced_accuracy"]
        best_cut = choose_threshold(y, p, "balanced_accuracy", ties="interval")
        best = classification_metrics(y, p, best_cut)["balanced_accuracy"]
        lines.append(
            f"{site} {own:.3f} at its threshold, {best:.3f} at its best cut {best_cut:.3g}"
        )
    return lines


def newest_test(client: MlflowClient, version: str) -> tuple[str, list[dict[str, Any]]] | None:
    """(run id, rows of ``test_metrics.json``) of the newest evaluate child run that scored
    ``version``, or None when none has."""
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        f"tags.`{EVALUATED_VERSION}` = '{version}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        return None
    try:
        table = _download_json(client, runs[0].info.run_id, TEST_TABLE)
    except (MlflowException, OSError, ValueError):
        return None
    rows = [dict(zip(table["columns"], row, strict=True)) for row in table["data"]]
    return runs[0].info.run_id, rows


def test_section(client: MlflowClient, version: str, calibrated: bool) -> list[str]:
    lines = ["### Test split", ""]
    if calibrated:
        return [
            *lines,
            "Not evaluated at the lab's threshold: the test split comes from the training "
            "hospitals, not the lab; the lab's own figures are under Calibration.",
        ]
    found = newest_test(client, version)
    if found is None:
        return [
            *lines,
            "Not yet evaluated: the evaluate stage (`dvc repro`) scores the test "
            "split and rewrites this card.",
        ]
    run_id, rows = found
    scopes: dict[str, tuple[int, dict[str, Any]]] = {}
    for r in rows:
        scopes.setdefault(r["scope"], (int(r["slides"]), {}))[1][r["metric"]] = r
    return [
        *lines,
        f"Evaluate run `{run_id}`; 95 % slide bootstrap († fewer than "
        f"{MIN_SLIDES} slides: no interval).",
        "",
        *_table(scopes),
    ]


def calibration_section(client: MlflowClient, mv: Any) -> list[str]:
    tags = mv.tags
    lines = ["## Calibration", ""]
    if LAB_TAG not in tags:
        return [
            *lines,
            f"None. Threshold {tags.get(THRESHOLD_TAG, '?')}, set in training on "
            "inner-validation slides of the training hospitals. A new lab labels 20-40 "
            "patches and runs `glomx calibrate` (docs/calibration.md).",
        ]
    lines.append(
        f"Lab **{tags[LAB_TAG]}**: threshold {_number(tags.get(CAL_THRESHOLD))} for the "
        f"model files of version {tags.get(CALIBRATED_FROM, '?')}, chosen on "
        f"{tags.get(CAL_PATCHES, '?')} patches ({tags.get(CAL_SCLEROTIC, '?')} sclerotic) from "
        f"{tags.get(CAL_SLIDES, '?')} slides of the lab."
    )
    try:
        report = _download_json(client, mv.run_id, CALIBRATION_REPORT)
    except (MlflowException, OSError, ValueError):
        return lines
    if not (
        isinstance(report, dict)
        and isinstance(report.get("metrics"), dict)
        and "slides" in report.get("counts", {})
    ):
        return lines  # a report from another glomx, or none worth a table: the tags say enough
    cuts = {
        "calibrated": f"calibrated {_number(tags.get(CAL_THRESHOLD))}",
        "0.5": "0.5",
        "source": "model's own",
    }
    rows = {cuts.get(k, k): (report["counts"]["slides"], v) for k, v in report["metrics"].items()}
    lines += [
        "",
        "On the lab's patches (the calibrated row is measured on the patches that "
        "chose it, so optimistic):",
        "",
        *_table(rows, "threshold"),
    ]
    return lines + [f"\n**Warning:** {w}" for w in report.get("warnings", [])]


def limitations(oof: OOF | None, site_regex: str | None, tags: Mapping[str, str]) -> list[str]:
    lines = ["## Limitations", ""]
    if oof is not None and (transfer := transfer_lines(oof, site_regex)):
        lines.append(
            "- **The threshold does not transfer between labs.** Out-of-fold balanced accuracy "
            f"per hospital: {'; '.join(transfer)}. Hospitals it never saw lose more (left out "
            "in turn, docs/calibration.md): calibrate before use."
        )
    weights = tags.get("weights", "")
    if weights.startswith("random"):
        lines.append(
            f"- **Random initial weights** (`weights={weights}`): no pretrained backbone could be "
            "had offline; it ranks worse than the pretrained families."
        )
    lines += [
        "- Few slides: every interval rests on a slide bootstrap over tens of slides, "
        "so it is wide; one slide's stain can move a hospital's figure.",
        "- Patch-level only: it classifies a given glomerulus crop; it does not find glomeruli, "
        "and %GS assumes every glomerulus of the slide was cropped.",
    ]
    if tags.get(DATA_KIND_TAG, "real") != "real":
        lines.append(
            f"- Trained on {tags[DATA_KIND_TAG]} data: it says nothing about real glomeruli."
        )
    return lines


def card_markdown(client: MlflowClient, name: str, version: str, site_regex: str | None) -> str:
    """The card of ``models:/<name>/<version>`` as markdown."""
    mv = client.get_model_version(name, version)
    tags = mv.tags
    oof = version_oof(client, name, version)
    family = tags.get(FAMILY_TAG, "?")
    members = f" of {tags[MEMBERS_TAG]}" if tags.get(MEMBERS_TAG) else ""
    calibrated = LAB_TAG in tags
    lines = [
        f"# Model card: {name} v{version} ({family}{members})",
        "",
        "## Model details",
        "",
        f"- P(globally sclerotic) for one PAS-stained kidney glomerulus patch; called "
        f"sclerotic from threshold {_number(tags.get(THRESHOLD_TAG))}.",
        f"- Family `{family}`{members}; registered by stage `{tags.get(VERSION_STAGE_TAG, '?')}` "
        f"(run `{mv.run_id}`)"
        + (f", initial weights `{tags['weights']}`" if tags.get("weights") else "")
        + f"; data {tags.get(DATA_KIND_TAG, '?')}.",
    ]
    aliases = ", ".join(f"`{a}`" for a in sorted(mv.aliases)) or "none"
    lines.append(
        f"- Aliases: {aliases}." + (f" {tags[REASON_TAG]}" if tags.get(REASON_TAG) else "")
    )
    lines += [
        "",
        "## Intended uses",
        "",
        "- Research, and a second reader for a pathologist: %GS per slide with its interval "
        "(`glomx predict --report`), at a lab that calibrated its threshold.",
        "",
        "### Out-of-scope uses",
        "",
        "- A decision on a patient or donor kidney without a pathologist reading the slide.",
        "- Other stains than PAS, other tissue than glomeruli, whole-slide images (it needs "
        "glomerulus crops), a lab that has not calibrated (see Limitations).",
        "",
        *training_section(oof, site_regex, tags.get(DATA_KIND_TAG, "?")),
        "",
        "## Evaluation",
        "",
        "### Out of fold (each slide scored by a model that never saw it)",
        "",
    ]
    if oof is None:
        lines.append("Not recorded: the registering run logged no out-of-fold predictions.")
    else:
        source = f" (version {tags[CALIBRATED_FROM]}'s thresholds)" if calibrated else ""
        lines += [
            f"95 % slide bootstrap († fewer than {MIN_SLIDES} slides: no interval){source}.",
            "",
            *_table(oof_rows(oof, site_regex)),
        ]
    lines += [
        "",
        *test_section(client, version, calibrated),
        "",
        *calibration_section(client, mv),
        "",
        *limitations(oof, site_regex, tags),
    ]
    return "\n".join(lines) + "\n"


def write_card(client: MlflowClient, name: str, version: str, site_regex: str | None) -> str:
    """Build the card, make it the version's description and log it as :data:`CARD_FILE`
    beside the version's logged model (the run's artifacts for a version registered from a
    run); returns it."""
    card = card_markdown(client, name, version, site_regex)
    mv = client.get_model_version(name, version)
    description = card
    if len(card) > MAX_DESCRIPTION:
        tail = f"\n\n… cut here: the whole card is `{CARD_FILE}` among the model's artifacts.\n"
        description = card[: MAX_DESCRIPTION - len(tail)] + tail
    client.update_model_version(name, version, description=description)
    source = mv.source or ""
    with tempfile.TemporaryDirectory(prefix="glomx-card-") as tmp:
        path = Path(tmp) / CARD_FILE
        path.write_text(card, encoding="utf-8")
        if source.startswith("models:/m-"):
            client.log_model_artifact(source.removeprefix("models:/"), str(path))
        elif mv.run_id:
            client.log_artifact(mv.run_id, str(path))
    return card
