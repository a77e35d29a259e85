"""Predict folders of patches with a saved or registered model.

Images are decoded exactly as the prepare stage decodes them (the model's own
preprocessing), predicted in batches, and written row by row, so memory holds a few batches
whatever the number of files. Locally a process pool (one process per core by default)
decodes while the main process predicts; with Ray (``--ray`` or ``RAY_ADDRESS``), Ray Data
hands fixed batches of paths to an actor pool whose workers each hold the model once and
decode and predict there, and the rows come back in file order. Both ways write the same
rows. A file that cannot be read gets a row with its error and no prediction; the run goes
on. A file name that is not valid UTF-8 is written with ``\\xNN`` escapes, and its row's
``note`` says so.
"""

from __future__ import annotations

import csv
import logging
import math
import os
from collections import deque
from collections.abc import Generator, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from glomx.config import Prepare, load
from glomx.data.catalogue import DEFAULT_SLIDE_REGEX, slide_of, slide_pattern
from glomx.data.images import DEFAULT_MAX_PIXELS, ImageError, Preprocessing, load_image
from glomx.errors import GlomxError, UsageError
from glomx.evaluation.prevalence import (
    ClassifierAccuracy,
    SlidePrevalence,
    slide_prevalence,
    unknown_accuracy,
)
from glomx.evaluation.tta import predict_batch
from glomx.files import escaped, replacing
from glomx.models import load_predictor
from glomx.models.base import Predictor
from glomx.processes import die_with_parent
from glomx.progress import Progress

log = logging.getLogger(__name__)

EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
COLUMNS = ["name", "path", "slide", "probability", "label", "model", "error", "note"]
SLIDE_COLUMNS = [
    "slide", "n_glomeruli", "n_sclerotic", "percent_sclerotic", "n_errors",
    "percent_gs", "percent_gs_low", "percent_gs_high", "accuracy_source", "flags",
]  # fmt: skip
NO_SLIDE = "(no slide id)"
ESCAPED_NOTE = "file name is not valid UTF-8: its undecodable bytes are written as \\xNN"


class PredictError(GlomxError, RuntimeError):
    """Nothing to predict, or a model that cannot be found."""


@dataclass(frozen=True)
class LoadedModel:
    """A classifier and where it came from (shown in every output row)."""

    classifier: Predictor
    source: str


def collect_files(paths: Iterable[str | Path]) -> list[Path]:
    """Image files under ``paths``: folders recursively (by extension, hidden entries skipped),
    files as given whatever their extension (a non-image then gets an error row)."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found += sorted(
                p
                for p in path.rglob("*")
                if p.is_file()
                and p.suffix.lower() in EXTENSIONS
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
        elif path.exists():
            found.append(path)
        else:
            raise UsageError(f"{path} does not exist; pass image files or folders of them")
    return found


def load_model(spec: str | Path) -> LoadedModel:
    """A local saved-model folder, or a ``models:/name@alias|version`` URI via the registry."""
    if str(spec).startswith("models:/"):
        from glomx.tracking.registry import load_registered

        return LoadedModel(*load_registered(str(spec)))
    directory = Path(spec)
    if not directory.is_dir():
        from glomx.tracking.names import DEFAULT_MODEL

        raise UsageError(
            f"model {spec} is neither a saved model folder nor a models:/ URI "
            f"(e.g. {DEFAULT_MODEL}); train one with `dvc repro`"
        )
    source = f"{escaped(str(directory))} ({_registration(directory)})"
    return LoadedModel(load_predictor(directory), source)


def _registration(directory: Path) -> str:
    """The registered versions logged from exactly this folder's files, else "unregistered"."""
    from glomx.tracking import TrackingError
    from glomx.tracking.registry import REGISTERED_MODEL, registered_versions

    try:
        versions = registered_versions(directory)
        return ", ".join(f"models:/{REGISTERED_MODEL}/{v}" for v in versions) or "unregistered"
    except LookupError:  # no registry here at all
        return "unregistered"
    except TrackingError as err:
        log.warning("cannot tell whether %s is registered: %s", directory, err)
        return "registry unreachable"


def _load(job: tuple[Path, Preprocessing, int]) -> np.ndarray | str:
    """Decode one file in a worker; an unreadable file comes back as its error message."""
    path, pre, max_pixels = job
    try:
        return load_image(path, pre, max_pixels, name=str(path))
    except ImageError as err:
        return str(err)


def _decoded(
    files: Sequence[Path], pre: Preprocessing, max_pixels: int, batch_size: int, workers: int
) -> Iterator[tuple[Sequence[Path], list[np.ndarray | str]]]:
    """Batches of decoded images in file order; with ``workers > 1`` a process pool decodes
    the next batch while the current one is predicted (spawned, never forked from a process
    that may hold Keras threads; each dies with this process, even one killed outright)."""
    batches = [files[i : i + batch_size] for i in range(0, len(files), batch_size)]
    if workers <= 1:
        for batch in batches:
            yield batch, [_load((p, pre, max_pixels)) for p in batch]
        return
    spawn = get_context("spawn")
    with ProcessPoolExecutor(workers, spawn, die_with_parent, (os.getpid(),)) as pool:
        pending: deque[tuple[Sequence[Path], list[Future]]] = deque()
        for batch in batches:
            pending.append((batch, [pool.submit(_load, (p, pre, max_pixels)) for p in batch]))
            if len(pending) == 2:
                done, futures = pending.popleft()
                yield done, [f.result() for f in futures]
        while pending:
            done, futures = pending.popleft()
            yield done, [f.result() for f in futures]


def _scored(clf: Predictor, decoded: list[np.ndarray | str], tta: bool) -> list[float | str]:
    """Per file, its probability, or its error message when it could not be decoded."""
    ok = [r for r in decoded if not isinstance(r, str)]
    proba = iter(predict_batch(clf, np.stack(ok), tta) if ok else [])
    return [r if isinstance(r, str) else float(next(proba)) for r in decoded]


def _scored_locally(
    files: Sequence[Path],
    clf: Predictor,
    tta: bool,
    max_pixels: int,
    batch_size: int,
    workers: int,
) -> Generator[tuple[Sequence[Path], list[float | str]], None, None]:
    """Batches scored in this process while the pool decodes the next one."""
    pre = clf.meta.preprocessing
    for batch, decoded in _decoded(files, pre, max_pixels, batch_size, workers):
        yield batch, _scored(clf, decoded, tta)


class RayScorer:
    """A Ray Data actor: holds the model (unpickled once, when the actor starts), then decodes
    and scores one batch of paths per call."""

    def __init__(self, classifier: Predictor, tta: bool, max_pixels: int) -> None:
        self.classifier, self.tta, self.max_pixels = classifier, tta, max_pixels

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One row in (``start``, the file paths as bytes); one row per file out, in order.
        Paths travel as bytes and errors escaped, since Arrow holds only valid UTF-8 text."""
        ((start, paths),) = zip(batch["start"], batch["paths"], strict=True)
        pre = self.classifier.meta.preprocessing
        decoded = [_load((Path(os.fsdecode(p)), pre, self.max_pixels)) for p in paths]
        scored = _scored(self.classifier, decoded, self.tta)
        return {
            "start": np.full(len(scored), start),
            "probability": np.array([math.nan if isinstance(s, str) else s for s in scored]),
            "error": np.array([escaped(s) if isinstance(s, str) else "" for s in scored]),
        }


def _scored_on_ray(
    files: Sequence[Path], clf: Predictor, tta: bool, max_pixels: int, batch_size: int
) -> Generator[tuple[Sequence[Path], list[float | str]], None, None]:
    """The same batches as :func:`_scored_locally` (so the same numbers), scored by an actor
    pool of one actor per CPU of the Ray cluster, and streamed back in file order."""
    if not files:
        return
    import ray.data

    from glomx.ray_session import ray_session

    try:
        with ray_session() as ray:
            context = ray.data.DataContext.get_current()
            context.execution_options.preserve_order = True
            context.enable_progress_bars = False  # ours counts images
            actors = max(1, int(ray.cluster_resources().get("CPU", 1)))
            starts = range(0, len(files), batch_size)
            items = [
                {"start": i, "paths": [os.fsencode(p) for p in files[i : i + batch_size]]}
                for i in starts
            ]
            # a block per batch: each comes back (and the progress moves) as soon as it is scored
            dataset = ray.data.from_items(items, override_num_blocks=len(items))
            scored = dataset.map_batches(
                RayScorer,
                fn_constructor_kwargs={"classifier": clf, "tta": tta, "max_pixels": max_pixels},
                batch_size=1,  # one item is one batch of files
                compute=ray.data.ActorPoolStrategy(size=actors),
                num_cpus=1,
            )
            done = 0
            for out in scored.iter_batches(batch_size=None, batch_format="numpy"):
                n = len(out["start"])
                if not np.array_equal(
                    out["start"], np.arange(done, done + n) // batch_size * batch_size
                ):
                    raise PredictError("Ray returned rows out of file order")  # preserve_order
                pairs = zip(out["probability"], out["error"], strict=True)
                yield files[done : done + n], [e or float(p) for p, e in pairs]
                done += n
    except (ray.exceptions.RayError, ConnectionError) as err:  # a task or actor failed, no Ray
        raise PredictError(f"Ray: {_ray_reason(err)}") from err


def _ray_reason(err: Exception) -> str:
    """A Ray failure in one line: its cause's last line (the error under the traceback)."""
    cause = getattr(err, "cause", None) or err
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[-1] if text else ''}"


@dataclass
class SlideRow:
    """One slide of ``<out>_slides.csv``: counts and, when any was predicted, its %GS."""

    slide: str
    n: int
    sclerotic: int
    errors: int
    gs: SlidePrevalence | None


@dataclass
class PredictSummary:
    """Counts of a predict run, and its per-slide %GS with the accuracy it was corrected by."""

    predicted: int = 0
    failed: int = 0
    slides: list[SlideRow] = field(default_factory=list)
    accuracy: ClassifierAccuracy | None = None


def slides_path(out: Path) -> Path:
    """Where the per-slide summary of ``out`` goes: ``<out stem>_slides.csv`` beside it."""
    return out.with_name(f"{out.stem}_slides.csv")


def _earlier_output(path: Path, columns: list[str]) -> bool:
    """Whether ``path`` starts like a file glomx predict wrote (header's first two columns)."""
    with open(path, "rb") as f:
        first = f.readline(4096).decode("utf-8", "replace").strip().split(",")
    return first[:2] == columns[:2]


def check_outputs(out: Path, force: bool = False) -> None:
    """Refuse ``out`` (or its slide summary) when it is a folder, or, unless ``force``, a file
    that is not an earlier output of glomx predict: a rerun replaces its own outputs only."""
    for path, columns in ((out, COLUMNS), (slides_path(out), SLIDE_COLUMNS)):
        if path.is_dir():
            raise UsageError(f"--out: {escaped(str(path))} is a folder; name a CSV file")
        if path.exists() and not force and not _earlier_output(path, columns):
            raise UsageError(
                f"--out: {escaped(str(path))} exists and is not an earlier glomx predict output "
                f"(its header does not start '{','.join(columns[:2])}'); choose another --out, "
                "or pass --force to replace it"
            )


def predict_files(
    files: Sequence[Path],
    model: LoadedModel,
    out: Path,
    *,
    threshold: float | None = None,
    tta: bool = False,
    slide_regex: str = DEFAULT_SLIDE_REGEX,
    batch_size: int = 64,
    workers: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool = True,
    ray: bool = False,
) -> PredictSummary:
    """Write ``out`` (one row per file) and :func:`slides_path` beside it, together: both are
    written to temporary siblings and replace earlier files only once both are complete.
    ``workers`` decoding processes (default: one per core), or, with ``ray``, Ray Data."""
    clf = model.classifier
    cut = clf.meta.threshold if threshold is None else threshold
    pattern = slide_pattern(slide_regex)
    slides: dict[str, list[int]] = {}  # slide -> [n predicted, n sclerotic, n errors]
    accuracy = model_accuracy(model, threshold)
    summary = PredictSummary(accuracy=accuracy)
    if ray:
        scored = _scored_on_ray(files, clf, tta, max_pixels, batch_size)
    else:
        cores = workers or os.cpu_count() or 1
        scored = _scored_locally(files, clf, tta, max_pixels, batch_size, cores)
    with (
        replacing(out, slides_path(out)) as (rows_file, slides_file),
        open(rows_file, "w", newline="", encoding="utf-8") as f,
        Progress("predict", len(files), "images", enabled=progress) as bar,
        closing(scored),  # stops the pool or Ray at once if writing fails
    ):
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        for batch, results in scored:
            for path, result in zip(batch, results, strict=True):
                name = escaped(path.name)
                slide = slide_of(name, pattern) or ""
                counts = slides.setdefault(slide or NO_SLIDE, [0, 0, 0])
                row: list[str | int]
                if isinstance(result, str):
                    row = ["", "", model.source, escaped(result)]
                    counts[2] += 1
                    summary.failed += 1
                else:
                    label = int(result >= cut)
                    row = [f"{result:.6f}", label, model.source, ""]
                    counts[0] += 1
                    counts[1] += label
                    summary.predicted += 1
                note = ESCAPED_NOTE if name != path.name else ""
                writer.writerow([name, escaped(str(path)), slide, *row, note])
            bar.update(len(batch))
        summary.slides = write_slide_summary(slides, slides_file, accuracy)
    return summary


def model_accuracy(model: LoadedModel, threshold: float | None) -> ClassifierAccuracy:
    """The sensitivity and specificity that correct %GS: a registry version's own, at its own
    threshold; unknown for a model folder or an overridden threshold."""
    if threshold is not None and threshold != model.classifier.meta.threshold:
        return unknown_accuracy(f"--threshold {threshold} is not the model's")
    if not model.source.startswith("models:/"):
        return unknown_accuracy("a model folder: pass --model models:/... to correct")
    from glomx.tracking import TrackingError
    from glomx.tracking.registry import version_accuracy

    try:
        return version_accuracy(model.source)
    except (TrackingError, LookupError) as err:
        return unknown_accuracy(f"registry: {err}")


def write_slide_summary(
    slides: dict[str, list[int]], path: Path, accuracy: ClassifierAccuracy
) -> list[SlideRow]:
    """Per slide: glomeruli predicted, how many sclerotic, their percentage, unreadable files,
    and %GS corrected by ``accuracy`` with its interval and flags
    (:mod:`glomx.evaluation.prevalence`)."""
    rows = []
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(SLIDE_COLUMNS)
        for slide in sorted(slides):
            n, pos, errors = slides[slide]
            gs = slide_prevalence(n, pos, accuracy) if n else None
            rows.append(SlideRow(slide, n, pos, errors, gs))
            percent = f"{100 * pos / n:.1f}" if n else ""
            estimate = [f"{v:.1f}" for v in (gs.percent, gs.low, gs.high)] if gs else [""] * 3
            flags = "; ".join(gs.flags) if gs else ""
            writer.writerow([slide, n, pos, percent, errors, *estimate, accuracy.source, flags])
    return rows


def _prepare(params_file: Path) -> Prepare | None:
    """The typed ``prepare`` section of a params file, or None when there is no such file or
    section (a user's folder need not hold the pipeline's params)."""
    return load(params_file).prepare if params_file.is_file() else None


def slide_regex_from(params_file: Path) -> str:
    """``prepare.slide_regex`` of a params file when there is one, else the default."""
    prepare = _prepare(params_file)
    return (prepare and prepare.slide_regex) or DEFAULT_SLIDE_REGEX


def site_regex_from(params_file: Path) -> str | None:
    """``prepare.site_regex`` of a params file, which the model card groups hospitals by."""
    prepare = _prepare(params_file)
    return prepare.site_regex if prepare else None


def slide_report(summary: PredictSummary) -> str:
    """The per-slide %GS lines ``glomx predict`` prints."""
    source = summary.accuracy.source if summary.accuracy else "?"
    lines = [f"%GS per slide, 95 % interval (classifier error from: {source})"]
    for row in summary.slides:
        if row.gs is None:
            lines.append(f"  {row.slide}: nothing predicted ({row.errors} unreadable)")
            continue
        flags = f"  [{'; '.join(row.gs.flags)}]" if row.gs.flags else ""
        lines.append(
            f"  {row.slide}: {row.sclerotic} of {row.n} called sclerotic, %GS "
            f"{row.gs.percent:.1f} ({row.gs.low:.1f}–{row.gs.high:.1f}){flags}"
        )
    return "\n".join(lines)
