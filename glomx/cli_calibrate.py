"""The ``glomx calibrate`` subcommand (registered by :mod:`glomx.cli`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from glomx.data.images import DEFAULT_MAX_PIXELS


def _suggest(args: argparse.Namespace) -> int:
    from glomx.calibrate import suggest_lab
    from glomx.predict import slide_regex_from
    from glomx.tracking.names import DEFAULT_MODEL

    out = args.out or Path(f"to_label_{args.lab}")
    s = suggest_lab(
        args.data_dir,
        args.lab,
        args.suggest,
        out,
        model=args.model or DEFAULT_MODEL,
        slide_regex=args.slide_regex or slide_regex_from(Path("params.yaml")),
        batch_size=args.batch_size,
        workers=args.workers,
        max_pixels=args.max_pixels,
    )
    print(
        f"{s.n} patches from {s.slides} slides to label ({s.above} at or above the model's "
        f"threshold {s.threshold:.4g}, {s.n - s.above} below); {len(s.unreadable)} unreadable "
        f"file(s) skipped.\nwrote {out}/: fill the empty 'ground truth' column of "
        f"{out}/public.csv with 1 (globally sclerotic) or 0, looking at {out}/unlabelled/ or "
        f"{out}/contact_sheet.png, then run: glomx calibrate {out} --lab {args.lab}"
    )
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from glomx.calibrate import calibrate_lab
    from glomx.predict import site_regex_from, slide_regex_from
    from glomx.tracking.names import DEFAULT_MODEL

    if args.suggest is not None:
        return _suggest(args)
    result, paths = calibrate_lab(
        args.data_dir,
        args.lab,
        model=args.model or DEFAULT_MODEL,
        tta=args.tta,
        reports=args.reports,
        slide_regex=args.slide_regex or slide_regex_from(Path("params.yaml")),
        batch_size=args.batch_size,
        workers=args.workers,
        max_pixels=args.max_pixels,
        site_regex=site_regex_from(Path("params.yaml")),
    )
    print(result.markdown())
    print(f"wrote {' and '.join(map(str, paths))}")
    return 0


def add_calibrate_parser(subparsers: Any) -> argparse.ArgumentParser:
    """``glomx calibrate DATA_DIR --lab NAME [--model URI] [--tta]``."""
    p = subparsers.add_parser(
        "calibrate",
        help="choose a lab's threshold on its labelled patches; registers alias lab-NAME",
        description="DATA_DIR is in the challenge layout (public.csv with 'name,ground truth', "
        "globally_sclerotic_glomeruli/ and non_globally_sclerotic_glomeruli/). Every patch is "
        "scored, the threshold maximising balanced accuracy is chosen, and a new version of "
        "the model with that threshold is registered under alias lab-NAME (champion and "
        "previous never move). Writes reports/calibration_NAME.{md,json}. Uses "
        "MLFLOW_TRACKING_URI or ./mlruns. Exit status 1, writing nothing, on bad data; 2 on a "
        "refused argument (a lab name or --model it cannot use). "
        "With --suggest N, DATA_DIR is a folder of unlabelled patches and the N to label first "
        "are written to --out; once its public.csv is filled, `glomx calibrate OUT --lab NAME` "
        "sorts them into the class folders and calibrates.",
    )
    p.add_argument(
        "data_dir", type=Path, help="the lab's labelled patches (with --suggest: unlabelled ones)"
    )
    p.add_argument(
        "--suggest",
        type=int,
        metavar="N",
        help="instead: choose the N patches of DATA_DIR (any folder of images) to label first, "
        "spread over slides, around the model's threshold and a few confident of each class; "
        "writes --out with public.csv (ground truth empty), the patches and a contact sheet",
    )
    p.add_argument(
        "--out", type=Path, help="with --suggest: the folder to write (default to_label_LAB)"
    )
    p.add_argument("--lab", required=True, help="lab name: letters, digits, '-' or '_'")
    p.add_argument(
        "--model",
        help="models:/NAME@ALIAS or models:/NAME/VERSION (default: models:/glomx@champion)",
    )
    p.add_argument(
        "--tta", action="store_true", help="calibrate TTA scores (then predict with --tta)"
    )
    p.add_argument("--reports", type=Path, default=Path("reports"), help="report folder")
    p.add_argument(
        "--slide-regex",
        help="regex with a group (?P<slide>…) (default: prepare.slide_regex of ./params.yaml)",
    )
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2, help="processes decoding images")
    p.add_argument(
        "--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="refuse larger images"
    )
    p.set_defaults(func=_calibrate)
    return p
