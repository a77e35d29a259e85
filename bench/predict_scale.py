"""``glomx predict`` at slide scale: images/s and peak memory, locally and with ``--ray``.

For each size N a folder of N patches is written: a pool of distinct synthetic patches at the
challenge's sizes (256–915 px RGBA, ``glomx.data.synth``), hard-linked under N names of about
100 patches per slide, so that 50,000 patches cost the disk of the pool (decoding cost is
real; reading is from the page cache, as it is on a warm disk). Each model then predicts the
folder twice, as a user would run it: ``glomx predict DIR -q`` and ``glomx predict DIR -q
--ray`` (a local Ray instance), each in its own process tree, sampled every 0.5 s for the
total RSS and PSS (proportional set size: shared pages counted once, which RSS overcounts
across Ray's processes) of the command and every process under it. Wall time includes
loading the model and starting Ray. The two CSVs must be byte-identical.

Results accumulate in ``bench/out/predict_scale.json`` (one entry per model, mode and N), so a
second size can be run later; ``bench/out/predict_scale.md`` shows them all, with the ratio of
peak memory between the largest and the smallest N (flat memory: about 1).

Usage: ``python bench/predict_scale.py [--n 50000] [--model models/lr --model ...]``; the default
models are ``models/lr`` and ``models:/glomx@champion`` (skipped, with the reason, when absent).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import psutil
from calibrate import OUT, ROOT, write_report

from glomx.data.synth import make_dataset

WORK = OUT / "predict-scale"
RESULTS = OUT / "predict_scale.json"
PER_SLIDE = 100
MiB = 2**20


def pool(n: int) -> list[Path]:
    """``n`` distinct synthetic patches (written once, then reused)."""
    folder = WORK / f"pool-{n}"
    if not (folder / "public.csv").is_file():
        make_dataset(folder, n, seed=0, size_range=(256, 915), workers=os.cpu_count() or 1)
    return sorted(folder.rglob("*.png"))


def patches(n: int, sources: list[Path]) -> Path:
    """A folder of ``n`` names ``S<slide>-<i>.png``, hard links to the pool in turn."""
    folder = WORK / f"patches-{n}"
    if folder.is_dir() and sum(1 for _ in folder.iterdir()) == n:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        link = folder / f"S{i // PER_SLIDE:04d}-{i}.png"
        if not link.exists():
            os.link(sources[i % len(sources)], link)
    return folder


def _tree_memory(root: psutil.Process) -> tuple[int, int]:
    """Total RSS and PSS of ``root`` and its descendants (processes that end meanwhile skip)."""
    rss = pss = 0
    for proc in [root, *root.children(recursive=True)]:
        try:
            info = proc.memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        rss, pss = rss + info.rss, pss + info.pss
    return rss, pss


def measure(argv: list[str]) -> dict[str, Any]:
    """Run ``argv``; its wall time, exit status, last stderr line and peak tree RSS/PSS."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = [0, 0]
    done = threading.Event()

    def sample() -> None:
        root = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                rss, pss = _tree_memory(root)
            except psutil.NoSuchProcess:
                return
            peak[:] = max(peak[0], rss), max(peak[1], pss)
            done.wait(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stderr = proc.communicate()[1].decode(errors="replace").strip()
    done.set()
    sampler.join()
    return {
        "seconds": time.perf_counter() - start,
        "status": proc.returncode,
        "stderr": stderr.splitlines()[-1] if stderr else "",
        "peak_rss_mib": peak[0] / MiB,
        "peak_pss_mib": peak[1] / MiB,
    }


def run(n: int, model: str, folder: Path, results: dict[str, Any]) -> None:
    """Both ways on the ``n`` patches of ``folder``; recorded under ``model|mode|n``."""
    outs = {}
    for mode, extra in (("local", []), ("ray", ["--ray"])):
        outs[mode] = WORK / f"{mode}.csv"
        argv = ["glomx", "predict", str(folder), "--model", model, "--out", str(outs[mode]), "-q"]
        result = measure(["nice", "-n", "10", *argv, "--force", *extra])
        result["images_per_s"] = n / result["seconds"]
        print(f"{model} {mode} n={n}: {json.dumps(result)}", flush=True)
        if result["status"] != 0:
            results[f"{model}|skipped"] = result["stderr"]
            return
        results[f"{model}|{mode}|{n}"] = result
    same = outs["local"].read_bytes() == outs["ray"].read_bytes()
    results[f"{model}|ray|{n}"]["identical_rows"] = same


def report(results: dict[str, Any]) -> None:
    rows = ["| model | N | mode | wall s | images/s | peak RSS MiB | peak PSS MiB | rows = local |",
            "| --- | ---: | --- | ---: | ---: | ---: | ---: | --- |"]  # fmt: skip
    runs = sorted(
        (k.split("|") for k in results if k.count("|") == 2),
        key=lambda k: (k[0], int(k[2]), k[1]),
    )
    for model, mode, n in runs:
        r = results[f"{model}|{mode}|{n}"]
        same = {True: "yes", False: "**no**"}.get(r.get("identical_rows"), "")
        rows.append(
            f"| {model} | {int(n):,} | {mode} | {r['seconds']:.0f} | {r['images_per_s']:.1f} | "
            f"{r['peak_rss_mib']:.0f} | {r['peak_pss_mib']:.0f} | {same} |"
        )
    flat = ["| model | mode | N small → large | peak RSS ratio | peak PSS ratio |",
            "| --- | --- | --- | ---: | ---: |"]  # fmt: skip
    for model, mode in sorted({(m, d) for m, d, _ in runs}):
        sizes = sorted(int(n) for m, d, n in runs if (m, d) == (model, mode))
        if len(sizes) > 1:
            small, large = (results[f"{model}|{mode}|{s}"] for s in (sizes[0], sizes[-1]))
            flat.append(
                f"| {model} | {mode} | {sizes[0]:,} → {sizes[-1]:,} | "
                f"{large['peak_rss_mib'] / small['peak_rss_mib']:.2f} | "
                f"{large['peak_pss_mib'] / small['peak_pss_mib']:.2f} |"
            )
    skipped = [f"- {k.split('|')[0]} skipped: {v}" for k, v in results.items() if "|skipped" in k]
    intro = (
        f"{dt.date.today()}, {platform.node()}: {os.cpu_count()} cores, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB, shared with other work (nice 10). "
        "Synthetic 256–915 px RGBA patches (a pool of distinct ones hard-linked under N "
        "names, ~100 per slide). Wall time includes loading the model and starting Ray; "
        "memory is the whole process tree (Ray's raylet, GCS and actors included)."
    )
    tables = [rows, flat, skipped] if skipped else [rows, flat]
    write_report("predict_scale.md", "glomx predict at slide scale", intro, *tables)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[50_000], help="folder sizes")
    parser.add_argument("--model", action="append", help="model folder or models:/ URI")
    parser.add_argument("--pool", type=int, default=500, help="distinct patches to link")
    args = parser.parse_args()
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    for n in args.n:
        folder = patches(n, pool(min(n, args.pool)))
        for model in args.model or ["models/lr", "models:/glomx@champion"]:
            run(n, model, folder, results)
            RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    report(results)


if __name__ == "__main__":
    main()
