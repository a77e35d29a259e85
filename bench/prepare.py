"""Benchmark the prepare stage against a naive in-memory baseline, in the same run.

For each dataset (a full-scale synthetic set in the challenge format, and the shared real
data), each contender runs in a fresh subprocess so its peak RSS is its own:

- ``naive``: one process, PIL open + resize + ``np.stack`` of every image in memory;
- ``prepare``: glomx's prepare stage (process pool, chunked writes to the array store).

Both produce 256×256×3 arrays with the same resize method. Usage::

    python bench/prepare.py [--n 5758] [--skip-synthetic] [--skip-real]

Figures go to stdout and ``bench/out/prepare.json``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
SIZE = 256


def _naive(data: Path) -> int:
    """The original study's approach: everything decoded into one in-memory array."""
    paths = sorted(data.glob("*_glomeruli/*.png"))
    images = [np.asarray(Image.open(p).convert("RGB").resize((SIZE, SIZE))) for p in paths]
    return len(np.stack(images))


def _prepare(data: Path) -> int:
    from glomx.config import load
    from glomx.pipeline.prepare import prepare  # imported before timing starts, see _measure_one

    params = load(ROOT / "params.yaml").need("prepare")
    image = params.image.model_copy(update={"size": SIZE, "channels": 3, "method": "resize"})
    params = params.model_copy(update={"image": image})
    with tempfile.TemporaryDirectory() as tmp:
        counts = prepare(data, Path(tmp) / "prepared", Path(tmp) / "prepare.json", params)
    return counts["total"]


def _measure_one(kind: str, data: Path) -> None:
    """Child process: run one contender and print its figures as JSON."""
    if kind == "prepare":
        import glomx.pipeline.prepare  # noqa: F401 - library import time is not image throughput
    start = time.perf_counter()
    n = {"naive": _naive, "prepare": _prepare}[kind](data)
    seconds = time.perf_counter() - start
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(
        json.dumps(
            {
                "images": n,
                "seconds": seconds,
                "peak_rss_mib": own / 1024,
                "peak_worker_rss_mib": children / 1024,
            }
        )
    )


def _measure(kind: str, data: Path) -> dict:
    result = subprocess.run(
        [sys.executable, __file__, "--one", kind, "--data", str(data)],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    figures["images_per_s"] = figures["images"] / figures["seconds"]
    return figures


def _synthetic(n: int) -> Path:
    from glomx.data.synth import make_dataset

    folder = OUT / f"synth-{n}"
    if not (folder / "public.csv").is_file():
        print(f"generating {n} synthetic full-size patches in {folder} (once) ...", flush=True)
        make_dataset(folder, n, seed=0, size_range=(256, 915), workers=2)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5758, help="synthetic patches (full scale 5758)")
    parser.add_argument("--skip-synthetic", action="store_true")
    parser.add_argument("--skip-real", action="store_true")
    parser.add_argument("--one", choices=["naive", "prepare"], help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        _measure_one(args.one, args.data)
        return
    datasets = {}
    if not args.skip_synthetic:
        datasets[f"synthetic ({args.n})"] = _synthetic(args.n)
    if not args.skip_real:
        datasets["real (shared)"] = ROOT / "data"
    report = {}
    for label, data in datasets.items():
        naive, ours = _measure("naive", data), _measure("prepare", data)
        report[label] = {
            "naive": naive,
            "prepare": ours,
            "speedup": ours["images_per_s"] / naive["images_per_s"],
            "rss_ratio": ours["peak_rss_mib"] / naive["peak_rss_mib"],
        }
        print(
            f"{label}: naive {naive['images_per_s']:.1f} img/s, {naive['peak_rss_mib']:.0f} MiB"
            f" | prepare {ours['images_per_s']:.1f} img/s, {ours['peak_rss_mib']:.0f} MiB "
            f"(workers {ours['peak_worker_rss_mib']:.0f} MiB) | speed ×"
            f"{report[label]['speedup']:.2f}, RSS ×{report[label]['rss_ratio']:.2f}",
            flush=True,
        )
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "prepare.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
