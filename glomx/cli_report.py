"""The ``glomx report`` subcommand (registered by :mod:`glomx.cli`) and the report step that
``glomx predict --report`` shares with it."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from glomx.files import escaped


def report_line(
    predictions: Path, out: Path | None, model: Any = None, gradcam: bool = True, workers: int = 2
) -> str:
    """Write the report of ``predictions`` (default ``<stem>.html`` beside it); the line
    saying what it holds."""
    from glomx.report import write_report

    target = out or predictions.with_suffix(".html")
    s = write_report(predictions, target, model=model, gradcam=gradcam, workers=workers)
    return (
        f"wrote {escaped(str(s.path))}: {s.slides} slides, {s.thumbnails} thumbnails, "
        f"{s.problems} unreadable files or notes, {s.bytes / 1e6:.1f} MB"
    )


def _report(args: argparse.Namespace) -> int:
    print(
        report_line(args.predictions, args.out, gradcam=not args.no_gradcam, workers=args.workers)
    )
    return 0


def add_report_parser(subparsers: Any) -> argparse.ArgumentParser:
    """``glomx report PREDICTIONS.csv [--out report.html] [--no-gradcam]``."""
    p = subparsers.add_parser(
        "report",
        help="one offline HTML page of a glomx predict output: %%GS per slide, thumbnails",
        description="Reads PREDICTIONS.csv and its <stem>_slides.csv (both written by glomx "
        "predict) and writes one self-contained HTML file: the model, its version, aliases, "
        "threshold and calibration; a forest plot of %%GS per slide with its 95 %% interval; "
        "per slide its counts, flags and thumbnails of the patches called sclerotic and of "
        "those nearest the threshold (with Grad-CAM where the model holds a Keras network); "
        "every unreadable file. Nothing in it is fetched from the network.",
    )
    p.add_argument("predictions", type=Path, help="a CSV written by glomx predict --out")
    p.add_argument("--out", type=Path, help="HTML file (default: PREDICTIONS with .html)")
    p.add_argument(
        "--no-gradcam", action="store_true", help="skip Grad-CAM (no model is loaded: faster)"
    )
    p.add_argument("--workers", type=int, default=2, help="processes making thumbnails")
    p.set_defaults(func=_report)
    return p
