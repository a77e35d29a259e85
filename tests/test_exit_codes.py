"""README's exit-status contract, command by command, as a user's shell sees it: 0 done; 1 the
work failed (bad data, a missing model or registry, a full disk, a locked store), with one
``<command> failed: ...`` line; 2 the command line was refused before any work (argparse's
usage errors, and values, names, inputs or outputs glomx refuses). Every subcommand of
``glomx --help`` and every stage script has its lines here (a test checks that)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
from bounded import GLOMX, run

from glomx.cli import build_parser

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def inputs(
    png_folder: Path, lr_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """Paths the commands below refer to by name."""
    root = tmp_path_factory.mktemp("exit")
    (root / "unreadable").mkdir()
    (root / "unreadable" / "x.png").write_text("not an image")
    (root / "stage").mkdir()
    shutil.copy(REPO / "params.yaml", root / "stage" / "params.yaml")
    (root / "other.csv").write_text("a,b\n1,2\n")
    predicted = run(
        [*GLOMX, "predict", png_folder, "--model", lr_dir, "--out", root / "done.csv", "-q"]
    )
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    return {"png": png_folder, "root": root}


CASES = [
    # (command line, {png}, {lr} and {root} filled in; environment; exit status; what stderr
    # says: its line that starts so, or argparse's usage; "" where stdout says it)
    ("glomx predict {png} --model {lr} --out {root}/p.csv -q", {}, 0, ""),
    ("glomx predict {root}/unreadable --model {lr} --out {root}/q.csv -q", {}, 1, ""),
    ("glomx predict {png} --out {root}/r.csv -q", {}, 1, "glomx predict failed: no MLflow"),
    ("glomx predict {png} --model {lr} --batch-size 0", {}, 2, "glomx predict failed: --batch"),
    ("glomx predict {root}/missing --model {lr}", {}, 2, "glomx predict failed: "),
    ("glomx predict {png} --model nowhere", {}, 2, "glomx predict failed: model nowhere"),
    ("glomx predict {png} --model models:/glomx", {}, 2, "glomx predict failed: 'models:/"),
    ("glomx predict {png} --no-such-option", {}, 2, "usage:"),
    ("glomx predict {png} --model {lr} --out {root}", {}, 2, "glomx predict failed: --out"),
    ("glomx champion", {}, 1, "glomx champion failed: no MLflow registry"),
    ("glomx champion --lab ../x", {}, 2, "glomx champion failed: lab name '../x'"),
    ("glomx calibrate {root} --lab north", {}, 1, "glomx calibrate failed: no MLflow"),
    ("glomx calibrate {root} --lab ../x", {}, 2, "glomx calibrate failed: lab name"),
    ("glomx calibrate {root} --lab n --model {lr}", {}, 2, "glomx calibrate failed: --model"),
    ("glomx serve", {"GLOMX_SERVE_MAX_BODY_MB": "0"}, 1, "glomx serve failed: GLOMX_SERVE_MAX"),
    ("glomx serve --port many", {}, 2, "usage:"),
    ("glomx report {root}/done.csv --no-gradcam --workers 1", {}, 0, ""),
    ("glomx report {root}/other.csv", {}, 1, "glomx report failed: "),  # not glomx's CSV
    ("glomx report {root}/missing.csv", {}, 2, "glomx report failed: "),
    (
        "glomx server --dir {root}/srv --pg-user glomx-no-such-user",
        {},
        1,
        "glomx server failed: user",
    ),
    ("glomx server --port many", {}, 2, "usage:"),
    ("glomx synth {root}/s --n 4 --min-size 16 --max-size 16 --workers 1", {}, 0, ""),
    ("glomx synth {root}/other.csv/s --n 4", {}, 1, "glomx synth failed: not a directory"),
    ("glomx synth {root}/t --n 1", {}, 2, "glomx synth failed: n must be at least 2"),
    ("glomx synth {png} --n 4", {}, 2, "glomx synth failed: "),  # not a synthetic folder
    ("stage train {root}/stage nosuch", {}, 2, "train@nosuch failed: stages/train.py FAMILY"),
    ("stage train {root}/unreadable lr", {}, 1, "train@lr failed: params.yaml not found"),
    *[
        (f"stage {name} {{root}}/unreadable", {}, 1, f"{name} failed: params.yaml not found")
        for name in ("prepare", "augment", "balance", "choose", "evaluate")
    ],
]


@pytest.mark.parametrize(("line", "env", "status", "says"), CASES, ids=[c[0] for c in CASES])
def test_exit_status(
    line: str,
    env: dict[str, str],
    status: int,
    says: str,
    inputs: dict[str, Path],
    lr_dir: Path,
) -> None:
    command, *args = line.format(lr=lr_dir, **inputs).split()
    if command == "glomx":
        argv, cwd = [*GLOMX, *args], None
    else:  # stage NAME FOLDER ARGS...: stages/NAME.py ARGS..., run in FOLDER
        argv, cwd = [sys.executable, REPO / "stages" / f"{args[0]}.py", *args[2:]], args[1]
    done = run(argv, env={**os.environ, **env}, cwd=cwd, timeout=300)
    assert done.returncode == status, done.stderr[-2000:]
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    lines = done.stderr.splitlines()
    assert not says or [x for x in lines if x.startswith(says)], done.stderr[-2000:]


def test_every_command_and_stage_has_its_exit_statuses_here() -> None:
    """A new subcommand or stage script cannot skip the contract: each has a line above that
    fails, and each subcommand one that a refused command line ends with 2."""
    (commands,) = [a.choices for a in build_parser()._actions if a.dest == "command"]
    stages = sorted(p.stem for p in (REPO / "stages").glob("*.py"))
    lines = [(line.split()[:2], status) for line, _, status, _ in CASES]
    for name in commands:
        assert (["glomx", name], 1) in lines, f"glomx {name}: no case that exits 1"
        assert (["glomx", name], 2) in lines, f"glomx {name}: no case that exits 2"
    for name in stages:
        assert (["stage", name], 1) in lines, f"stages/{name}.py: no case that exits 1"
