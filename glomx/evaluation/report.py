"""reports/summary.md: every model's test metrics with intervals, the champion, the data."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from glomx.evaluation.bootstrap import MIN_SLIDES

Intervals = Mapping[str, Mapping[str, float]]  # metric -> {"value", "ci_low", "ci_high"}

COLUMNS = {
    "balanced_accuracy": "bal. acc.",
    "recall": "sensitivity",
    "specificity": "specificity",
    "precision": "precision",
    "f1": "F1",
    "mcc": "MCC",
    "roc_auc": "ROC-AUC",
    "pr_auc": "PR-AUC",
    "accuracy": "accuracy",
    "brier": "Brier ↓",
    "ece": "ECE ↓",
}
FEW_SLIDES = 10  # below this many test slides, warn that the intervals are unreliable
NO_INTERVAL = "†"
NO_INTERVAL_NOTE = (
    f"{NO_INTERVAL} No interval: fewer than {MIN_SLIDES} test slides, too few to resample "
    "(a bootstrap over 2-4 slides gives a degenerate interval)."
)
SITE_COLUMNS = ("balanced_accuracy", "recall", "specificity", "roc_auc")


@dataclass(frozen=True)
class DataSummary:
    """What the numbers were computed on."""

    kind: str  # "real" | "synthetic" (prepared store manifest "data_kind")
    splits: Mapping[str, Mapping[str, int]]  # split -> images, class_1, slides
    sites: Mapping[str, Mapping[str, int]]  # test site -> images, class_1, slides


def strict(value: Any) -> Any:
    """NaN → None, recursively, so that a metrics file or report is strict JSON."""
    if isinstance(value, dict):
        return {k: strict(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [strict(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _num(v: float, digits: int = 3) -> str:
    return "n/a" if math.isnan(v) else f"{v:.{digits}f}"


def with_interval(m: Mapping[str, float], slides: int | None = None) -> str:
    """``0.812 [0.751, 0.866]``; ``0.495 †`` when ``slides`` are too few for an interval."""
    if slides is not None and slides < MIN_SLIDES:
        return f"{_num(m['value'])} {NO_INTERVAL}"
    if math.isnan(m["ci_low"]):
        return _num(m["value"])
    return f"{_num(m['value'])} [{_num(m['ci_low'])}, {_num(m['ci_high'])}]"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


CITATION = (
    "Real patches: glomeruli from the AIDPATH whole-slide images of Bueno et al., Data in Brief "
    "29 (2020) 105314 (CC BY 4.0), as prepared for Weishaupt et al., Computers in Biology and "
    "Medicine 196 (2025) 110719 (CC BY-NC-SA 4.0)."
)


def _data_lines(data: DataSummary) -> list[str]:
    lines = []
    if data.kind != "real":
        lines.append(
            f"> **{data.kind.upper()} DATA.** These numbers say nothing about real glomeruli."
        )
        lines.append("")
    lines.append(f"Data: **{data.kind}**." + (f" {CITATION}" if data.kind == "real" else ""))
    lines.append("")
    rows = [
        [s, str(c["images"]), str(c["class_1"]), str(c["slides"])] for s, c in data.splits.items()
    ]
    return lines + _table(["split", "images", "sclerotic", "slides"], rows)


def summary_markdown(
    data: DataSummary,
    metrics: Mapping[str, Intervals],
    sites: Mapping[str, Mapping[str, Intervals]],
    models: Mapping[str, Mapping[str, Any]],
    champion: Mapping[str, Any],
    settings: Mapping[str, Any],
    selection: Mapping[str, Any] | None = None,
    gradcam_note: str | None = None,
) -> str:
    """The whole report.

    ``metrics``: model -> intervals on the full test split; ``sites``: model -> site ->
    intervals; ``models``: model -> {"version", "run_id", "threshold"} (absent for the
    baseline); ``champion``: the promotion decision; ``settings``: bootstrap and TTA params;
    ``selection``: the select stage's decision (out-of-fold ranking, intervals, ties);
    ``gradcam_note``: why there are no Grad-CAM figures, when there are none.
    """
    lines = ["# glomx evaluation (held-out test split)", "", *_data_lines(data), ""]
    test_slides = data.splits["test"]["slides"]
    if test_slides < FEW_SLIDES:
        lines += [
            f"> Only {test_slides} test slide(s): slide-bootstrap intervals from so few clusters "
            "are unreliable (often too narrow); read them as a rough indication only.",
            "",
        ]
    lines += [
        f"Intervals: {settings['confidence']:.0%} percentile intervals from "
        f"{settings['n_resamples']} bootstrap resamples of test *slides* (seed "
        f"{settings['seed']}). Test-time augmentation: "
        f"{'mean over 8 dihedral transforms' if settings['tta'] else 'off'}. "
        "Labels use each model's own threshold, fixed at training time (0.5 unless "
        "`threshold.tune` chose one on each fold's inner-validation slides; the baseline's is "
        "0.5).",
        "",
        "## Test metrics",
        "",
    ]
    header = ["model", "version", "threshold", *COLUMNS.values()]
    rows = []
    for name, intervals in metrics.items():
        info = models.get(name, {})
        rows.append(
            [name, str(info.get("version") or "—"), f"{info.get('threshold', math.nan):.3f}"]
            + [with_interval(intervals[k], test_slides) for k in COLUMNS]
        )
    lines += [*_table(header, rows), ""]
    if test_slides < MIN_SLIDES:
        lines += [NO_INTERVAL_NOTE, ""]
    lines += [
        "## Champion",
        "",
        champion_text(champion),
        "",
        *selection_lines(selection or {}),
        "The candidate is chosen on out-of-fold predictions of the cross-validated slides only; "
        "the test numbers above never take part in choosing it.",
        "",
    ]
    if sites:
        lines += ["## Per site (test)", ""]
        counts = data.sites
        rows = [
            [site, name, *(str(counts[site][k]) for k in ("images", "class_1", "slides"))]
            + [with_interval(per_site[site][k], counts[site]["slides"]) for k in SITE_COLUMNS]
            for name, per_site in sites.items()
            for site in per_site
        ]
        header = ["site", "model", "images", "sclerotic", "slides"]
        header += [COLUMNS[k] for k in SITE_COLUMNS]
        lines += [*_table(header, rows), ""]
        if any(c["slides"] < MIN_SLIDES for c in counts.values()):
            lines += [NO_INTERVAL_NOTE, ""]
    gradcam = f"not drawn: {gradcam_note}" if gradcam_note else "`gradcam_<model>.png`"
    lines += [
        "## Figures",
        "",
        "ROC: `roc.png` · precision-recall: `pr.png` · reliability: `reliability.png` · "
        f"confusion matrices: `confusion_<model>.png` · Grad-CAM: {gradcam}",
        "",
    ]
    return "\n".join(lines)


def selection_lines(selection: Mapping[str, Any]) -> list[str]:
    """The out-of-fold ranking with intervals, each family's difference to the best with its
    paired interval and whether it ties, and the decision."""
    ranking = selection.get("ranking") or []
    if not ranking:
        return []
    best = ranking[0]["family"]
    differences = selection.get("differences") or {}
    rows = []
    for r in ranking:
        d = differences.get(r["family"])
        diff = "—" if d is None else with_interval(d)
        tie = "best" if d is None else ("**tied**" if d["tied"] else "separated")
        rows.append(
            [
                r["family"],
                with_interval(r["balanced_accuracy"]),
                with_interval(r["roc_auc"]),
                diff,
                tie,
            ]
        )
    if ensemble := selection.get("ensemble"):
        rows.append(
            [
                f"ensemble ({', '.join(ensemble['members'])})",
                with_interval(ensemble["balanced_accuracy"]),
                with_interval(ensemble["roc_auc"]),
                "—",
                "candidate",
            ]
        )
    header = ["model", "OOF bal. acc.", "OOF ROC-AUC", f"{best} minus it (paired)", "vs best"]
    return [
        "### Out-of-fold selection (cross-validated slides, never test)",
        "",
        f"Rule: {selection.get('rule', '')}.",
        "",
        *_table(header, rows),
        "",
        f"Decision: {selection.get('reason', '')}",
        "",
    ]


def champion_text(champion: Mapping[str, Any]) -> str:
    """One paragraph on the registry decision."""
    if not champion.get("version"):
        return f"No champion: {champion.get('reason', 'no registered model version')}."
    moved = "moved to" if champion.get("changed") else "stays at"
    return (
        f"Alias `champion` {moved} version {champion['version']} ({champion['family']}). "
        f"{champion['reason']}"
    )
