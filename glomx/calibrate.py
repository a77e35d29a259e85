"""Calibrate a registered model's decision threshold to one lab's labelled patches.

A model trained on some hospitals' scans scores another lab's patches on a shifted scale
(stain, scanner, section thickness): its ranking often survives, its threshold does not. A lab
labels a few patches in the challenge layout; every patch is scored, the threshold maximising
balanced accuracy on them is chosen (ties: the midpoint of the tied interval), and a new
registry version with the same model files and that threshold gets alias ``lab-<NAME>``.
``champion`` and ``previous`` never move: a lab's patches never choose everyone's model.

Figures at the calibrated threshold are measured on the patches that chose it, so they are
optimistic; with few patches or slides the report says plainly that the threshold is not to
be trusted yet.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from glomx.data.catalogue import FOLDERS, read_catalogue
from glomx.data.images import DEFAULT_MAX_PIXELS
from glomx.data.synth import data_kind
from glomx.errors import GlomxError, UsageError
from glomx.evaluation.bootstrap import MIN_SLIDES as MIN_SLIDES_FOR_INTERVALS
from glomx.evaluation.bootstrap import bootstrap_metrics
from glomx.evaluation.metrics import choose_threshold
from glomx.evaluation.tta import predict_batch
from glomx.predict import _decoded, _scored_locally
from glomx.progress import Progress
from glomx.tracking import names
from glomx.tracking.names import DEFAULT_MODEL, lab_alias

MIN_PER_CLASS = 10  # fewer patches of a class than this: the threshold is not to be trusted
MIN_SLIDES = 3  # likewise for slides (patches of one slide share stain and tissue)
SHOWN = {
    "balanced_accuracy": "balanced accuracy",
    "recall": "sensitivity",
    "specificity": "specificity",
}


class CalibrationError(GlomxError, ValueError):
    """The lab's data cannot be calibrated on; the message says why and what to do."""


@dataclass(frozen=True)
class LabScores:
    """Every patch of a lab: label, model probability and slide."""

    labels: np.ndarray
    proba: np.ndarray
    slides: np.ndarray
    example: np.ndarray  # the first decoded patch, (1, H, W, C): the logged input example


def score_lab(
    data_dir: Path,
    classifier: Any,
    *,
    tta: bool = False,
    slide_regex: str,
    batch_size: int = 64,
    workers: int = 2,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> LabScores:
    """Validate ``data_dir`` as prepare does (:func:`read_catalogue`), refuse a lab without
    both classes, and score every patch as ``glomx predict`` would; an unreadable patch is an
    error, since a silently smaller calibration set would misstate what the threshold rests on."""
    records = read_catalogue(data_dir, slide_regex=slide_regex).records
    labels = np.array([r.label for r in records], dtype=np.int64)
    for label, folder in FOLDERS.items():
        if not (labels == label).any():
            raise CalibrationError(
                f"{data_dir} has no patch in {folder}/: a threshold is chosen between the two "
                "classes, so label patches of both (ideally at least "
                f"{MIN_PER_CLASS} of each, from {MIN_SLIDES} or more slides)"
            )
    pre = classifier.meta.preprocessing
    proba: list[np.ndarray] = []
    errors: list[str] = []
    first: np.ndarray | None = None
    files = [r.path for r in records]
    with Progress("calibrate: scoring the lab's patches", len(files), "images") as bar:
        for _, decoded in _decoded(files, pre, max_pixels, batch_size, workers):
            errors += [d for d in decoded if isinstance(d, str)]
            images = [d for d in decoded if not isinstance(d, str)]
            if images and not errors:
                first = images[0][None] if first is None else first
                proba.append(predict_batch(classifier, np.stack(images), tta))
            bar.update(len(decoded))
    if errors:
        listed = "\n  ".join(errors[:20])
        raise CalibrationError(
            f"{len(errors)} unreadable patch(es) in {data_dir}:\n  {listed}\n"
            "Replace or remove them (and their rows in the CSV), then calibrate again"
        )
    assert first is not None  # records exist and none failed
    slides = np.array([r.slide for r in records])
    return LabScores(labels, np.concatenate(proba).astype(np.float64), slides, first)


def _clean(value: float) -> float | None:
    return None if math.isnan(value) else round(float(value), 6)


@dataclass
class Calibration:
    """What a lab's calibration found; :meth:`tags`, :meth:`as_dict` and :meth:`markdown`."""

    lab: str
    source: str  # models:/NAME/VERSION the threshold was chosen for
    source_threshold: float
    threshold: float
    tta: bool
    n_sclerotic: int
    n_non_sclerotic: int
    n_slides: int
    metrics: dict[str, dict[str, dict[str, float]]]  # row → metric → value, ci_low, ci_high
    warnings: list[str] = field(default_factory=list)
    version: str | None = None  # the registered calibrated version, once registered

    @property
    def n_patches(self) -> int:
        return self.n_sclerotic + self.n_non_sclerotic

    @property
    def calibrated(self) -> dict[str, float]:
        return {k: v["value"] for k, v in self.metrics["calibrated"].items()}

    def tags(self) -> dict[str, str]:
        """Tags of the calibrated registry version (:data:`~glomx.tracking.names.CALIBRATED_FROM`
        is the source version)."""
        figures = {k: f"{v:.6g}" for k, v in self.calibrated.items()}
        return {
            names.LAB_TAG: self.lab,
            names.CALIBRATED_FROM: self.source.rsplit("/", 1)[1],
            names.CAL_PATCHES: str(self.n_patches),
            names.CAL_SLIDES: str(self.n_slides),
            names.CAL_SCLEROTIC: str(self.n_sclerotic),
            names.CAL_NON_SCLEROTIC: str(self.n_non_sclerotic),
            names.CAL_THRESHOLD: f"{self.threshold:.6g}",
            names.CAL_TTA: str(self.tta).lower(),
            names.CAL_SENSITIVITY: figures["recall"],
            names.CAL_SPECIFICITY: figures["specificity"],
            names.CAL_BALANCED_ACCURACY: figures["balanced_accuracy"],
            names.CAL_ROC_AUC: figures["roc_auc"],
        }

    def as_dict(self) -> dict[str, Any]:
        return {
            "lab": self.lab,
            "alias": lab_alias(self.lab),
            "version": self.version,
            "calibrated_from": self.source,
            "tta": self.tta,
            "counts": {
                "patches": self.n_patches,
                "sclerotic": self.n_sclerotic,
                "non_sclerotic": self.n_non_sclerotic,
                "slides": self.n_slides,
            },
            "threshold": {"source": self.source_threshold, "calibrated": self.threshold},
            "metrics": {
                row: {m: {k: _clean(v) for k, v in d.items()} for m, d in by_metric.items()}
                for row, by_metric in self.metrics.items()
            },
            "warnings": self.warnings,
        }

    def markdown(self) -> str:
        def cell(d: dict[str, float]) -> str:
            if math.isnan(d["value"]):
                return "n/a"
            ci = "" if math.isnan(d["ci_low"]) else f" ({d['ci_low']:.3f}–{d['ci_high']:.3f})"
            return f"{d['value']:.3f}{ci}"

        target = f"models:/glomx/{self.version}" if self.version else "not registered"
        lines = [
            f"# Calibration for lab {self.lab}",
            "",
            f"Model {self.source} (threshold {self.source_threshold:.4g}"
            f"{', TTA scores' if self.tta else ''}) → {target}, alias `{lab_alias(self.lab)}`, "
            f"threshold **{self.threshold:.4g}**.",
            "",
            f"{self.n_patches} patches ({self.n_sclerotic} sclerotic, {self.n_non_sclerotic} "
            f"not) from {self.n_slides} slides. ROC-AUC "
            f"{cell(self.metrics['calibrated']['roc_auc'])}.",
            "",
            "| threshold | " + " | ".join(SHOWN.values()) + " |",
            "|---|" + "---|" * len(SHOWN),
        ]
        for row, by_metric in self.metrics.items():
            label = {"0.5": "0.5", "source": f"{self.source_threshold:.4g} (model's)"}.get(
                row, f"{self.threshold:.4g} (calibrated)"
            )
            lines.append(f"| {label} | " + " | ".join(cell(by_metric[m]) for m in SHOWN) + " |")
        lines += [
            "",
            (
                f"Intervals: 95 % slide bootstrap ({self.n_slides} slides)."
                if self.n_slides >= MIN_SLIDES_FOR_INTERVALS
                else f"No intervals: fewer than {MIN_SLIDES_FOR_INTERVALS} slides."
            )
            + " The calibrated row is measured on the patches that chose the threshold, so it "
            "is optimistic.",
        ]
        if self.tta:
            lines.append("The threshold is for TTA scores: predict with `--tta`.")
        lines += [f"\n**Warning:** {w}" for w in self.warnings]
        return "\n".join(lines) + "\n"


def calibrate(
    scores: LabScores, lab: str, source: str, source_threshold: float, tta: bool = False
) -> Calibration:
    """The balanced-accuracy threshold for the lab's patches and the figures around it."""
    y, p = scores.labels, scores.proba
    threshold = choose_threshold(y, p, "balanced_accuracy", ties="interval")
    cuts = {"0.5": 0.5, "source": source_threshold, "calibrated": threshold}
    if source_threshold == 0.5:
        del cuts["source"]
    metrics = {}
    for row, cut in cuts.items():
        boot = bootstrap_metrics(y, p, scores.slides, cut)
        metrics[row] = {m: boot[m] for m in (*SHOWN, "roc_auc")}
    n_pos, n_slides = int(y.sum()), len(set(scores.slides.tolist()))
    counts = (n_pos, len(y) - n_pos)
    warnings = []
    if min(counts) < MIN_PER_CLASS or n_slides < MIN_SLIDES:
        warnings.append(
            f"only {counts[0]} sclerotic and {counts[1]} non-sclerotic patches from "
            f"{n_slides} slide(s): this threshold is not to be trusted yet. Label at least "
            f"{MIN_PER_CLASS} patches of each class from {MIN_SLIDES} or more slides and "
            "calibrate again."
        )
    return Calibration(lab, source, source_threshold, threshold, tta, *counts, n_slides,
                       metrics, warnings)  # fmt: skip


UNLABELLED = "unlabelled"  # the folder of a suggested draw's patches, until they are labelled
SHEET = "contact_sheet.png"
SHEET_TILE, SHEET_COLUMNS = 180, 5


@dataclass(frozen=True)
class Suggestion:
    """A suggested draw: where it was written, how many patches of how many slides, on which
    side of the model's threshold, and the files that could not be scored."""

    out: Path
    n: int
    slides: int
    above: int
    threshold: float
    unreadable: list[str]


def _contact_sheet(files: list[Path], path: Path) -> None:
    """The patches in a grid, each with its row number in the CSV and its file name."""
    from PIL import Image, ImageDraw

    from glomx.data.images import decode

    rows = -(-len(files) // SHEET_COLUMNS)
    sheet = Image.new("RGB", (SHEET_COLUMNS * SHEET_TILE, rows * (SHEET_TILE + 30)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, file in enumerate(files):
        tile = Image.fromarray(decode(file, 3))
        tile.thumbnail((SHEET_TILE - 8, SHEET_TILE - 8))
        x, y = (i % SHEET_COLUMNS) * SHEET_TILE, (i // SHEET_COLUMNS) * (SHEET_TILE + 30)
        sheet.paste(tile, (x + 4, y + 4))
        draw.text((x + 4, y + SHEET_TILE - 2), f"{i + 1}. {file.name[:26]}", fill="black")
    sheet.save(path)


def suggest_lab(
    unlabelled: Path,
    lab: str,
    n: int,
    out: Path,
    *,
    model: str = DEFAULT_MODEL,
    slide_regex: str,
    batch_size: int = 64,
    workers: int = 2,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Suggestion:
    """Score every patch under ``unlabelled`` and write the ``n`` to label first
    (:func:`glomx.evaluation.suggest.suggest`) to ``out``: ``public.csv`` with an empty
    ground-truth column, the patches in ``unlabelled/`` and :data:`SHEET`; whole or not at all.
    Once the CSV is filled, ``glomx calibrate OUT --lab NAME`` reads it (:func:`sort_labelled`)."""
    from glomx.data.catalogue import LABEL_COLUMN, NAME_COLUMN, slide_of, slide_pattern
    from glomx.evaluation.suggest import suggest
    from glomx.files import escaped, replacing
    from glomx.predict import NO_SLIDE, collect_files, load_model

    lab_alias(lab)
    if n < 1:
        raise CalibrationError(f"--suggest {n}: ask for at least 1 patch (20-40 is the advice)")
    if out.exists():
        raise CalibrationError(f"{out} exists: choose another --out, or remove it first")
    files = collect_files([unlabelled])
    if not files:
        raise CalibrationError(f"no image files (PNG/JPEG/TIFF) under {unlabelled}")
    loaded = load_model(model)
    clf, threshold = loaded.classifier, loaded.classifier.meta.threshold
    scored: list[Path] = []
    proba: list[float] = []
    unreadable: list[str] = []
    batches = _scored_locally(files, clf, False, max_pixels, batch_size, workers)
    with Progress("calibrate: scoring the unlabelled patches", len(files), "images") as bar:
        for batch, scores in batches:
            for file, score in zip(batch, scores, strict=True):
                if isinstance(score, str):
                    unreadable.append(score)
                else:
                    scored.append(file)
                    proba.append(score)
            bar.update(len(batch))
    if not scored:
        raise CalibrationError(f"none of the {len(files)} files under {unlabelled} is readable")
    p = np.array(proba, dtype=np.float64)
    pattern = slide_pattern(slide_regex)
    slides = np.array([slide_of(f.name, pattern) or NO_SLIDE for f in scored])
    idx = suggest(p, slides, threshold, n)
    chosen = [scored[i] for i in idx]
    names = [f.name for f in chosen]
    if len(set(names)) < len(names):
        twice = sorted({x for x in names if names.count(x) > 1})
        raise CalibrationError(
            f"two suggested patches share a file name ({escaped(twice[0])}); the labels CSV "
            "names files, so rename one of them and suggest again"
        )
    with replacing(out, directory=True) as (tmp,):
        (tmp / UNLABELLED).mkdir()
        for file in chosen:
            shutil.copy2(file, tmp / UNLABELLED / file.name)
        rows = "".join(f"{escaped(name)},\n" for name in names)
        (tmp / "public.csv").write_text(f"{NAME_COLUMN},{LABEL_COLUMN}\n{rows}", encoding="utf-8")
        _contact_sheet(chosen, tmp / SHEET)
    above = int((p[idx] >= threshold).sum())
    return Suggestion(out, len(idx), len(set(slides[idx])), above, threshold, unreadable)


def sort_labelled(folder: Path) -> None:
    """Move the patches of a suggested draw (``folder/unlabelled/``) into the class folders its
    filled ``public.csv`` names, so that the folder is in the challenge layout; refuse, moving
    nothing, while a row's label is not 0 or 1. A patch whose row was deleted stays where it
    is, unused. A folder without ``unlabelled/`` is left alone."""
    from glomx.data.catalogue import _read_rows

    source = folder / UNLABELLED
    if not source.is_dir():
        return
    rows = _read_rows(folder / "public.csv")
    bad = [(line, name) for line, name, raw in rows if (raw or "").strip() not in ("0", "1")]
    if bad:
        line, name = bad[0]
        raise CalibrationError(
            f"{folder / 'public.csv'} line {line} ({name}): fill the ground truth with 1 "
            f"(globally sclerotic) or 0, or delete the row of a patch you cannot judge "
            f"({len(bad)} row(s) to do); see {folder / SHEET}"
        )
    for _, name, raw in rows:
        if (source / name).is_file():
            target = folder / FOLDERS[int((raw or "").strip())]
            target.mkdir(exist_ok=True)
            os.replace(source / name, target / name)
    for folder_name in FOLDERS.values():
        (folder / folder_name).mkdir(exist_ok=True)
    if not any(source.iterdir()):
        source.rmdir()


def _write(path: Path, text: str) -> None:
    """Write whole or not at all: a reader never sees half a report."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def calibrate_lab(
    data_dir: str | Path,
    lab: str,
    *,
    model: str = DEFAULT_MODEL,
    tta: bool = False,
    reports: str | Path = "reports",
    slide_regex: str,
    batch_size: int = 64,
    workers: int = 2,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    site_regex: str | None = None,
) -> tuple[Calibration, list[Path]]:
    """Score, choose, register the calibrated version, then write
    ``<reports>/calibration_<lab>.{md,json}``; nothing is written or registered when any step
    before fails."""
    from glomx.tracking.registry import load_registered, register_calibrated, resolve

    data_dir = Path(data_dir)
    lab_alias(lab)
    if not model.startswith("models:/"):
        raise UsageError(
            f"--model {model}: calibration makes a new registry version from a registered "
            "one; pass models:/NAME@ALIAS or models:/NAME/VERSION"
        )
    name, version = resolve(model)
    classifier, source = load_registered(f"models:/{name}/{version}")
    sort_labelled(data_dir)
    scores = score_lab(
        data_dir, classifier, tta=tta, slide_regex=slide_regex, batch_size=batch_size,
        workers=workers, max_pixels=max_pixels,
    )  # fmt: skip
    result = calibrate(scores, lab, source, classifier.meta.threshold, tta)
    result.version = register_calibrated(
        name,
        version,
        result.threshold,
        lab_alias(lab),
        result.tags(),
        scores.example,
        data_kind(data_dir),
        result.as_dict(),
        site_regex,
    )
    out = Path(reports)
    paths = [out / f"calibration_{lab}.md", out / f"calibration_{lab}.json"]
    _write(paths[0], result.markdown())
    _write(paths[1], json.dumps(result.as_dict(), indent=2) + "\n")
    return result, paths
