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
    gradcam_note: str | None = None,
) -> str:
    """The whole report.

    ``metrics``: model -> intervals on the full test split; ``sites``: model -> site ->
    intervals; ``models``: model -> {"version", "run_id", "threshold"} (absent for the
    baseline); ``champion``: the promotion decision; ``settings``: bootstrap and TTA params;
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
        "Labels use each model's own threshold, fixed at training time (tuned on validation "
        "where configured; the baseline's is tuned on validation).",
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
        *validation_ranking(champion, data.splits.get("val")),
        "The registry alias is moved by validation metrics only; the test numbers above "
        "never take part in choosing it.",
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


def separation(ranking: list[Mapping[str, Any]], val: Mapping[str, int]) -> str:
    """How far the best candidate leads on validation balanced accuracy, against what one
    validation patch is worth; names the candidates one sclerotic patch would put level."""
    positives, negatives = val["class_1"], val["images"] - val["class_1"]
    scores = [r["balanced_accuracy"] for r in ranking]
    if len(ranking) < 2 or not positives or not negatives or math.isnan(scores[0] - scores[1]):
        return ""
    per_pos, per_neg = 1 / (2 * positives), 1 / (2 * negatives)
    text = (
        f"The best candidate leads the next by {scores[0] - scores[1]:.4f} validation balanced "
        f"accuracy; one sclerotic patch of the {val['images']} validation patches ({positives} "
        f"sclerotic, {val['slides']} slides) is worth {per_pos:.4f} and one non-sclerotic patch "
        f"{per_neg:.4f}."
    )
    level = [r["family"] for r in ranking[1:] if scores[0] - r["balanced_accuracy"] < per_pos]
    if level:
        text += (
            f" **Validation does not separate {ranking[0]['family']} from "
            f"{', '.join(level)}**: one sclerotic patch judged differently would reverse the "
            "order, so read the choice among them as a tie."
        )
    return text


def validation_ranking(champion: Mapping[str, Any], val: Mapping[str, int] | None) -> list[str]:
    """The candidates' validation scores, best first, and how far apart they are."""
    ranking, metric = champion.get("ranking") or [], champion.get("metric")
    if not ranking or not metric:
        return []
    scores = [k for k in ranking[0] if k not in ("version", "family")]
    rows = [[r["family"], str(r["version"]), *(_num(r[k], 4) for k in scores)] for r in ranking]
    lines = [*_table(["candidate", "version", *(f"val {k}" for k in scores)], rows), ""]
    if metric == "balanced_accuracy" and val and (note := separation(ranking, val)):
        lines += [note, ""]
    return lines


def champion_text(champion: Mapping[str, Any]) -> str:
    """One paragraph on the registry decision."""
    if not champion.get("version"):
        return f"No champion: {champion.get('reason', 'no registered model version')}."
    moved = "moved to" if champion.get("changed") else "stays at"
    return (
        f"Alias `champion` {moved} version {champion['version']} ({champion['family']}). "
        f"{champion['reason']}"
    )
