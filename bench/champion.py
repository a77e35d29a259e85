"""The champion's cold start, throughput and memory in ``glomx predict``, against decoding alone.

Every model is run as a user runs it, each measurement a fresh process (so loading is counted
once per process, never shared): ``glomx predict ONE.png --model M --out X -q`` gives the cold
start (process start to its row: the whole command on one patch), the same command on a folder
of N challenge-sized patches (synthetic 256–915 px RGBA PNGs, :mod:`predict_scale`'s pool) its
wall time, and the difference the throughput, (N - 1) / (wall(N) - wall(1)), loading and
start-up cancelling out. Peak RSS is the N run's whole process tree (the decoding processes
included), sampled every 0.5 s. The model files are read once beforehand, so that every row
reads them from the page cache (as a user's second run does) and the first pays no disk. Each
timing is repeated and the median kept; the processes run one at a time, since they would
compete for the cores.

The models: the champion folder as it is (``artifacts/select/ensemble``, with its ONNX export
when it has one) and natively (a copy with every ``inference.onnx``/``inference.json`` removed,
which loads the Keras way): before and after in one run; each member family's bag and the first
member's ``fold-0`` model, both ways where their folder holds an export; the registered
champion (``models:/glomx@champion``, what a bare ``glomx predict`` loads; noted when it is
not the folder's files) when there is a registry at :func:`glomx.tracking.tracking_uri`; and
decoding alone (``bench/decode_floor.py``:
predict's own decoding with a predictor that does no work), the floor no model can beat, which
every row is compared to.

Writes ``bench/out/champion.json`` (the machine, the raw runs) and ``bench/out/champion.md``
(the table for docs/usage.md), and prints the table. Usage: ``python bench/champion.py
[--ensemble DIR] [--n 200] [--repeat 2]`` after ``make run``; about 15 min on 2 cores.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil
from calibrate import OUT, ROOT, write_report
from predict_scale import measure, patches, pool

from glomx.models.base import ModelMeta
from glomx.models.exported import EXPORT_FILE, SPEC_FILE
from glomx.tracking import tracking_uri
from glomx.tracking.names import DEFAULT_MODEL
from glomx.tracking.registry import registered_versions, resolve

ENSEMBLE = ROOT / "artifacts" / "select" / "ensemble"
WORK = OUT / "champion"
RESULTS = OUT / "champion.json"
DECODE_FLOOR = Path(__file__).with_name("decode_floor.py")
EXPORT_FILES = (EXPORT_FILE, SPEC_FILE)  # a folder without them loads natively
POOL = 500  # distinct patches at most; a larger N links them under more names
CHAMPION = "champion"
DECODING = "decoding alone"


@dataclass(frozen=True)
class Target:
    """One row: what is measured, how it loads, the ``--model`` it is given (None: decoding
    alone), or why it is not measured; a note for the reader."""

    name: str
    loads: str
    model: str | None = None
    skipped: str = ""
    note: str = ""


def has_export(folder: Path) -> bool:
    """Whether an export file lies anywhere under ``folder`` (it, its bags or its folds)."""
    return any(p.name in EXPORT_FILES for p in folder.rglob("*"))


def _link_or_copy(src: str, dst: str) -> None:
    """A hard link (the copy costs no disk), or a copy across file systems."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def without_exports(folder: Path, copy: Path) -> Path:
    """``copy``: ``folder`` afresh without any export file at any depth, so it loads natively."""
    shutil.rmtree(copy, ignore_errors=True)
    ignore = shutil.ignore_patterns(*EXPORT_FILES)
    shutil.copytree(folder, copy, ignore=ignore, copy_function=_link_or_copy)
    return copy


def read_once(folder: Path) -> None:
    """Read every file under ``folder``, so that every row reads it from the page cache, as a
    user's second run does, and none pays the disk for the rows after it."""
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                while f.read(2**24):
                    pass


def both_ways(name: str, folder: Path, native: Path) -> list[Target]:
    """``folder`` as it is when it holds an export, and ``native`` (the same without it)."""
    exported = [Target(name, "exported", str(folder))] if has_export(folder) else []
    return [*exported, Target(name, "native", str(native))]


def registered(ensemble: Path) -> Target:
    """The registered champion, noted when it is not ``ensemble``'s files (then it is another
    model); not measured where there is no registry or no champion."""
    try:
        _, version = resolve(DEFAULT_MODEL)
        same = version in registered_versions(ensemble)
    except LookupError as err:  # no registry, no alias
        return Target(CHAMPION, "registry", skipped=str(err))
    note = "" if same else f"version {version}, not the champion folder's files: another model"
    return Target(CHAMPION, "registry", DEFAULT_MODEL, note=note)


def targets(ensemble: Path, native: Path, registry: Target) -> list[Target]:
    """Decoding alone first (every row's reference), then the champion, its bags, one fold
    model and ``registry``, the registered champion."""
    _, extra = ModelMeta.read(ensemble)
    members = extra["members"]
    rows = [Target(DECODING, "no model")]
    if not has_export(ensemble):
        files = " or ".join(EXPORT_FILES)
        rows.append(Target(CHAMPION, "exported", skipped=f"no export yet (no {files})"))
    rows += both_ways(CHAMPION, ensemble, native)
    for member in members:
        rows += both_ways(f"{member} bag", ensemble / member, native / member)
    fold = f"{members[0]}/fold-0"
    rows += both_ways(f"{fold} model", ensemble / fold, native / fold)
    return [*rows, registry]


def command(target: Target, path: Path, like: Path, out: Path) -> list[str]:
    """The process that predicts ``path`` (a file or a folder) for ``target``."""
    files = [str(path), "--out", str(out)]
    if target.model is None:
        return [sys.executable, str(DECODE_FLOOR), *files, "--like", str(like)]
    return ["glomx", "predict", *files, "--model", target.model, "-q", "--force"]


def throughput(n: int, one_s: float, all_s: float) -> float | None:
    """Images/s past the first: (n - 1) / (wall(n) - wall(1)); None when that is not positive
    (n of 1, or noise larger than the work)."""
    extra = all_s - one_s
    return (n - 1) / extra if n > 1 and extra > 0 else None


def summarise(n: int, ones: list[dict[str, Any]], alls: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the repeats: cold start, wall(n), throughput, the n run's peak memory."""
    one_s = statistics.median(r["seconds"] for r in ones)
    all_s = statistics.median(r["seconds"] for r in alls)
    return {
        "cold_start_s": one_s,
        "wall_n_s": all_s,
        "images_per_s": throughput(n, one_s, all_s),
        "peak_rss_mib": statistics.median(r["peak_rss_mib"] for r in alls),
        "peak_pss_mib": statistics.median(r["peak_pss_mib"] for r in alls),
    }


def run(target: Target, one: Path, folder: Path, n: int, repeat: int, like: Path) -> dict[str, Any]:
    """``target`` on one patch then on the folder, ``repeat`` times, one process at a time."""
    row: dict[str, Any] = asdict(target)
    if target.skipped:
        return row
    runs: dict[str, list[dict[str, Any]]] = {"1": [], str(n): []}
    for _ in range(repeat):
        for path, size in ((one, "1"), (folder, str(n))):
            result = measure(command(target, path, like, WORK / "out.csv"))
            failed = f", exit status {result['status']}" if result["status"] else ""
            print(
                f"{target.name}, {target.loads}, {size} patches: {result['seconds']:.1f} s, "
                f"peak RSS {result['peak_rss_mib']:.0f} MiB{failed}",
                flush=True,
            )
            runs[size].append(result)
            if result["status"] != 0:
                return {**row, "error": result["stderr"] or f"exit status {result['status']}"}
    return {**row, **summarise(n, runs["1"], runs[str(n)]), "runs": runs}


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def compare(rows: list[dict[str, Any]]) -> None:
    """Add each measured row's ratios to decoding alone, and the champion rows' speed-up over
    the native champion (> 1: better)."""
    floor = next(r for r in rows if r["name"] == DECODING)
    native = next(r for r in rows if (r["name"], r["loads"]) == (CHAMPION, "native"))
    for row in rows:
        if "cold_start_s" not in row:
            continue
        row["vs_decoding"] = {
            "cold_start_x": ratio(row["cold_start_s"], floor.get("cold_start_s")),
            "images_per_s_x": ratio(row["images_per_s"], floor.get("images_per_s")),
            "peak_rss_x": ratio(row["peak_rss_mib"], floor.get("peak_rss_mib")),
        }
        if row["name"] == CHAMPION:
            row["vs_native_champion"] = {
                "cold_start_speed_up": ratio(native.get("cold_start_s"), row["cold_start_s"]),
                "images_per_s_speed_up": ratio(row["images_per_s"], native.get("images_per_s")),
            }


def _f(value: float | None, digits: int, suffix: str = "") -> str:
    return "—" if value is None else f"{value:.{digits}f}{suffix}"


def table(rows: list[dict[str, Any]]) -> list[str]:
    """The Markdown table: absolute figures, then ratios; a row not measured says why."""
    lines = [
        "| model | loads | cold start s | images/s | peak RSS MiB | cold start vs decoding "
        "| images/s vs decoding | peak RSS vs decoding "
        "| speed-up vs native champion (cold start, images/s) | note |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        note = r["skipped"] or r.get("error") or r["note"]
        vs = r.get("vs_decoding", {})
        up = r.get("vs_native_champion")
        speed_up = (
            f"{_f(up['cold_start_speed_up'], 1, '×')}, {_f(up['images_per_s_speed_up'], 1, '×')}"
            if up
            else ""
        )
        lines.append(
            f"| {r['name']} | {r['loads']} | {_f(r.get('cold_start_s'), 1)} | "
            f"{_f(r.get('images_per_s'), 1)} | {_f(r.get('peak_rss_mib'), 0)} | "
            f"{_f(vs.get('cold_start_x'), 1, '×')} | {_f(vs.get('images_per_s_x'), 2, '×')} | "
            f"{_f(vs.get('peak_rss_x'), 1, '×')} | {speed_up} | {note.replace('|', '/')} |"
        )
    return lines


def machine() -> dict[str, Any]:
    """Where and when: the figures compare within one run, on one machine."""
    describe = ["git", "describe", "--always", "--dirty", "--abbrev=12"]
    commit = subprocess.run(describe, cwd=ROOT, capture_output=True, text=True, check=False)
    return {
        "platform": platform.platform(),
        "node": platform.node(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "commit": commit.stdout.strip() or "unknown",
        "load_average_at_start": os.getloadavg(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ensemble", type=Path, default=ENSEMBLE, help="the champion folder")
    parser.add_argument("--n", type=int, default=200, help="patches for the throughput")
    parser.add_argument("--repeat", type=int, default=2, help="runs per timing (median kept)")
    args = parser.parse_args()
    if args.n < 2 or args.repeat < 1:
        parser.error("--n must be at least 2 and --repeat at least 1")
    ensemble = args.ensemble.resolve()
    if not (ensemble / "glomx.json").is_file():
        parser.error(f"{ensemble} holds no saved model: run `make run` first")
    uri = tracking_uri()
    os.environ["MLFLOW_TRACKING_URI"] = uri  # the commands run from the repository root
    about = {**machine(), "n": args.n, "repeat": args.repeat, "ensemble": str(ensemble)}
    folder = patches(args.n, pool(min(args.n, POOL)))
    one = min(folder.iterdir())
    native = without_exports(ensemble, WORK / "native") if has_export(ensemble) else ensemble
    read_once(ensemble)  # the native copy's files are the same files (hard links) or copies
    rows = [
        run(t, one, folder, args.n, args.repeat, ensemble)
        for t in targets(ensemble, native, registered(ensemble))
    ]
    compare(rows)
    about["load_average_at_end"] = os.getloadavg()
    results = {"machine": about, "tracking_uri": uri, "rows": rows}
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    intro = (
        f"{about['date'][:10]}, {about['node']} ({about['platform']}): {about['cpu_count']} "
        f"cores, {about['memory_gib']} GiB; commit {about['commit']}. `glomx predict` as a "
        "user runs it, each figure a fresh process, the median of "
        f"{args.repeat}: cold start is the whole command on one patch; images/s is "
        f"(N - 1) / (wall(N) - wall(1)) on N = {args.n} synthetic 256–915 px RGBA patches; "
        "peak RSS is the N run's process tree; model files are read from the page cache. "
        "Decoding alone is predict's own decoding with a model that does no work: the floor. "
        "Speed-up vs native champion: its cold start "
        "over the row's, the row's images/s over its."
    )
    title = "glomx predict: the champion against decoding alone"
    write_report("champion.md", title, intro, table(rows))


if __name__ == "__main__":
    main()
