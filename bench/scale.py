"""The whole pipeline at the challenge set's size, against the shared slice, stage by stage.

Each dataset runs in a throwaway git copy of this working tree (tests/pipeline_copy.py, as the
pipeline tests do) whose ``data/`` links to it: every stage's real code through
``dvc repro --single-item <stage>``, with cheap params (:data:`CHEAP`: Keras families 1 epoch,
2 folds) so a session can afford it. Per stage it records:

- wall time of the ``dvc repro`` (DVC's hashing included) and images/s over what the stage reads;
- peak RSS: the largest process of the stage's tree, sampled twice a second with psutil (Ray's
  fold workers included), beside what the stage logged (``<stage> done ... peak RSS``, and
  ``<family> fold k done ... peak RSS`` for each fold trial);
- disk written: the growth of the copy (outputs, DVC cache, MLflow store).

It then projects the default schedule (params.yaml: 3 folds, every family's epochs) at the
challenge size from the measured per-epoch times (Keras' epoch lines), names the stage that
dominates, and writes ``bench/out/scale.md`` and ``bench/out/scale.json``.

Usage: ``python bench/scale.py [--scale 1.0] [--families lr,cnn,probe] [--stages a,b]
[--datasets shared,challenge] [--keep] [--reuse]`` (``make bench-scale SCALE=… FAMILIES=…``).
The shared slice is ``data/`` (``make data``); the copies go to ``bench/out/scale/``.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import yaml

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
sys.path.insert(0, str(ROOT / "tests"))  # the pipeline copy the tests run DVC in
from dvc_stages import expanded_stages  # noqa: E402
from pipeline_copy import copy_env, make_copy, merge  # noqa: E402

from glomx.models import FAMILIES  # noqa: E402
from glomx.pipeline.train import stage_name  # noqa: E402

# cheap settings: every family trains, but for one epoch (fine-tuning 0 or 1) on 2 folds
BENCH_FOLDS = 2
CHEAP: dict[str, Any] = {
    "prepare": {"split": {"folds": BENCH_FOLDS}},
    "train_cnn": {"fit": {"epochs": 1}},
    "train_resnet": {"model": {"finetune_epochs": 0}, "fit": {"epochs": 1}},
    "train_mobilenet": {"model": {"finetune_epochs": 1}, "fit": {"epochs": 1}},
}
LIMIT_MIB = 3 * 1024
STAGE_LINE = re.compile(r"(\S+) done in (\d+) s, peak RSS (\d+) MiB")
EPOCH_LINE = re.compile(r"\d+/\d+ - (\d+)s - ")  # Keras verbose=2, one per epoch


def _stage_order(root: Path) -> list[str]:
    """The stages as DVC runs them: the train template once per family (``train@<family>``)."""
    return list(expanded_stages(root))


def _du_mib(path: Path) -> float:
    """Bytes under ``path`` (links not followed, so not the linked data), in MiB."""
    done = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=True)
    return int(done.stdout.split()[0]) / 2**20


def _rss_mib(proc: psutil.Process) -> tuple[float, float]:
    """The largest process of ``proc``'s tree and the tree's sum (shared pages counted in
    each process), in MiB."""
    sizes = []
    for p in [proc, *proc.children(recursive=True)]:
        try:
            sizes.append(p.memory_info().rss)
        except psutil.Error:
            continue
    return max(sizes, default=0) / 2**20, sum(sizes) / 2**20


def _store_len(path: Path) -> int:
    return int(json.loads((path / "manifest.json").read_text())["shape"][0])


def _images_read(root: Path, stage: str) -> int:
    """How many images the stage reads: patches, training split, augmented, balanced, the
    cross-validated (out-of-fold) patches or the test split."""
    art = root / "artifacts"
    split = (art / "prepared" / "split.csv").read_text().splitlines()[1:]
    return {
        "prepare": lambda: len(split),
        "augment": lambda: _store_len(art / "prepared" / "train"),
        "balance": lambda: _store_len(art / "augmented"),
        "choose": lambda: _store_len(art / "prepared" / "train"),
        "evaluate": lambda: _store_len(art / "prepared" / "test"),
    }.get(stage, lambda: _store_len(art / "balanced"))()


def run_stage(root: Path, env: dict[str, str], stage: str) -> dict[str, Any]:
    """One stage through ``dvc repro --single-item``, sampled; its figures."""
    log_path = root / f"bench-{stage}.log"
    disk_before = _du_mib(root)
    peak_proc = peak_tree = 0.0
    start = time.perf_counter()
    with log_path.open("w") as log:
        child = subprocess.Popen(
            ["dvc", "repro", "--single-item", stage], cwd=root, env=env, stdout=log, stderr=log
        )
        proc = psutil.Process(child.pid)
        while child.poll() is None:
            largest, tree = _rss_mib(proc)
            peak_proc, peak_tree = max(peak_proc, largest), max(peak_tree, tree)
            running = {"stage": stage, "seconds": time.perf_counter() - start}
            running |= {"peak_rss_mib": peak_proc, "peak_tree_mib": peak_tree}
            (OUT / "scale-running.json").write_text(json.dumps(running) + "\n")
            time.sleep(0.5)
    seconds = time.perf_counter() - start
    text = log_path.read_text()
    if child.returncode:
        raise SystemExit(f"bench-scale failed: {stage} in {root}:\n{text[-3000:]}")
    logged = [int(m[3]) for m in STAGE_LINE.finditer(text)]  # the stage and each fold trial
    images = _images_read(root, stage)
    return {
        "seconds": seconds,
        "images": images,
        "images_per_s": images / seconds,
        "peak_rss_mib": max([peak_proc, *logged]),
        "peak_tree_mib": peak_tree,
        "logged_rss_mib": max(logged, default=None),
        "disk_mib": _du_mib(root) - disk_before,
        "epoch_seconds": sum(int(m[1]) for m in EPOCH_LINE.finditer(text)),
    }


def run_dataset(
    name: str, data: Path, report: dict[str, Any], stages: list[str] | None, reuse: bool
) -> None:
    """The pipeline on ``data`` in a fresh copy under bench/out/scale/ (``reuse``: the copy a
    ``--keep`` run left, to go on with ``stages`` in their order); each stage's figures go
    into ``report[name]`` and are saved at once (a long run can be read while it goes)."""
    root = OUT / "scale" / name
    if reuse and (root / "dvc.yaml").is_file():
        env = copy_env()
    else:
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        env = make_copy(root, report["families"], CHEAP, data)
    for stage in stages or _stage_order(root):
        report[name][stage] = run_stage(root, env, stage)
        print(name, stage, json.dumps(report[name][stage]), flush=True)
        save(report)


def _epochs(section: dict[str, Any], family: str) -> int:
    """Epochs a Keras family trains under ``section`` (fine-tuning only with pretrained
    weights; ResNet falls back to random init offline, so its fine-tuning is not counted)."""
    model = section.get("model", {})
    finetune = model.get("finetune_epochs", 0) if family == "mobilenet" else 0
    return int(section["fit"]["epochs"]) + int(finetune)


def project(stage: str, fig: dict[str, Any], params: dict[str, Any]) -> float:
    """Seconds ``stage`` would take at this size under the default params.

    Training work per family grows with folds × (K-1)/K (each fold trains on the others) and,
    for the Keras families, the epochs; the rest of a training stage (Ray, building, scoring
    the held-out fold) with the number of folds. Early stopping can only shorten it.
    """
    family = {stage_name(f): f for f in FAMILIES}.get(stage)
    if family is None:
        return fig["seconds"]
    k = int(params["prepare"]["split"]["folds"])
    work = (k - 1) / (BENCH_FOLDS - 1)
    section = params[f"train_{family}"]
    if "epochs" not in section.get("fit", {}) or family == "lr":  # lr keeps its default epochs
        return fig["seconds"] * work
    cheap = merge(copy.deepcopy(section), CHEAP.get(f"train_{family}", {}))
    ratio = _epochs(section, family) / _epochs(cheap, family)
    fixed = fig["seconds"] - fig["epoch_seconds"]
    return fixed * k / BENCH_FOLDS + fig["epoch_seconds"] * ratio * work


def _fmt_s(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


def _data_ratio(report: dict[str, Any], stage: str) -> float:
    """How much more the stage reads at the challenge size: images (arrays of one size after
    prepare), and for prepare the PNG bytes it decodes where those grow more (larger patches)."""
    ratio = report["challenge"][stage]["images"] / report["shared"][stage]["images"]
    if stage == "prepare":
        ratio = max(ratio, report["challenge_mib"] / report["shared_mib"])
    return ratio


def write_report(report: dict[str, Any], path: Path) -> str:
    """The markdown table of both datasets side by side, the projection and the verdicts."""
    big, small = report["challenge"], report["shared"]
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    lines = [
        f"# Scale benchmark ({report['date']}, {report['machine']})",
        "",
        f"Challenge-shaped synthetic set at scale {report['scale']} "
        f"({report['challenge_images']} patches, {report['challenge_mib']:.0f} MiB) against "
        f"the shared slice ({report['shared_images']} patches, {report['shared_mib']:.0f} MiB); "
        f"families {', '.join(report['families'])}; "
        f"cheap params: {json.dumps(CHEAP)}. Peak RSS is the largest process of the stage "
        "(Ray fold workers included); disk is what the stage added to the copy (outputs, DVC "
        "cache, MLflow). x = challenge / shared; x data: images read (prepare: PNG bytes).",
        "",
        "| stage | s | img/s | peak RSS MiB | disk MiB | s (shared) | img/s (shared) "
        "| RSS (shared) | disk (shared) | x data | x time | x RSS | default schedule |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    stages = _stage_order(ROOT)
    projected = {st: project(st, big[st], params) for st in stages if st in big}
    for stage in (st for st in stages if st in big or st in small):
        cells = [stage]
        for fig in (big.get(stage), small.get(stage)):
            if fig is None:
                cells += ["–"] * 4
                continue
            cells += [f"{fig['seconds']:.0f}", f"{fig['images_per_s']:.1f}"]
            cells += [f"{fig['peak_rss_mib']:.0f}", f"{fig['disk_mib']:.0f}"]
        if stage in big and stage in small:
            cells.append(f"{_data_ratio(report, stage):.1f}")
            for key in ("seconds", "peak_rss_mib"):
                cells.append(f"{big[stage][key] / small[stage][key]:.1f}")
        else:
            cells += ["–"] * 3
        cells.append(_fmt_s(projected[stage]) if stage in projected else "–")
        lines.append("| " + " | ".join(cells) + " |")
    if not projected:
        lines.append("\nThe challenge-shaped set has not run yet.")
    else:
        total = sum(projected.values())
        top = max(projected, key=projected.__getitem__)
        both = [st for st in big if st in small]
        slower = [
            st
            for st in both
            if big[st]["seconds"] / small[st]["seconds"] > 1.5 * _data_ratio(report, st)
        ]
        grows = [st for st in both if big[st]["peak_rss_mib"] / small[st]["peak_rss_mib"] > 1.5]
        lines += [
            "",
            f"Default schedule (params.yaml) projected on this machine: **{_fmt_s(total)}** for "
            f"the stages above; **{top}** dominates ({100 * projected[top] / total:.0f} %).",
            f"Not run: {', '.join(st for st in stages if st not in big) or 'none'}.",
            f"Peak RSS over {LIMIT_MIB} MiB: "
            f"{', '.join(st for st in big if big[st]['peak_rss_mib'] > LIMIT_MIB) or 'none'}; "
            f"growing with the data (x RSS > 1.5): {', '.join(grows) or 'none'}; time growing "
            f"faster than the data (x time > 1.5 x data): "
            f"{', '.join(slower) or 'none'}.",
        ]
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the challenge set")
    parser.add_argument(
        "--families", default=",".join(FAMILIES), help="comma-separated families to train"
    )
    parser.add_argument("--stages", help="comma-separated stages to run (default: all)")
    parser.add_argument("--shared", type=Path, default=ROOT / "data", help="the shared slice")
    parser.add_argument(
        "--datasets", default="shared,challenge", help="comma-separated: shared, challenge"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the copies (bench/out/scale/<dataset>)"
    )
    parser.add_argument(
        "--reuse", action="store_true", help="go on in the copies a --keep run left"
    )
    args = parser.parse_args()
    families = [f for f in args.families.split(",") if f]
    if unknown := set(families) - set(FAMILIES):
        raise SystemExit(f"bench-scale failed: unknown families {sorted(unknown)}")
    if not (args.shared / "public.csv").is_file():
        raise SystemExit(f"bench-scale failed: no {args.shared}/public.csv: run `make data`")
    stages = args.stages.split(",") if args.stages else None

    from glomx.data.synth import make_challenge_like

    data = OUT / f"challenge-{args.scale}"
    if not (data / "public.csv").is_file():
        make_challenge_like(data, args.scale, seed=0, workers=os.cpu_count() or 1)
    saved = OUT / "scale.json"
    previous = json.loads(saved.read_text()) if saved.is_file() else {}
    if previous.get("scale") != args.scale:  # same scale: stages run now replace theirs
        previous = {"shared": {}, "challenge": {}}
    report: dict[str, Any] = {
        **previous,
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.node()}, {os.cpu_count()} CPUs (shared), "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB",
        "scale": args.scale,
        "families": families,
        "challenge_images": sum(1 for _ in data.glob("*_glomeruli/*.png")),
        "shared_images": sum(1 for _ in args.shared.glob("*_glomeruli/*.png")),
        "challenge_mib": _du_mib(data),
        "shared_mib": _du_mib(args.shared.resolve()),
    }
    for name, source in (("shared", args.shared), ("challenge", data)):
        if name in args.datasets.split(","):
            run_dataset(name, source, report, stages, args.reuse)
            if not args.keep:
                shutil.rmtree(OUT / "scale" / name)
    print(save(report))


def save(report: dict[str, Any]) -> str:
    """``bench/out/scale.json`` and its table, ``bench/out/scale.md``; returns the table."""
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "scale.json").write_text(json.dumps(report, indent=2) + "\n")
    return write_report(report, OUT / "scale.md")


if __name__ == "__main__":
    main()
