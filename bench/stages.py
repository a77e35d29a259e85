"""Benchmarks of the stages after prepare, each against a baseline measured in the same run.

1. ``stages``: peak RSS and time of augment (to ~10,000 images), balance and train@lr at the
   original study's 256×256×4, on the full-scale synthetic set (5,758 patches) — each in a
   fresh subprocess so its peak RSS is its own.
2. ``feed``: train@cnn images/s fed from the array store (PyDataset) against the same model
   fed in-memory random tensors (target ratio ≥ 0.9).
3. ``predict``: ``glomx predict`` with the trained CNN (models/cnn) on full-size patches against a
   naive loop (open one image, preprocess, ``predict`` on a batch of one; target ≥ 5×).

Usage: ``python bench/stages.py [--only stages|feed|predict] [--predict-files 400]``;
figures go to stdout and ``bench/out/stages.json``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
WORK = OUT / "stages"
SYNTH = OUT / "synth-5758"  # written by bench/prepare.py (or here, once)


def _params() -> Any:
    from glomx.config import load

    return load(ROOT / "params.yaml")


def _paths() -> Any:
    """The project's paths, every output under the bench's work folder."""
    paths = _params().need("paths")
    return paths.model_copy(
        update={k: str(WORK / k) for k in paths.model_fields if k not in ("data", "reports")}
    )


def _child_prepare() -> dict[str, Any]:
    from glomx.pipeline.prepare import prepare

    counts = prepare(SYNTH, WORK / "prepared", WORK / "prepare.json", _params().need("prepare"))
    return {"images": counts["total"]}


def _child_augment() -> dict[str, Any]:
    from glomx.data.store import ArrayStore
    from glomx.pipeline.augment import augment

    config = _params().need("augment")
    src = ArrayStore(WORK / "prepared" / "train")
    # ~10,000 images after augmentation, as the original study grew its set
    grow = 10_000 / len(src)
    target = config.target.model_copy(
        update={"mode": "multiplier", "per_class": {0: grow, 1: grow}}
    )
    config = config.model_copy(update={"target": target})
    return {"images": len(augment(src, WORK / "augmented", config))}


def _child_balance() -> dict[str, Any]:
    from glomx.data.store import ArrayStore
    from glomx.pipeline.balance import balance

    section = _params().need("balance")
    summary = balance(ArrayStore(WORK / "augmented"), WORK / "balanced", section)
    return {"images": sum(summary["after"].values())}


def _child_train_lr() -> dict[str, Any]:
    import os

    from glomx.family_params import LRModel
    from glomx.models import family_section
    from glomx.pipeline.train import train

    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{WORK / 'mlflow.db'}"
    params = _params()
    section = family_section(params, "lr")
    section = section.model_copy(update={"model": LRModel(size=256, channels=4)})  # the study's
    site_regex = params.need("prepare").site_regex
    oof = train("train@lr", "lr", section, _paths(), params.need("cv"), site_regex).report["oof"]
    return {
        "oof_roc_auc": oof["roc_auc"]["value"],
        "oof_balanced_accuracy": oof["balanced_accuracy"]["value"],
    }


def _cnn(size: int):
    from glomx.data.images import Preprocessing
    from glomx.models import family_section
    from glomx.models.cnn import CNNClassifier

    section = family_section(_params(), "cnn")
    clf = CNNClassifier.from_params(section, Preprocessing(size, 3, "pad", "white"))
    model = clf.build_model()
    model.compile(
        optimizer="adam", loss="binary_crossentropy", jit_compile=clf.fit_config.jit_compile
    )
    return clf, model


def _child_feed(steps: int = 40) -> dict[str, Any]:
    import numpy as np

    from glomx.data.store import ArrayStore
    from glomx.models.keras_common import StoreSequence

    store = ArrayStore(WORK / "augmented")
    clf, model = _cnn(store.image_shape[0])
    cfg, size = clf.fit_config, clf.meta.size
    feed = StoreSequence(
        store, cfg.batch_size, clf.adapted, 0, cfg.dihedral, cfg.color_jitter, cfg.workers
    )
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (cfg.batch_size * 8, size, size, 3)).astype("float32")
    y = rng.integers(0, 2, len(x)).astype("float32")
    model.fit(x, y, batch_size=cfg.batch_size, epochs=1, verbose=0)  # compile + warm up
    start = time.perf_counter()
    model.fit(x, y, batch_size=cfg.batch_size, epochs=steps // 8, verbose=0)
    memory = (steps // 8) * len(x) / (time.perf_counter() - start)
    start = time.perf_counter()
    model.fit(feed, epochs=1, steps_per_epoch=steps, verbose=0)
    streamed = steps * cfg.batch_size / (time.perf_counter() - start)
    return {"in_memory_img_s": memory, "store_img_s": streamed, "ratio": streamed / memory}


def _child_predict(n_files: int) -> dict[str, Any]:
    import tempfile

    from glomx.data.images import load_image
    from glomx.models import load_classifier
    from glomx.predict import LoadedModel, predict_files

    clf = load_classifier(ROOT / "models" / "cnn")  # trained by `make run`
    files = sorted(SYNTH.glob("*_glomeruli/*.png"))[:n_files]
    pre = clf.meta.preprocessing
    clf.predict_proba(load_image(files[0], pre)[None])  # warm up
    start = time.perf_counter()
    for path in files:  # naive: one image at a time, end to end
        clf.predict_proba(load_image(path, pre)[None])
    naive = len(files) / (time.perf_counter() - start)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        predict_files(files, LoadedModel(clf, "bench"), Path(tmp) / "p.csv", progress=False)
        ours = len(files) / (time.perf_counter() - start)
    return {
        "files": len(files),
        "naive_img_s": naive,
        "predict_img_s": ours,
        "speedup": ours / naive,
    }


CHILDREN = {
    "prepare": _child_prepare,
    "augment": _child_augment,
    "balance": _child_balance,
    "train@lr": _child_train_lr,
    "feed": _child_feed,
}


def _run_child(name: str, *extra: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, __file__, "--child", name, *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if done.returncode:
        raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _child(name: str, predict_files_n: int) -> None:
    start = time.perf_counter()
    result = _child_predict(predict_files_n) if name == "predict" else CHILDREN[name]()
    result["seconds"] = time.perf_counter() - start
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["peak_worker_rss_mib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["stages", "feed", "predict"])
    parser.add_argument("--predict-files", type=int, default=400)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.predict_files)
        return
    if not (SYNTH / "public.csv").is_file():
        from glomx.data.synth import make_dataset

        make_dataset(SYNTH, 5758, seed=0, size_range=(256, 915), workers=2)
    report: dict[str, Any] = {}
    if (
        args.only in (None, "stages", "feed")
        and not (WORK / "augmented" / "manifest.json").is_file()
    ):
        report["prepare"] = _run_child("prepare")
    for name in ("augment", "balance", "train@lr") if args.only in (None, "stages") else ():
        report[name] = _run_child(name)
        print(name, report[name], flush=True)
    if args.only in (None, "feed"):
        report["feed"] = _run_child("feed")
        print("feed", report["feed"], flush=True)
    if args.only in (None, "predict"):
        report["predict"] = _run_child("predict", "--predict-files", str(args.predict_files))
        print("predict", report["predict"], flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    saved = OUT / "stages.json"  # sections run separately (--only) accumulate here
    previous = json.loads(saved.read_text()) if saved.is_file() else {}
    saved.write_text(json.dumps({**previous, **report}, indent=2) + "\n")


if __name__ == "__main__":
    main()
