"""The ``glomx`` command: synthetic demo data, predictions, the current champion, lab
calibration, the served model and the team's tracking server."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from glomx.cli_calibrate import add_calibrate_parser
from glomx.cli_predict import add_champion_parser, add_predict_parser
from glomx.cli_serve import add_serve_parser
from glomx.server.main import add_server_parser
from glomx.stage_main import user_errors_exit


def _synth(args: argparse.Namespace) -> int:
    from glomx.data.synth import make_dataset

    summary = make_dataset(
        args.out,
        args.n,
        seed=args.seed,
        size_range=(args.min_size, args.max_size),
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
    synth.add_argument("--n", type=int, default=200, help="number of patches (full scale: 5758)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--min-size", type=int, default=256, help="smallest patch side in px")
    synth.add_argument("--max-size", type=int, default=915, help="largest patch side in px")
    synth.add_argument("--workers", type=int, default=2, help="processes used to draw patches")
    synth.set_defaults(func=_synth)
    add_predict_parser(sub)
    add_champion_parser(sub)
    add_calibrate_parser(sub)
    add_server_parser(sub)
    add_serve_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``glomx`` console script: a user error, a full disk or an unwritable
    output ends it with one ``glomx <command> failed: ...`` message and status 1."""
    args = build_parser().parse_args(argv)
    with user_errors_exit(f"glomx {args.command}", flag=False):
        return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
