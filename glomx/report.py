"""``glomx report``: a ``glomx predict`` output as one offline HTML page a pathologist reads.

It reads the predictions CSV and its ``<out>_slides.csv``, asks the registry what made them
(version, aliases, threshold, calibration), and shows per slide the %GS forest plot, the
counts and flags, and bounded thumbnails: the most confident patches called sclerotic and
those nearest the threshold, with a Grad-CAM beside the latter where the model holds a Keras
network. At most :data:`MAX_CALLED` + :data:`MAX_DOUBTFUL` thumbnails per slide, so the page
stays small whatever the folder's size. Every unreadable file and every note is listed.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import re
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from PIL import Image

from glomx.data.images import ImageError, load_image
from glomx.errors import GlomxError, UsageError
from glomx.evaluation.slide_html import THUMB_PX, SlideView, Thumb, jpeg, render, thumbnail
from glomx.files import escaped, replacing
from glomx.models.base import META_FILE
from glomx.predict import COLUMNS, NO_SLIDE, SLIDE_COLUMNS, LoadedModel, load_model, slides_path

log = logging.getLogger(__name__)
MAX_CALLED = 12  # thumbnails of patches called sclerotic, per slide
MAX_DOUBTFUL = 6  # thumbnails of the patches nearest the threshold, per slide
VERSION = re.compile(r"models:/([^/\s()@]+)/(\d+)")


class ReportError(GlomxError, ValueError):
    """A predictions file that cannot be reported; the message names it and what to do."""


@dataclass(frozen=True)
class Row:
    """One row of a predictions CSV."""

    name: str
    path: str
    slide: str
    probability: float | None  # None: unreadable
    label: int | None
    model: str
    error: str
    note: str


def _read_csv(path: Path, columns: Sequence[str], what: str) -> list[dict[str, str]]:
    """The rows of a CSV that glomx predict wrote, refusing a missing file or missing columns."""
    if not path.is_file():  # an input named on the command line: refused before any work
        raise UsageError(
            f"{escaped(str(path))} not found: pass the CSV `glomx predict --out` wrote ({what})"
        )
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
        reader = csv.DictReader(f)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise ReportError(
                f"{escaped(str(path))} lacks column(s) {', '.join(missing)}: it is not {what} "
                "of glomx predict; rerun `glomx predict ... --out` and report its CSV"
            )
        return list(reader)


def read_predictions(path: Path) -> list[Row]:
    """Every row of a predictions CSV; a probability or label that is not a number is refused
    with its line."""
    rows = []
    for line, r in enumerate(_read_csv(path, COLUMNS, "a predictions file"), start=2):
        try:
            p = float(r["probability"]) if r["probability"] else None
            label = int(r["label"]) if r["label"] else None
        except ValueError:
            raise ReportError(
                f"{escaped(str(path))} line {line}: probability {r['probability']!r} / label "
                f"{r['label']!r} are not numbers; rerun glomx predict to rewrite the file"
            ) from None
        rows.append(
            Row(r["name"], r["path"], r["slide"], p, label, r["model"], r["error"], r["note"])
        )
    return rows


def _threshold_from_labels(rows: Sequence[Row]) -> tuple[float, float] | None:
    """(highest probability labelled 0, lowest labelled 1): the labels' cut lies between."""
    neg = [r.probability for r in rows if r.label == 0 and r.probability is not None]
    pos = [r.probability for r in rows if r.label == 1 and r.probability is not None]
    return (max(neg, default=0.0), min(pos, default=1.0)) if neg or pos else None


def _model_threshold(source: str, tags: dict[str, str]) -> float | None:
    """The model's own threshold: its registry tag, else its saved folder's glomx.json."""
    from glomx.tracking import names  # not at the top: a page of a model folder needs no MLflow

    if names.THRESHOLD_TAG in tags:
        return float(tags[names.THRESHOLD_TAG])
    meta = Path(source.split(" (", 1)[0]) / META_FILE
    if meta.is_file():
        return float(json.loads(meta.read_text()).get("threshold", math.nan))
    return None


def model_facts(rows: Sequence[Row]) -> tuple[list[tuple[str, str]], float | None, list[str]]:
    """The page's top: model, version, aliases, threshold, calibration → (facts, threshold the
    labels were made at, notes). The registry is asked; when it cannot answer, a note says so."""
    from glomx.tracking import names

    sources = sorted({r.model for r in rows if r.model})
    notes: list[str] = []
    if len(sources) > 1:
        notes.append(f"the rows come from {len(sources)} models: {'; '.join(sources)}")
    source = sources[0] if sources else "unknown"
    facts = [("model", source)]
    tags: dict[str, str] = {}
    if match := VERSION.search(source):
        from glomx.tracking import TrackingError
        from glomx.tracking.registry import version_details

        try:
            tags, aliases = version_details(*match.groups())
            facts += [
                ("version", f"models:/{match[1]}/{match[2]} ({tags.get(names.FAMILY_TAG, '?')})"),
                ("aliases", ", ".join(aliases) or "none"),
            ]
        except (LookupError, TrackingError) as err:
            notes.append(f"registry not read ({err}): version facts are missing")
    else:
        facts.append(("version", "not registered: a model folder"))
    threshold = _model_threshold(source, tags)
    cut = _threshold_from_labels(rows)
    # the CSV rounds probabilities to 6 decimals: a label at the threshold may round across it
    if cut and threshold is not None and not cut[0] - 1e-6 < threshold <= cut[1] + 1e-6:
        notes.append(
            f"the labels were not made at the model's threshold {threshold:.4g} but at one in "
            f"({cut[0]:.4g}, {cut[1]:.4g}] (glomx predict --threshold)"
        )
        threshold = cut[1]
    elif threshold is None and cut:
        threshold = cut[1]
        notes.append(f"the model's threshold is unknown; the labels cut at about {cut[1]:.4g}")
    facts.append(("threshold", "unknown" if threshold is None else f"{threshold:.4g}"))
    if names.LAB_TAG in tags:
        facts.append(
            (
                "calibration",
                f"lab {tags[names.LAB_TAG]}: {tags.get(names.CAL_PATCHES, '?')} patches "
                f"({tags.get(names.CAL_SCLEROTIC, '?')} sclerotic) from "
                f"{tags.get(names.CAL_SLIDES, '?')} slides; calibrated from version "
                f"{tags.get(names.CALIBRATED_FROM, '?')}",
            )
        )
    else:
        facts.append(
            (
                "calibration",
                "none: the threshold was set in training, on other hospitals' slides; it may "
                "not suit this lab (glomx calibrate --suggest, then glomx calibrate)",
            )
        )
    if tags.get(names.DATA_KIND_TAG) and tags[names.DATA_KIND_TAG] != "real":
        notes.append(f"the model was trained on {tags[names.DATA_KIND_TAG]} data: not for real use")
    return facts, threshold, notes


def choose_patches(
    rows: Sequence[Row], threshold: float | None
) -> dict[str, tuple[list[Row], list[Row]]]:
    """Per slide: (called sclerotic, most confident first, at most :data:`MAX_CALLED`;
    nearest the threshold, at most :data:`MAX_DOUBTFUL`, shown once, in the second list)."""
    chosen: dict[str, tuple[list[Row], list[Row]]] = {}
    by_slide: dict[str, list[Row]] = {}
    for r in rows:
        if r.probability is not None:
            by_slide.setdefault(r.slide or NO_SLIDE, []).append(r)
    for slide, scored in by_slide.items():
        doubtful: list[Row] = []
        if threshold is not None:
            near = sorted(scored, key=lambda r: (abs(r.probability - threshold), r.name))  # type: ignore[operator]
            doubtful = near[:MAX_DOUBTFUL]
        shown = {r.name for r in doubtful}
        called = sorted(
            (r for r in scored if r.label == 1 and r.name not in shown),
            key=lambda r: (-(r.probability or 0.0), r.name),
        )
        chosen[slide] = (called[:MAX_CALLED], sorted(doubtful, key=lambda r: -(r.probability or 0)))
    return chosen


def gradcams(model: LoadedModel, rows: Sequence[Row]) -> tuple[dict[str, bytes], str | None]:
    """Grad-CAM thumbnails of ``rows`` by the model's first Keras network → (by name, why
    there are none or None)."""
    from glomx.models.mean import keras_member

    member = keras_member(model.classifier)
    if member is None:
        return {}, f"no Grad-CAM: {model.source} holds no Keras network"
    from glomx.evaluation import gradcam

    if reason := gradcam.unavailable_reason():
        return {}, reason
    out: dict[str, bytes] = {}
    pre = member.meta.preprocessing
    for start in range(0, len(rows), 32):
        batch, images = [], []
        for r in rows[start : start + 32]:
            try:
                images.append(load_image(Path(r.path), pre))
                batch.append(r)
            except ImageError:
                continue  # its thumbnail already says why
        if not images:
            continue
        stack = np.stack(images)
        maps = gradcam.gradcam(member.keras_model, stack, member.meta.size, member.meta.channels)
        for r, image, cam in zip(batch, stack, maps, strict=True):
            tile = Image.fromarray(gradcam.overlay(image, cam))
            tile.thumbnail((THUMB_PX, THUMB_PX))
            out[r.name] = jpeg(tile)
    return out, None


@dataclass(frozen=True)
class ReportSummary:
    """What a report holds, for the command's last line."""

    path: Path
    slides: int
    thumbnails: int
    problems: int
    bytes: int


def write_report(
    predictions: Path,
    out: Path,
    *,
    model: LoadedModel | None = None,
    gradcam: bool = True,
    workers: int = 2,
) -> ReportSummary:
    """Write the page for ``predictions`` (and its ``<out>_slides.csv``) to ``out``, whole or
    not at all. ``model``: the model that made them, when the caller holds it; otherwise it is
    loaded from the rows' model column for Grad-CAM (``gradcam=False`` skips that)."""
    rows = read_predictions(predictions)
    slide_rows = _read_csv(slides_path(predictions), SLIDE_COLUMNS, "a per-slide summary")
    facts, threshold, notes = model_facts(rows)
    accuracy = {r["accuracy_source"] for r in slide_rows} or {"?"}
    facts += [
        ("%GS corrected by", "; ".join(sorted(accuracy))),
        (
            "predictions",
            f"{escaped(str(predictions))}: {len(rows)} files, "
            f"{sum(r.probability is not None for r in rows)} predicted",
        ),
    ]
    chosen = choose_patches(rows, threshold)
    shown = [r for called, doubtful in chosen.values() for r in (*called, *doubtful)]
    with ProcessPoolExecutor(max(1, workers), mp_context=get_context("spawn")) as pool:
        thumbs = dict(
            zip(
                (r.name for r in shown),
                pool.map(thumbnail, [r.path for r in shown], chunksize=16),
                strict=True,
            )
        )
    problems = [(r.name, r.slide, r.error, r.note) for r in rows if r.error or r.note]
    problems += [
        (name, "", f"thumbnail: {why}", "") for name, why in thumbs.items() if isinstance(why, str)
    ]
    doubtful_rows = [r for _, doubtful in chosen.values() for r in doubtful]
    overlays = _overlays(model, rows, doubtful_rows, notes) if gradcam and doubtful_rows else {}

    views = [
        _slide_view(s, *(_thumbs(c, thumbs, overlays) for c in chosen.get(s["slide"], ([], []))))
        for s in slide_rows
    ]
    page = render("glomx slide report", facts, views, problems, notes, threshold)
    with replacing(out) as (tmp,):
        tmp.write_text(page, encoding="utf-8")
    return ReportSummary(out, len(views), len(shown), len(problems), out.stat().st_size)


def _thumbs(
    selected: Sequence[Row], thumbs: dict[str, bytes | str], overlays: dict[str, bytes]
) -> list[Thumb]:
    """The rows that could be shown (an unreadable one is listed among the problems)."""
    return [
        Thumb(r.name, r.probability or 0.0, r.label or 0, data, overlays.get(r.name))
        for r in selected
        if isinstance(data := thumbs[r.name], bytes)
    ]


def _slide_view(s: dict[str, str], called: list[Thumb], doubtful: list[Thumb]) -> SlideView:
    """One row of ``<out>_slides.csv`` with its thumbnails."""

    def number(key: str) -> float | None:
        return float(s[key]) if s[key] else None

    return SlideView(
        s["slide"],
        int(s["n_glomeruli"]),
        int(s["n_sclerotic"]),
        int(s["n_errors"]),
        number("percent_gs"),
        number("percent_gs_low"),
        number("percent_gs_high"),
        [f for f in s["flags"].split("; ") if f],
        called,
        doubtful,
    )


def _overlays(
    model: LoadedModel | None, rows: Sequence[Row], doubtful: Sequence[Row], notes: list[str]
) -> dict[str, bytes]:
    """Grad-CAM thumbnails of the ``doubtful`` rows by ``model``, else by the rows' own model
    (its folder or registry version); a model that cannot be loaded or holds no Keras network
    costs the Grad-CAM only, with a note why."""
    if model is None:
        source = next((r.model for r in rows if r.model), "")
        spec = match[0] if (match := VERSION.search(source)) else source.split(" (", 1)[0]
        try:
            model = load_model(spec)
        except (GlomxError, LookupError, OSError, RuntimeError) as err:
            notes.append(f"no Grad-CAM: the model {spec or '?'} could not be loaded ({err})")
            return {}
    maps, why = gradcams(model, doubtful)
    if why:
        notes.append(why)
    return maps
