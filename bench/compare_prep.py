"""Compare the prepare stage's homogenisation methods by the LR baseline's validation scores.

One DVC experiment per method: ``dvc exp run --temp -S prepare.image.method=<m> train@lr``
reruns prepare → augment → balance → train@lr in a temporary copy of the repository (runs are
logged to the main repository's MLflow store through ``DVC_ROOT``), then one table compares
them from ``dvc exp show``. The experiments stay listed in ``dvc exp show`` and MLflow;
``dvc exp apply prep-<method>`` brings the best one into the workspace.

    python bench/compare_prep.py [--methods resize pad ...] [-S prepare.image.size=128 ...]
                                 [--dry]

Needs a committed repository (experiments are based on HEAD) with data/ tracked by DVC.
Validation only: test stays with ``evaluate``.
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys

from glomx.config import read

METHODS = ("resize", "pad", "center_crop", "crop_min")
SCORES = ("balanced_accuracy", "roc_auc", "recall", "specificity")


def commands(methods: list[str], overrides: list[str], metrics_dir: str) -> list[list[str]]:
    """The ``dvc exp run`` command for each method, then the table."""
    lr = f"{metrics_dir}/lr.json"
    # dvc names a metric column "<file>:<name>" only when another file has the same name
    columns = rf"Experiment$|prepare\.image\.method$|({re.escape(lr)}:)?({'|'.join(SCORES)})$"
    sets = [arg for s in overrides for arg in ("-S", s)]
    runs = [
        ["dvc", "exp", "run", "--temp", "--name", f"prep-{m}", *sets,
         "-S", f"prepare.image.method={m}", "train@lr"]
        for m in methods
    ]  # fmt: skip
    show = ["dvc", "exp", "show", "--md", "--hide-workspace", "--drop", ".*", "--keep",
            columns, "--sort-by", f"{lr}:balanced_accuracy", "--sort-order", "desc"]  # fmt: skip
    return [*runs, show]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("-S", dest="overrides", action="append", default=[],
                        metavar="PARAM=VALUE", help="extra param for every run")  # fmt: skip
    parser.add_argument("--dry", action="store_true", help="print the commands only")
    args = parser.parse_args(argv)
    if not args.dry:  # rerunning replaces a method's previous experiment
        for method in args.methods:
            subprocess.run(["dvc", "exp", "remove", f"prep-{method}"], capture_output=True)
    for cmd in commands(args.methods, args.overrides, read()["paths"]["metrics"]):
        print("$", shlex.join(cmd), flush=True)
        if not args.dry and subprocess.run(cmd).returncode != 0:
            print(f"failed: {shlex.join(cmd)}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
