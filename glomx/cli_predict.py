"""The ``glomx predict`` and ``glomx champion`` subcommands (registered by :mod:`glomx.cli`)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from glomx.data.images import DEFAULT_MAX_PIXELS


def _check_numbers(args: argparse.Namespace) -> None:
    """Refuse a batch size or workers below 1 and a threshold outside [0, 1] (NaN and
    infinity too)."""
    from glomx.errors import UsageError

    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.workers < 1:
        raise UsageError(f"--workers must be at least 1, got {args.workers}")
    if args.threshold is not None and not 0 <= args.threshold <= 1:
        raise UsageError(f"--threshold must be a number from 0 to 1, got {args.threshold}")


def _predict(args: argparse.Namespace) -> int:
    from glomx.files import escaped
    from glomx.predict import (
        PredictError,
        check_outputs,
        collect_files,
        load_model,
        predict_files,
        slide_regex_from,
        slide_report,
        slides_path,
    )
    from glomx.tracking import lock_explained, tracking_uri
    from glomx.tracking.names import DEFAULT_MODEL

    _check_numbers(args)
    check_outputs(args.out, args.force)
    files = collect_files(args.paths)
    if not files:
        raise PredictError(f"no image files (PNG/JPEG/TIFF) under {' '.join(map(str, args.paths))}")
    with lock_explained(tracking_uri()):
        model = load_model(args.model or DEFAULT_MODEL)
    summary = predict_files(
        files,
        model,
        args.out,
        threshold=args.threshold,
        tta=args.tta,
        slide_regex=args.slide_regex or slide_regex_from(Path("params.yaml")),
        batch_size=args.batch_size,
        workers=args.workers,
        max_pixels=args.max_pixels,
        progress=not args.quiet,
        ray=args.ray or bool(os.environ.get("RAY_ADDRESS")),
    )
    print(slide_report(summary))
    print(
        f"{summary.predicted} predicted, {summary.failed} unreadable (see column 'error'); "
        f"model {model.source}\nwrote {escaped(str(args.out))} and "
        f"{escaped(str(slides_path(args.out)))}"
    )
    if args.report and summary.predicted:
        from glomx.cli_report import report_line

        print(report_line(args.out, None, model, workers=args.workers))
    return 0 if summary.predicted else 1


def add_predict_parser(subparsers: Any) -> argparse.ArgumentParser:
    """``glomx predict PATH... [--model M] [--out CSV] [--threshold T] [--tta]``."""
    p = subparsers.add_parser(
        "predict",
        help="predict image files or folders of patches (PNG/JPEG/TIFF, recursively)",
        description="Writes one row per file (an unreadable file gets its error and no "
        "prediction) and a per-slide summary <out>_slides.csv, both complete or not at all. "
        "Exit status 1 when nothing could be predicted or the run failed, 2 when an argument is "
        "refused.",
    )
    p.add_argument("paths", nargs="+", type=Path, help="image files and/or folders")
    p.add_argument(
        "--model",
        help="models:/NAME@ALIAS, models:/NAME/VERSION or a saved model folder such as "
        "models/cnn (default: models:/glomx@champion)",
    )
    p.add_argument("--out", type=Path, default=Path("predictions.csv"), help="output CSV")
    p.add_argument(
        "--force",
        action="store_true",
        help="replace --out (and <out>_slides.csv) even when it is not an earlier glomx "
        "predict output",
    )
    p.add_argument(
        "--threshold",
        type=float,
        help="label threshold from 0 to 1 (default: the model's own, set in training)",
    )
    p.add_argument(
        "--tta", action="store_true", help="average over the 8 rotations/reflections (8× slower)"
    )
    p.add_argument(
        "--slide-regex",
        help="regex with a group (?P<slide>…) matching file names "
        "(default: prepare.slide_regex of ./params.yaml)",
    )
    p.add_argument("--batch-size", type=int, default=64, help="images per batch (at least 1)")
    p.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="processes decoding images (default: one per core, %(default)s here)",
    )
    p.add_argument(
        "--ray",
        action="store_true",
        help="spread decoding and prediction over Ray Data actors, one per CPU, each holding "
        "the model: the cluster at RAY_ADDRESS (which alone turns this on), else a local "
        "instance; the same rows in the same order",
    )
    p.add_argument(
        "--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="refuse larger images"
    )
    p.add_argument(
        "--report",
        action="store_true",
        help="also write <out>.html, the slide report of glomx report (offline HTML)",
    )
    p.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="no progress (otherwise a bar on a terminal, else a line with images/s every 30 s)",
    )
    p.set_defaults(func=_predict)
    return p


def _champion(args: argparse.Namespace) -> int:
    from glomx.tracking import lock_explained, tracking_uri
    from glomx.tracking.registry import champion_report, lab_report

    with lock_explained(tracking_uri()):
        print(lab_report(args.lab, args.name) if args.lab else champion_report(args.name))
    return 0


def add_champion_parser(subparsers: Any) -> argparse.ArgumentParser:
    """``glomx champion``: the registry's current champion and why it was chosen."""
    p = subparsers.add_parser(
        "champion",
        help="show the registered model version behind alias 'champion'",
        description="Version, family, out-of-fold metrics, the run that trained it and the "
        "promotion reason. Uses MLFLOW_TRACKING_URI or ./mlruns.",
    )
    p.add_argument("--name", default="glomx", help="registered model name")
    p.add_argument("--lab", help="show the lab's calibrated version (alias lab-LAB) instead")
    p.set_defaults(func=_champion)
    return p
