"""The evaluate stage: score every trained model on the held-out test split, once.

This is the only code that reads ``prepared/test``. For each saved model (and a colour-only
baseline) it computes test probabilities (optionally averaged over the 8 dihedral
transforms), metrics with slide-bootstrap intervals overall and per site, DVC plot data,
figures, Grad-CAM overlays and ``reports/summary.md``; promotes the registry alias
``champion`` to the choose stage's candidate (chosen on out-of-fold predictions, never test,
with its ``margin`` against the sitting champion); and logs it all to one MLflow ``evaluate``
run with one child run per model: the same ``test_<metric>`` names in every child (so the UI
compares them like training runs), the intervals in a ``test_metrics.json`` table, the test
store as input, and links to the scored version and its training run.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from glomx.artifacts.decision import Decision
from glomx.artifacts.layout import Layout
from glomx.config import Evaluate, Params, Promotion
from glomx.data.split import sites_of
from glomx.data.store import ArrayStore
from glomx.errors import GlomxError
from glomx.evaluation.baseline import NAME as BASELINE
from glomx.evaluation.baseline import ColourBaseline
from glomx.evaluation.bootstrap import bootstrap_metrics
from glomx.evaluation.calibration import reliability_figure
from glomx.evaluation.metrics import confusion_figure, pr_figure, roc_figure, write_plot_data
from glomx.evaluation.report import DataSummary, strict, summary_markdown, with_interval
from glomx.evaluation.selection import ENSEMBLE
from glomx.evaluation.tta import score_store
from glomx.files import write_json
from glomx.models import load_classifier, load_predictor
from glomx.models.base import META_FILE, Predictor
from glomx.models.exported import ExportedModel
from glomx.models.mean import MeanModel, keras_member
from glomx.progress import EVERY, Progress
from glomx.tracking import StageRun, run_link, stage_run, version_link
from glomx.tracking.names import EVALUATED_VERSION, TEST_TABLE
from glomx.tracking.pyfunc import files_digest
from glomx.tracking.registry import promote, refresh_cards, version_of

log = logging.getLogger(__name__)


class EvaluateError(GlomxError, RuntimeError):
    """Nothing to evaluate, or inputs that do not fit together."""


@dataclass(frozen=True)
class Scored:
    """One model's test probabilities and where the model came from."""

    name: str
    proba: np.ndarray
    threshold: float
    version: str | None = None
    run_id: str | None = None


@dataclass(frozen=True)
class Trained:
    """A saved model found under ``models/``."""

    family: str
    directory: Path
    classifier: Predictor


def trained_models(layout: Layout, families: list[str], decision: Decision) -> list[Trained]:
    """The saved models among ``families``, and the choose stage's candidate when it is not
    one of them (the ensemble)."""
    dirs = [layout.model(f) for f in families if (layout.model(f) / META_FILE).is_file()]
    if not dirs:
        raise EvaluateError(
            f"no trained model under {layout.paths.models}/ ({', '.join(families)}); "
            "run the training stages first (`dvc repro`)"
        )
    if decision.candidate not in families:
        dirs.append(decision.model_dir(layout))
    return [Trained(d.name, d, load_predictor(d)) for d in dirs]


def _split_counts(store: ArrayStore) -> dict[str, int]:
    return {
        "images": len(store),
        "class_1": int(store.labels.sum()),
        "slides": len(set(store.slides)),
    }


def data_summary(stores: Mapping[str, ArrayStore], sites: np.ndarray) -> DataSummary:
    """Data kind from the prepared manifest, counts per split and per test site."""
    test = stores["test"]
    kind = test.data_kind
    slides = np.array(test.slides)
    per_site = {}
    for site in sorted(set(sites.tolist())):
        mask = sites == site
        per_site[site] = {
            "images": int(mask.sum()),
            "class_1": int(test.labels[mask].sum()),
            "slides": len(set(slides[mask].tolist())),
        }
    return DataSummary(kind, {k: _split_counts(s) for k, s in stores.items()}, per_site)


def _intervals(
    y: np.ndarray, proba: np.ndarray, slides: np.ndarray, threshold: float, cfg: Evaluate
) -> dict[str, dict[str, float]]:
    boot = cfg.bootstrap
    return bootstrap_metrics(
        y,
        proba,
        slides,
        threshold,
        n_resamples=boot.n_resamples,
        confidence=boot.confidence,
        seed=boot.seed,
        n_bins=cfg.calibration_bins,
    )


def _has_keras(model: Predictor) -> bool:
    """Whether ``model`` holds a Keras network: it is an export (only Keras bags have one),
    or it holds one natively."""
    return isinstance(model, ExportedModel) or keras_member(model) is not None


def _gradcam_figures(
    trained: list[Trained],
    scored: Mapping[str, Scored],
    test: ArrayStore,
    sites: np.ndarray,
    per_case: int,
    out: Path,
) -> tuple[list[Path], str | None]:
    """Grad-CAM overlays for the Keras models on their most confident TP, TN, FP and FN,
    each tile captioned with its slide and site → (figures, why there are none or None).
    Grad-CAM needs the Keras network, not the export the scores came from: an exported family
    is loaded natively, one at a time."""
    families = [t for t in trained if t.family != ENSEMBLE and _has_keras(t.classifier)]
    if not families or per_case < 1:
        return [], None
    from glomx.evaluation import gradcam  # imports Keras: only when a Keras model is evaluated

    if reason := gradcam.unavailable_reason():
        log.warning(reason)
        return [], reason
    slides = np.array(test.slides)
    written = []
    gradcams = Progress("evaluate: Grad-CAM overlays", len(families), "models", rate=False)
    for t in gradcams.each(families):
        native = load_classifier(t.directory) if isinstance(t.classifier, ExportedModel) else None
        clf = keras_member(native or t.classifier)
        if clf is None:
            continue
        family, s = t.family, scored[t.family]
        cases = gradcam.pick_cases(test.labels, s.proba, s.threshold, per_case)
        images = {case: test.read(idx) for case, idx in cases.items()}
        maps = {
            case: gradcam.gradcam(clf.keras_model, imgs, clf.meta.size, clf.meta.channels)
            for case, imgs in images.items()
            if len(imgs)
        }
        proba = {case: s.proba[idx] for case, idx in cases.items()}
        captions = {
            case: [f"{slide} ({site})" for slide, site in zip(slides[idx], sites[idx], strict=True)]
            for case, idx in cases.items()
        }
        fig = gradcam.overlay_figure(family, images, maps, proba, captions)
        path = out / f"gradcam_{family}.png"
        fig.savefig(path)
        written.append(path)
    return written, None


def _figures(y: np.ndarray, scored: Mapping[str, Scored], n_bins: int, out: Path) -> list[Path]:
    """ROC and PR curves of all models overlaid, reliability diagram, one confusion matrix
    per model."""
    curves = {name: (y, s.proba) for name, s in scored.items()}
    figures = {
        "roc.png": roc_figure(curves),
        "pr.png": pr_figure(curves),
        "reliability.png": reliability_figure(curves, n_bins),
    }
    for name, s in scored.items():
        pred = (s.proba >= s.threshold).astype(np.int64)
        figures[f"confusion_{name}.png"] = confusion_figure(y, pred, f"{name} (test)")
    for file, fig in figures.items():
        fig.savefig(out / file)
    return [out / f for f in figures]


def _from_members(t: Trained, scored: Mapping[str, Scored], layout: Layout) -> np.ndarray | None:
    """A mean model's test probabilities from its members' when every member is a scored
    model's very files (the ensemble copies the bags): a mean of means, no second pass."""
    members = list(t.classifier.members) if isinstance(t.classifier, MeanModel) else []
    if t.family in members or not members or not all(m in scored for m in members):
        return None
    if any(files_digest(t.directory / m) != files_digest(layout.model(m)) for m in members):
        return None
    return np.mean([scored[m].proba for m in members], axis=0)


def score_models(
    trained: list[Trained],
    stores: Mapping[str, ArrayStore],
    cfg: Evaluate,
    layout: Layout,
    *,
    every: float = EVERY,
) -> dict[str, Scored]:
    """Test probabilities of every model, linked to the registered version holding its files,
    and of the colour baseline (fitted on train, threshold 0.5); the images scored of each
    model are shown every ``every`` seconds (:class:`~glomx.progress.Progress`)."""
    test = stores["test"]
    scored: dict[str, Scored] = {}
    models = len(trained) + cfg.baseline

    def progress(name: str, rank: int) -> Progress:
        what = f"evaluate: scoring {name} ({rank} of {models} models)"
        return Progress(what, len(test), "images", every=every)

    for rank, t in enumerate(trained, 1):
        registered = version_of(t.directory)
        if registered is None:
            log.warning(
                "%s: no registered version holds %s; not a candidate", t.family, t.directory
            )
        proba = _from_members(t, scored, layout)
        if proba is None:
            with progress(t.family, rank) as bar:
                proba = score_store(t.classifier, test, cfg.tta, cfg.batch_size, bar)
        scored[t.family] = Scored(
            t.family,
            proba,
            t.classifier.meta.threshold,
            registered.version if registered else None,
            registered.run_id if registered else None,
        )
    if cfg.baseline:
        base = ColourBaseline(cfg.bootstrap.seed).fit(stores["train"])
        with progress(BASELINE, models) as bar:
            proba = score_store(base, test, False, cfg.batch_size, bar)
        scored[BASELINE] = Scored(BASELINE, proba, base.threshold)
    return scored


def assess(
    scored: Mapping[str, Scored], test: ArrayStore, sites: np.ndarray, cfg: Evaluate
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Metrics with intervals per model on the whole test split, and per site when there
    are several sites."""
    y, slides = test.labels.astype(np.int64), np.array(test.slides)
    metrics = {n: _intervals(y, s.proba, slides, s.threshold, cfg) for n, s in scored.items()}
    names = sorted(set(sites.tolist()))
    if len(names) < 2:
        return metrics, {}
    per_site = {
        n: {
            site: _intervals(y[m], s.proba[m], slides[m], s.threshold, cfg)
            for site in names
            if (m := sites == site).any()
        }
        for n, s in scored.items()
    }
    return metrics, per_site


def choose_champion(
    scored: Mapping[str, Scored], decision: Decision, rules: Promotion
) -> dict[str, Any]:
    """Promote the choose stage's candidate (chosen on out-of-fold predictions) if it is
    registered and beats the sitting champion's out-of-fold ``metric`` by ``margin``."""
    chosen = scored.get(decision.candidate)
    if chosen is None or not chosen.version:
        return {
            "version": None,
            "family": None,
            "reason": f"the candidate {decision.candidate} has no registered version",
        }
    return promote(chosen.version, decision.reason, rules.metric, rules.margin).as_dict()


def interval_rows(
    model: str, metrics: Mapping[str, Any], per_site: Mapping[str, Any], data: DataSummary
) -> list[dict[str, Any]]:
    """One row per (scope, metric): the whole test split, then each site, with its slide
    count, point value and interval (None where there is none)."""
    scopes = {"test": (metrics, data.splits["test"]["slides"])}
    scopes |= {f"site {site}": (m, data.sites[site]["slides"]) for site, m in per_site.items()}
    return [
        {
            "model": model,
            "scope": scope,
            "slides": slides,
            "metric": metric,
            **{part: None if np.isnan(v) else v for part, v in values.items()},
        }
        for scope, (intervals, slides) in scopes.items()
        for metric, values in intervals.items()
    ]


def _model_note(name: str, s: Scored, parent: str) -> str:
    """The child run's description: what was scored, with links to it."""
    if s.version:
        source = f"registered version {version_link(s.version)}"
        source += f", trained by run {run_link(s.run_id)}" if s.run_id else ""
    elif name == BASELINE:
        source = (
            "the colour-only baseline (fitted on the cross-validated slides, threshold 0.5, "
            "not registered)"
        )
    else:
        source = "a saved model that no registered version holds (not a promotion candidate)"
    return (
        f"Test scores of **{name}**: {source}. Part of evaluation {run_link(parent)}. "
        f"Metrics `test_<metric>` on the test split; 95 % slide-bootstrap intervals, overall "
        f"and per site, in `{TEST_TABLE}`."
    )


def _evaluation_note(
    metrics: Mapping[str, Any], scored: Mapping[str, Scored], decision: Mapping[str, Any]
) -> str:
    """The parent run's description: one line per model with links, and the champion."""
    rows = [
        "| model | version | trained by | test bal. acc. | test ROC-AUC |",
        "|---|---|---|---|---|",
    ]
    for name, s in scored.items():
        version = version_link(s.version) if s.version else "—"
        trained = run_link(s.run_id) if s.run_id else "—"
        m = metrics[name]
        rows.append(
            f"| {name} | {version} | {trained} | {with_interval(m['balanced_accuracy'])} | "
            f"{with_interval(m['roc_auc'])} |"
        )
    champion = (
        f"Champion: {version_link(str(decision['version']))} ({decision['family']}), chosen "
        "on out-of-fold predictions of the cross-validated slides only."
        if decision.get("version")
        else f"No champion: {decision.get('reason')}."
    )
    return "\n".join(
        [
            "Held-out test split; one child run per model (same `test_<metric>` names).",
            "",
            *rows,
            "",
            champion,
        ]
    )


def _log_run(
    run: StageRun,
    data: DataSummary,
    test: ArrayStore,
    metrics: Mapping[str, Any],
    per_site: Mapping[str, Any],
    scored: Mapping[str, Scored],
    decision: Mapping[str, Any],
    artifacts: list[Path],
) -> None:
    """The evaluation run: the test store as input, files, the intervals table, links to the
    runs and versions evaluated; and one child run per model with its ``test_<metric>``
    scores (linked to the version's logged model), its rows of the table and its links."""
    run.log_dataset(test, "test")
    for path in artifacts:
        run.log_artifact(path)
    rows = []
    for name, s in scored.items():
        table = interval_rows(name, metrics[name], per_site.get(name, {}), data)
        rows += table
        tags = {"glomx.model": name}
        tags |= {EVALUATED_VERSION: s.version} if s.version else {}
        tags |= {"evaluated.run_id": s.run_id} if s.run_id else {}
        with run.child(name, tags) as child:
            child.log_dataset(test, "test")
            values = {f"test_{k}": m["value"] for k, m in metrics[name].items()}
            child.log_scores(
                {k: v for k, v in values.items() if not np.isnan(v)}, s.version, "test"
            )
            child.log_table(table, TEST_TABLE)
            child.set_note(_model_note(name, s, run.run_id))
    run.log_table(rows, TEST_TABLE)
    tags = {f"evaluated.{n}.version": s.version for n, s in scored.items() if s.version}
    tags |= {f"evaluated.{n}.run_id": s.run_id for n, s in scored.items() if s.run_id}
    run.set_tags({**tags, "champion.version": str(decision["version"])})
    run.set_note(_evaluation_note(metrics, scored, decision))


@dataclass(frozen=True)
class Evaluation:
    """The test split's verdict: every model's scores and metrics with intervals, overall and
    per site, and what promotion did with choose's candidate."""

    data: DataSummary
    scored: dict[str, Scored]
    metrics: dict[str, Any]
    per_site: dict[str, Any]
    promotion: dict[str, Any]  # the champion's version and family, and why

    @property
    def result(self) -> dict[str, Any]:
        """What ``metrics/evaluate.json`` holds."""
        return {
            "data_kind": self.data.kind,
            "test": self.data.splits["test"],
            "champion": {k: self.promotion[k] for k in ("version", "family")},
            "models": self.metrics,
        }


def record(
    done: Evaluation,
    trained: list[Trained],
    test: ArrayStore,
    sites: np.ndarray,
    selection: Decision,
    cfg: Evaluate,
    layout: Layout,
    run: StageRun,
) -> None:
    """Write the plot data, figures, summary, per-site table and metrics file, and log them
    with one child run per model."""
    scored, promotion = done.scored, done.promotion
    reports, plots = layout.reports, layout.plots("evaluate")
    reports.mkdir(parents=True, exist_ok=True)
    y = test.labels.astype(np.int64)
    for name, s in scored.items():
        write_plot_data(plots / name, y, s.proba, s.threshold)
    artifacts = _figures(y, scored, cfg.calibration_bins, reports)
    gradcams, no_gradcam = _gradcam_figures(
        trained, scored, test, sites, cfg.gradcam_per_case, reports
    )
    artifacts += gradcams
    info = {n: {"version": s.version, "threshold": s.threshold} for n, s in scored.items()}
    settings = {**cfg.bootstrap.model_dump(), "tta": cfg.tta}
    summary = summary_markdown(
        done.data,
        done.metrics,
        done.per_site,
        info,
        promotion,
        settings,
        selection.as_dict(),
        no_gradcam,
    )
    (reports / "summary.md").write_text(summary)
    write_json(reports / "sites.json", strict(done.per_site))
    write_json(layout.metrics("evaluate"), strict(done.result))
    files = [*artifacts, reports / "summary.md", reports / "sites.json"]
    _log_run(run, done.data, test, done.metrics, done.per_site, scored, promotion, files)


def evaluate(params: Params) -> Evaluation:
    """Run the whole stage (sections ``paths``, ``evaluate`` and prepare's ``site_regex``):
    score every model on the test split, promote choose's candidate, then record it all."""
    layout, cfg = Layout(params.need("paths")), params.need("evaluate")
    stores = {s: ArrayStore(layout.prepared(s)) for s in ("train", "test")}
    test = stores["test"]
    site_regex = params.need("prepare").site_regex  # null: no sites, one whole-split report
    sites = sites_of(test.slides, site_regex) if site_regex else np.full(len(test), "all")
    data = data_summary(stores, sites)
    selection = Decision.read(layout.decision)
    trained = trained_models(layout, cfg.families, selection)
    if data.kind != "real":
        log.warning("evaluating on %s data: results say nothing about real glomeruli", data.kind)

    with stage_run("evaluate", cfg.model_dump(), data.kind) as run:
        scored = score_models(trained, stores, cfg, layout)
        metrics, per_site = assess(scored, test, sites, cfg)
        promotion = choose_champion(scored, selection, cfg.promotion)
        done = Evaluation(data, scored, metrics, per_site, promotion)
        record(done, trained, test, sites, selection, cfg, layout, run)
        refresh_cards([s.version for s in scored.values() if s.version], site_regex)
    return done


def run(params: Params) -> str:
    """The evaluate stage; returns its summary: each model's test balanced accuracy, the
    champion."""
    result = evaluate(params).result
    lines = [
        f"{name:>16}: test balanced accuracy {with_interval(m['balanced_accuracy'])}"
        for name, m in result["models"].items()
    ]
    champion = result["champion"]
    return "\n".join(
        [
            *lines,
            f"champion: version {champion['version']} ({champion['family']}); "
            "see reports/summary.md",
        ]
    )
