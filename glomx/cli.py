"""The ``glomx`` command: synthetic demo data, predictions, the current champion, lab
calibration, the served model and the team's tracking server."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from glomx.cli_calibrate import add_calibrate_parser
from glomx.cli_predict import add_champion_parser, add_predict_parser
from glomx.cli_report import add_report_parser
from glomx.cli_serve import add_serve_parser
from glomx.stage_main import closed_pipe, user_errors_exit
from glomx.team_server.main import add_server_parser


def _synth(args: argparse.Namespace) -> int:
    from glomx.data.synth import SynthError, make_challenge_like, make_dataset

    if args.like == "challenge":
        if args.n is not None or args.min_size is not None or args.max_size is not None:
            raise SynthError("--like challenge fixes the count and sizes: use --scale instead")
        summary = make_challenge_like(args.out, args.scale, seed=args.seed, workers=args.workers)
    elif args.scale is not None:
        raise SynthError("--scale is a fraction of the challenge set: add --like challenge")
    else:
        summary = make_dataset(
            args.out,
            200 if args.n is None else args.n,
            seed=args.seed,
            size_range=(args.min_size or 256, args.max_size or 915),
            workers=args.workers,
        )
    print(f"SYNTHETIC dataset written to {args.out}: {summary}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="glomx", description="Globally sclerotic glomeruli: demo data and predictions."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    synth = sub.add_parser(
        "synth", help="write a synthetic dataset in the challenge layout (CSV + two folders)"
    )
    synth.add_argument("out", type=Path, help="output folder (e.g. data-synth)")
    synth.add_argument("--n", type=int, help="number of patches (default 200)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--min-size", type=int, help="smallest patch side in px (default 256)")
    synth.add_argument("--max-size", type=int, help="largest patch side in px (default 915)")
    synth.add_argument(
        "--like",
        choices=["challenge"],
        help="the challenge set's shape: 5,758 patches, 4,704 : 1,054, sides 256-915 px "
        "(median ~530 x 540), 215 slides of 1 to hundreds of patches, 3 synthetic sites",
    )
    synth.add_argument(
        "--scale", type=float, help="with --like: write this fraction of it, same shape (0-1]"
    )
    synth.add_argument("--workers", type=int, default=2, help="processes used to draw patches")
    synth.set_defaults(func=_synth)
    add_predict_parser(sub)
    add_champion_parser(sub)
    add_calibrate_parser(sub)
    add_report_parser(sub)
    add_server_parser(sub)
    add_serve_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``glomx`` console script: a user error, a full disk or an unwritable
    output ends it with one ``glomx <command> failed: ...`` message and status 1 (2 for a
    refused argument); a reader that closed the pipe (``| head``) ends it quietly."""
    try:
        args = build_parser().parse_args(argv)
        with user_errors_exit(f"glomx {args.command}", flag=False):
            status = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, not at exit
        return status
    except BrokenPipeError:
        return closed_pipe()


if __name__ == "__main__":
    sys.exit(main())
