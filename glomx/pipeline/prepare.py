"""The prepare stage's logic: catalogue → slide-grouped test split and cross-validation folds
→ homogenised array stores (``train``: every non-test slide, ``test``).

Images are decoded by a process pool (both cores) and written to the stores in chunks, so
resident memory is one chunk per split plus the pool's in-flight images, whatever the
dataset size. :func:`log_prepare_run` records the result as the stage's MLflow run.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from glomx.artifacts.layout import SPLIT_FILE, Layout
from glomx.config import Params, Prepare
from glomx.data.catalogue import (
    CatalogueError,
    Problem,
    Record,
    read_catalogue,
    write_problem_report,
)
from glomx.data.images import ImageError, decode, homogenise
from glomx.data.split import NO_FOLD, assign_folds, assign_splits, write_split_csv
from glomx.data.store import ArrayStore, StoreWriter
from glomx.data.synth import data_kind
from glomx.errors import GlomxError
from glomx.files import write_json
from glomx.tracking import stage_run

log = logging.getLogger(__name__)
SPLITS = ("train", "test")  # stores written; the folds divide train
PROBLEMS_FILE = "problems.csv"


class PrepareError(GlomxError, RuntimeError):
    """Images that cannot be prepared under an `error` policy."""


@dataclass(frozen=True)
class _Job:
    path: Path
    name: str
    channels: int
    method: str
    size: int
    fill: str
    max_pixels: int


def _load(job: _Job) -> np.ndarray | str:
    """Decode and homogenise one image in a worker; an ImageError comes back as its problem
    (without the name, which the problem report lists beside it)."""
    try:
        img = decode(job.path, job.channels, job.max_pixels, name=job.name)
        return homogenise(img, job.method, job.size, job.fill)
    except ImageError as err:
        return err.problem


def source_hash(data_dir: Path, records: Iterable[Record], csv_name: str) -> str:
    """md5 over the labels CSV and every record's name, label and file size."""
    digest = hashlib.md5((data_dir / csv_name).read_bytes())
    for r in records:
        digest.update(f"{r.name}\t{r.label}\t{r.path.stat().st_size}\n".encode())
    return digest.hexdigest()


def _decoded(jobs: list[_Job], workers: int) -> Iterator[np.ndarray | str]:
    """Results in job order, decoded by ``workers`` processes (inline when 1)."""
    if workers <= 1:
        yield from map(_load, jobs)
        return
    with ProcessPoolExecutor(workers) as pool:
        yield from pool.map(_load, jobs, chunksize=8)


def _write_split(
    records: list[Record],
    out: Path,
    image: dict[str, Any],
    chunk_size: int,
    workers: int,
    extra: dict[str, Any],
    bar: tqdm,
) -> tuple[list[Record], list[Problem]]:
    """Write one split's store; returns the records written and the unreadable ones."""
    jobs = [
        _Job(
            r.path,
            r.name,
            image["channels"],
            image["method"],
            image["size"],
            image["fill"],
            image["max_pixels"],
        )
        for r in records
    ]
    shape = (image["size"], image["size"], image["channels"])
    kept: list[Record] = []
    problems: list[Problem] = []
    batch: list[np.ndarray] = []
    batch_records: list[Record] = []
    with StoreWriter(out, shape, params={"image": image}, source_hash=extra["source_hash"]) as w:
        for record, result in zip(records, _decoded(jobs, workers), strict=True):
            bar.update()
            if isinstance(result, str):
                problems.append(
                    Problem(
                        "unreadable_image",
                        record.name,
                        result,
                        "replace or remove the file, or set prepare.policy.unreadable_image: skip",
                    )
                )
                continue
            batch.append(result)
            batch_records.append(record)
            if len(batch) == chunk_size:
                _flush(w, batch, batch_records)
                kept += batch_records
                batch, batch_records = [], []
        if batch:
            _flush(w, batch, batch_records)
            kept += batch_records
        w.close(extra)
    return kept, problems


def _flush(writer: StoreWriter, batch: list[np.ndarray], records: list[Record]) -> None:
    writer.append(
        np.stack(batch),
        [r.label for r in records],
        [r.name for r in records],
        [r.slide for r in records],
    )


def _tally(rows: list[Record]) -> dict[str, int]:
    labels = Counter(r.label for r in rows)
    return {
        "images": len(rows),
        "class_0": labels[0],
        "class_1": labels[1],
        "slides": len({r.slide for r in rows}),
    }


def _counts(records: list[Record], splits: list[str], folds: list[int]) -> dict[str, Any]:
    """Counts per split, fold and class, and per slide, for the DVC metrics file."""
    out: dict[str, Any] = {"total": len(records), "splits": {}, "folds": {}, "slides": {}}
    for split in SPLITS:
        out["splits"][split] = _tally(
            [r for r, s in zip(records, splits, strict=True) if s == split]
        )
    for fold in sorted(set(folds) - {NO_FOLD}):
        out["folds"][str(fold)] = _tally(
            [r for r, k in zip(records, folds, strict=True) if k == fold]
        )
    for r, s, k in zip(records, splits, folds, strict=True):
        entry = out["slides"].setdefault(
            r.slide, {"split": s, "fold": None if k == NO_FOLD else k, "class_0": 0, "class_1": 0}
        )
        entry[f"class_{r.label}"] += 1
    return out


def prepare(data_dir: Path, out_dir: Path, metrics_file: Path, params: Prepare) -> dict:
    """Catalogue, split and homogenise; returns the counts written to ``metrics_file``."""
    report = out_dir / PROBLEMS_FILE
    policy = params.policy.model_dump()
    try:
        catalogue = read_catalogue(data_dir, params.csv, params.slide_regex, policy)
    except CatalogueError as err:
        if err.problems:
            write_problem_report(err.problems, report)
            err.add_note(f"All {len(err.problems)} problem(s) are listed in {report}.")
        raise
    records = catalogue.records
    split = params.split
    # the class search's val share shapes where the test slides fall; no val store is written
    held = assign_splits(records, split.val, split.test, split.seed, split.strategy)
    splits = ["test" if s == "test" else "train" for s in held]
    folds = assign_folds(
        records, splits, split.folds, split.seed, split.strategy, params.site_regex
    )
    kind = data_kind(data_dir)
    if kind == "synthetic":
        log.warning("DATA IS SYNTHETIC (%s): results say nothing about real glomeruli", data_dir)
    extra = {
        "data_kind": kind,
        "source_hash": source_hash(data_dir, records, params.csv),
        "split_strategy": split.strategy,
    }

    out_dir.mkdir(parents=True, exist_ok=True)
    kept: list[Record] = []
    kept_splits: list[str] = []
    fold_of = {r.name: k for r, k in zip(records, folds, strict=True)}
    problems = list(catalogue.problems)
    with tqdm(total=len(records), desc="prepare", unit="img") as bar:
        for name in SPLITS:
            subset = [r for r, s in zip(records, splits, strict=True) if s == name]
            written, bad = _write_split(
                subset,
                out_dir / name,
                params.image.model_dump(),
                params.chunk_size,
                params.workers,
                {**extra, "split": name, "folds": split.folds},
                bar,
            )
            kept += written
            kept_splits += [name] * len(written)
            problems += bad
    write_problem_report(problems, report)
    unreadable = [p for p in problems if p.kind == "unreadable_image"]
    if unreadable and params.policy.unreadable_image == "error":
        listing = "\n".join(f"  {p.name}: {p.detail}" for p in unreadable[:20])
        raise PrepareError(
            f"{len(unreadable)} image(s) could not be read (every image was decoded first; "
            f"all problems are listed together in {report}):\n{listing}\n"
            "Fix or remove them, or set prepare.policy.unreadable_image: skip to leave them out."
        )
    if problems:
        kinds = Counter(p.kind for p in problems)
        listed = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
        log.warning("%d skipped under prepare.policy (%s), see %s", len(problems), listed, report)
    kept_folds = [fold_of[r.name] for r in kept]
    write_split_csv(out_dir / SPLIT_FILE, kept, kept_splits, kept_folds)
    counts = {**_counts(kept, kept_splits, kept_folds), "data_kind": kind, "skipped": len(problems)}
    write_json(metrics_file, counts)
    return counts


def log_prepare_run(counts: dict[str, Any], out_dir: Path, params: Prepare) -> str:
    """Record a finished prepare in its own MLflow run; returns the run id.

    Metrics: images in all and per split, class and slide counts per split and per fold,
    problems skipped.
    Artifacts: the counts with the split of every slide (``prepare.json``), the split table
    and, when something was skipped, the problem report. Each split store is logged as a
    dataset. Nothing under ``out_dir`` is written.
    """
    metrics = {"images": counts["total"], "skipped": counts["skipped"]}
    for split, c in counts["splits"].items():
        metrics |= {f"{split}_{key}": value for key, value in c.items()}
    for fold, c in counts["folds"].items():
        metrics |= {f"fold{fold}_{key}": value for key, value in c.items()}
    with stage_run("prepare", params.model_dump(), counts["data_kind"]) as run:
        run.log_metrics(metrics)
        run.log_dict(counts, "prepare.json")
        run.log_artifact(out_dir / SPLIT_FILE)
        if counts["skipped"]:
            run.log_artifact(out_dir / PROBLEMS_FILE)
        for split in SPLITS:
            run.log_dataset(ArrayStore(out_dir / split), split)
        return run.run_id


def run(params: Params) -> str:
    """The prepare stage; returns its summary: images, sclerotic patches and slides per split
    and per fold."""
    paths, config = params.need("paths"), params.need("prepare")
    layout, out = Layout(paths), Path(paths.prepared)
    counts = prepare(Path(paths.data), out, layout.metrics("prepare"), config)
    log_prepare_run(counts, out, config)  # the run starts once the decode workers are gone
    parts = {**counts["splits"], **{f"fold {k}": c for k, c in counts["folds"].items()}}
    return "\n".join(
        f"{part:>6}: {c['images']} images ({c['class_1']} sclerotic) from {c['slides']} slides"
        for part, c in parts.items()
    )
