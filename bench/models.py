"""Model benchmark: cross-validation of every model family on the real crops of ``data/``.

Every image of ``data/`` is decoded once exactly as the prepare stage does (catalogue, slide
ids from ``prepare.slide_regex``, ``prepare.image`` homogenisation) into one array store; the
folds are then written as train/test stores under ``bench/out/models/folds/``:

- ``grouped``: ``StratifiedGroupKFold(folds, shuffle=True, random_state=0)`` on slide ids, so
  no slide is on both sides (checked);
- ``random``: ``StratifiedKFold(folds, shuffle=True, random_state=0)`` per image, the leaky
  protocol of the original study, for the pixel LR and one probe, to show how much it flatters.

Each contender runs in its own subprocess (so its peak RSS is its own) and, per fold, is built
from its ``params.yaml`` section (with the overrides listed in :data:`CONTENDERS`), gets the
stain normaliser fitted on the training folds when it has one, is fitted on the training folds
with balanced class weights n / (2·n_c) from those folds, and scores the held-out fold at
threshold 0.5. Under ``all`` the held-out fold is also the validation store that ``fit``
selects on (the probe's C, the best epoch and early stopping of LR and the Keras families):
an optimism that grows with the choice (12 CNN epochs against 5 values of C). Under
``trainval`` the selection uses about a quarter of the training folds' slides instead
(:func:`inner_split`, 3–4 slides, like the pipeline's 3 validation slides), so the held-out
fold is only scored: nested, what train-then-select-on-validation is worth. No offline
augmentation (the augment and balance stages are skipped); the Keras families keep their
on-the-fly dihedral flips and colour jitter from ``params.yaml``.

Columns: balanced accuracy and ROC AUC as mean ± sd (ddof 1) over folds; train time per fold
(stain fit + fit, validation passes included); images/s of ``predict_store`` on the held-out
folds after one warm-up batch (all folds pooled); the subprocess's peak RSS (``ru_maxrss``).

``--scope trainval`` keeps only the slides of the pipeline's train and val splits
(``<prepared>/split.csv``; run ``dvc repro prepare`` first), so the table can *select* a model
without touching the test slides; the default ``all`` uses every crop and is reporting only.
Under ``trainval`` the default contenders are pixel LR, the default probe and the three Keras
families with their stage's own schedule (``cnn-full``, ``mobilenet-full``, ``resnet``), grouped
protocol only: every family ``evaluate`` may promote, each scored on 18 unseen slides instead
of 3.

Usage: ``python bench/models.py [--only NAME[,NAME]] [--scope all|trainval] [--folds 5]
[--limit N] [--epochs N]``. NAME is a contender (all its protocols) or ``contender@protocol``;
``--limit`` keeps N images (a seeded random sample) for a smoke run; ``--epochs`` caps every
training schedule. Writes ``bench/out/models[-trainval].json`` (per-fold numbers) and
``.md``; rows from an earlier run with the same settings are kept, so ``--only`` can redo one
row.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # glomx is imported lazily: the parent process never loads Keras
    from glomx.data.images import Preprocessing
    from glomx.data.store import ArrayStore

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
WORK = OUT / "models"
SCOPES = ("all", "trainval")
INNER = 4  # trainval: 1/INNER of each training fold's slides is its validation (selection) part
CHUNK = 64
WARM_UP = 8  # images predicted before the timed pass
SEED = 0


@dataclass(frozen=True)
class Contender:
    """One row of the table: a family, its params section and what the bench changes in it."""

    name: str
    family: str  # lr | cnn | probe | mobilenet
    protocols: tuple[str, ...] = ("grouped",)
    overrides: dict[str, Any] = field(default_factory=dict)  # "part.key" → value
    note: str = ""
    scopes: tuple[str, ...] = ("all",)  # where it runs without --only

    def section(self, params: dict[str, Any], max_epochs: int | None) -> dict[str, Any]:
        """The family's params section (a Keras family's ``fit:`` over ``keras_fit``) with the
        bench's overrides and the ``--epochs`` cap."""
        from glomx.config import Params, parse
        from glomx.models import family_section

        section = family_section(parse(Params, params, ""), self.family).logged()
        for dotted, value in self.overrides.items():
            *parts, key = dotted.split(".")
            node = section
            for part in parts:
                node = node.setdefault(part, {})
            node[key] = value
        if max_epochs is not None:
            for part, key in (("fit", "epochs"), ("model", "finetune_epochs")):
                if key in section.get(part, {}):
                    section[part][key] = min(section[part][key], max_epochs)
        return section


def _probe(
    backbone: str,
    stain: str,
    layer: str = "output",
    protocols: tuple[str, ...] = ("grouped",),
    scopes: tuple[str, ...] = ("all",),
) -> Contender:
    named = "" if layer == "output" else f"-{layer}"
    return Contender(
        f"probe-{backbone}{named}-{stain}",
        "probe",
        protocols,
        {"model.backbone": backbone, "model.layer": layer, "stain": stain},
        f"{backbone} {layer} features at 224 px, stain {stain}, C chosen on validation",
        scopes,
    )


CONTENDERS = [
    Contender(
        "lr",
        "lr",
        ("grouped", "random"),
        note="pixels at 32 px, best SGD epoch on validation",
        scopes=SCOPES,
    ),
    _probe("efficientnet_lite0", "none", "block14_expand_relu", ("grouped", "random"), SCOPES),
    _probe("mobilenet_v2", "none", protocols=("grouped", "random")),
    _probe("mobilenet_v2", "macenko"),
    Contender("cnn", "cnn", overrides={"fit.epochs": 4}, note="short schedule: 4 epochs (not 12)"),
    Contender(
        "mobilenet",
        "mobilenet",
        overrides={"fit.epochs": 2, "model.finetune_epochs": 2},
        note="short schedule: 2 head + 2 fine-tune epochs (not 3 + 3)",
    ),
    _probe("efficientnet_lite0", "none"),
    _probe("efficientnet_lite0", "macenko"),
    Contender("cnn-full", "cnn", note="train@cnn's schedule", scopes=("trainval",)),
    Contender(
        "mobilenet-full", "mobilenet", note="train@mobilenet's schedule", scopes=("trainval",)
    ),
    Contender("resnet", "resnet", note="train@resnet's schedule and weights", scopes=("trainval",)),
]  # run in this order, most informative first: a run cut short still answers the most
BY_NAME = {c.name: c for c in CONTENDERS}


def _params() -> dict[str, Any]:
    from glomx.config import read

    return read(ROOT / "params.yaml")


def _preprocessing(params: dict[str, Any]) -> Preprocessing:
    from glomx.data.images import Preprocessing

    image = params["prepare"]["image"]
    return Preprocessing(image["size"], image["channels"], image["method"], image["fill"])


def image_store(params: dict[str, Any]) -> ArrayStore:
    """Every image of ``data/`` decoded as prepare does, in one store (reused while current)."""
    from glomx.data.catalogue import read_catalogue
    from glomx.data.images import load_image
    from glomx.data.store import ArrayStore, StoreError, StoreWriter
    from glomx.data.synth import data_kind
    from glomx.pipeline.prepare import source_hash

    data, prep = ROOT / params["paths"]["data"], params["prepare"]
    if not (data / prep["csv"]).is_file():
        raise SystemExit(f"{data / prep['csv']} not found: fetch the data first (`make data`)")
    records = read_catalogue(data, prep["csv"], prep["slide_regex"], prep["policy"]).records
    digest = source_hash(data, records, prep["csv"])
    path, image = WORK / "all", prep["image"]
    try:
        store = ArrayStore(path)
        if store.manifest["source_hash"] == digest and store.params == {"image": image}:
            return store
    except (StoreError, KeyError):  # absent, torn or from another version: write it again
        pass
    pre = _preprocessing(params)
    print(f"decoding {len(records)} images of {data} into {path}", flush=True)
    shape = (image["size"], image["size"], image["channels"])
    with StoreWriter(path, shape, params={"image": image}, source_hash=digest) as writer:
        for start in range(0, len(records), CHUNK):
            chunk = records[start : start + CHUNK]
            pixels = [load_image(r.path, pre, image["max_pixels"], name=r.name) for r in chunk]
            writer.append(
                np.stack(pixels),
                [r.label for r in chunk],
                [r.name for r in chunk],
                [r.slide for r in chunk],
            )
        return writer.close({"data_kind": data_kind(data)})


def fold_indices(
    labels: np.ndarray, slides: np.ndarray, protocol: str, folds: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, test) positions per fold; grouped folds never share a slide (checked)."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    if protocol == "grouped":
        splitter = StratifiedGroupKFold(folds, shuffle=True, random_state=SEED)
    else:
        splitter = StratifiedKFold(folds, shuffle=True, random_state=SEED)
    groups = slides if protocol == "grouped" else None
    pairs = list(splitter.split(np.zeros(len(labels)), labels, groups))
    for train, test in pairs:
        shared = set(slides[train]) & set(slides[test])
        if groups is not None and shared:
            raise RuntimeError(f"grouped fold shares slides {sorted(shared)[:5]}")
        if len(set(labels[test].tolist())) < 2:
            raise SystemExit(f"a {protocol} fold lacks a class: use more images or fewer folds")
    return pairs


def _copy(store: ArrayStore, indices: np.ndarray, path: Path, extra: dict[str, Any]) -> None:
    from glomx.data.store import StoreWriter

    names, slides = np.array(store.names), np.array(store.slides)
    with StoreWriter(path, store.image_shape, store.params, store.manifest["source_hash"]) as w:
        for start in range(0, len(indices), CHUNK):
            idx = indices[start : start + CHUNK]
            w.append(store.read(idx), store.labels[idx], names[idx], slides[idx])
        w.close({**extra, "data_kind": store.data_kind})


def _scoped(scope: str) -> Path:
    """Where a scope's folds and logs live."""
    return WORK / ("folds" if scope == "all" else f"folds-{scope}")


def _outputs(scope: str) -> tuple[Path, Path]:
    """The scope's JSON and markdown results."""
    stem = OUT / ("models" if scope == "all" else f"models-{scope}")
    return stem.with_suffix(".json"), stem.with_suffix(".md")


def trainval_subset(store: ArrayStore, params: dict[str, Any]) -> np.ndarray:
    """Positions of the images on the train and val slides of the pipeline's split."""
    from glomx.data.split import SplitError, read_split_csv

    split_csv = ROOT / params["paths"]["prepared"] / "split.csv"
    try:
        rows = read_split_csv(split_csv)
    except SplitError as err:
        raise SystemExit(str(err)) from None
    slides = np.array(store.slides)
    if not {r.slide for r in rows} >= set(slides.tolist()):
        raise SystemExit(f"{split_csv} does not cover data/: run `dvc repro prepare` again")
    test_slides = sorted({r.slide for r in rows if r.split == "test"})
    return np.flatnonzero(~np.isin(slides, test_slides))


def inner_split(labels: np.ndarray, slides: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fit, validation) positions within a training fold: about 1/INNER of its slides,
    stratified, held out for what ``fit`` selects (C, best epoch, early stopping)."""
    from sklearn.model_selection import StratifiedGroupKFold

    splitter = StratifiedGroupKFold(INNER, shuffle=True, random_state=SEED)
    return next(splitter.split(np.zeros(len(labels)), labels, slides))


def write_folds(
    store: ArrayStore, subset: np.ndarray, protocol: str, folds: int, scope: str
) -> list[dict[str, Any]]:
    """Train/test stores of every fold under ``<scope dir>/<protocol>-<k>/`` (and a val store
    from the training slides under ``trainval``); their sizes."""
    labels, slides = store.labels[subset], np.array(store.slides)[subset]
    sizes = []
    for k, (train, test) in enumerate(fold_indices(labels, slides, protocol, folds)):
        parts = {"train": train, "test": test}
        if scope == "trainval":
            fit, val = inner_split(labels[train], slides[train])
            if len(set(labels[train[val]].tolist())) < 2:
                raise SystemExit(f"fold {k}'s validation lacks a class: use more images")
            parts |= {"train": train[fit], "val": train[val]}
        for part, positions in parts.items():
            _copy(store, subset[positions], _scoped(scope) / f"{protocol}-{k}" / part, {})
        size = {
            "train": len(parts["train"]),
            "test": len(test),
            "test_sclerotic": int(labels[test].sum()),
            "test_slides": len(set(slides[test])),
            "test_from_training_slides": float(np.isin(slides[test], slides[train]).mean()),
        }
        if "val" in parts:
            size |= {"val": len(parts["val"]), "val_slides": len(set(slides[parts["val"]]))}
        sizes.append(size)
    return sizes


def balanced_weights(labels: np.ndarray) -> dict[int, float]:
    """n / (2·n_c) per class."""
    counts = np.bincount(labels, minlength=2)
    return {c: float(len(labels) / (2 * counts[c])) for c in (0, 1)}


def run_contender(name: str, protocol: str, folds: int, max_epochs: int | None, scope: str) -> dict:
    """In the child process: fit and score every fold; per-fold numbers and peak RSS."""
    from glomx.config import parse
    from glomx.data.store import ArrayStore
    from glomx.evaluation.metrics import classification_metrics
    from glomx.family_params import TRAIN_SECTIONS
    from glomx.models import family_class

    params = _params()
    contender = BY_NAME[name]
    section = contender.section(params, max_epochs)
    pre = _preprocessing(params)
    rows = []
    for k in range(folds):
        train = ArrayStore(_scoped(scope) / f"{protocol}-{k}" / "train")
        test = ArrayStore(_scoped(scope) / f"{protocol}-{k}" / "test")
        val = (
            ArrayStore(_scoped(scope) / f"{protocol}-{k}" / "val") if scope == "trainval" else test
        )
        typed = parse(TRAIN_SECTIONS[contender.family], section, f"train_{contender.family}")
        classifier = family_class(contender.family).from_params(typed, pre)
        start = time.perf_counter()
        classifier.fit_stain(section.get("stain", "none"), train)
        classifier.fit(train, val, balanced_weights(train.labels))
        train_s = time.perf_counter() - start
        classifier.predict_proba(test.read(slice(0, WARM_UP)))  # tracing, first batch
        start = time.perf_counter()
        proba = classifier.predict_store(test, CHUNK)
        predict_s = time.perf_counter() - start
        scores = classification_metrics(test.labels, proba)
        extra = classifier.record.to_json()
        rows.append(
            {
                "fold": k,
                "balanced_accuracy": scores["balanced_accuracy"],
                "roc_auc": scores["roc_auc"],
                "train_s": train_s,
                "predict_s": predict_s,
                "test_images": len(test),
                **{key: extra[key] for key in ("C", "best_epoch", "epochs_run") if key in extra},
                **{key: str(extra[key]) for key in ("weights",) if key in extra},
            }
        )
        print(f"{name}@{protocol} fold {k}: {rows[-1]}", file=sys.stderr, flush=True)
        if "keras" in sys.modules:
            import keras

            keras.backend.clear_session()
    return {
        "folds": rows,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "section": section,
        "note": contender.note,
    }


def _spawn(key: str, folds: int, max_epochs: int | None, scope: str) -> dict[str, Any]:
    """Run one contender in a fresh subprocess; its output streams to ``logs/<key>.log``
    (follow it with ``tail -f``), its result comes back in ``logs/<key>.json``."""
    logs = _scoped(scope) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    result = logs / f"{key}.json"
    result.unlink(missing_ok=True)
    command = [sys.executable, __file__, "--child", key, "--folds", str(folds), "--scope", scope]
    command += ["--result", result]
    if max_epochs is not None:
        command += ["--epochs", str(max_epochs)]
    start = time.perf_counter()
    with open(logs / f"{key}.log", "w") as log:
        code = subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode
    if code:
        tail = (logs / f"{key}.log").read_text().strip()[-1500:]
        return {"error": f"exit {code}: {tail}"}
    return {**json.loads(result.read_text()), "wall_s": time.perf_counter() - start}


def _number(value: float) -> str:
    return f"{value:.0f}" if value >= 10 else f"{value:.1f}"


def _mean_sd(values: list[float]) -> str:
    sd = np.std(values, ddof=1) if len(values) > 1 else float("nan")
    return f"{np.mean(values):.3f} ± {sd:.3f}"


def table(results: dict[str, Any]) -> str:
    """The markdown table, one row per contender and protocol, in :data:`CONTENDERS` order."""
    lines = [
        "| model | protocol | balanced accuracy | ROC-AUC | train s/fold | images/s | "
        "peak RSS MiB |",
        "| --- | --- | --- | --- | ---: | ---: | ---: |",
    ]
    for contender in CONTENDERS:
        for protocol in contender.protocols:
            result = results.get(f"{contender.name}@{protocol}")
            if result is None:
                continue
            if "error" in result:
                lines.append(f"| {contender.name} | {protocol} | failed (see logs) | | | | |")
                continue
            folds = result["folds"]
            rate = sum(f["test_images"] for f in folds) / sum(f["predict_s"] for f in folds)
            lines.append(
                f"| {contender.name} | {protocol} "
                f"| {_mean_sd([f['balanced_accuracy'] for f in folds])} "
                f"| {_mean_sd([f['roc_auc'] for f in folds])} "
                f"| {_number(np.mean([f['train_s'] for f in folds]))} | {_number(rate)} "
                f"| {result['peak_rss_mib']:.0f} |"
            )
    return "\n".join(lines)


def notes(config: dict[str, Any], results: dict[str, Any]) -> str:
    """What the table measured and under which settings."""
    lines = [
        f"{config['images']} real crops ({config['slides']} slides) from `data/`"
        + (", train + val slides only (no test slide)" if config["scope"] == "trainval" else "")
        + ", "
        f"{config['folds']} folds; grouped = StratifiedGroupKFold on slides, random = "
        f"StratifiedKFold per image (leaky), both shuffle=True, random_state={SEED}.",
        *(
            f"{protocol}: held-out images per fold {[f['test'] for f in folds]}, of which "
            f"{np.mean([f['test_from_training_slides'] for f in folds]):.0%} come from slides "
            "also in the training folds."
            for protocol, folds in config["fold_sizes"].items()
        ),
        "Each fold: fit on the other folds with balanced class weights n/(2·n_c); "
        + (
            f"validation (probe C, best epoch, early stopping) on about 1/{INNER} of their "
            f"slides (per fold {[f['val_slides'] for f in config['fold_sizes']['grouped']]}), "
            "so the held-out fold is only scored (nested)."
            if config["scope"] == "trainval"
            else "the held-out fold is also the validation store the fit selects on (probe C, "
            "best epoch, early stopping): an optimism that grows with the choice."
        )
        + " No offline augmentation; the Keras families keep their on-the-fly dihedral flips "
        "and colour jitter from params.yaml.",
        "Train s/fold: stain fit + fit (validation passes included). Images/s: predict_store "
        "on the held-out folds after a warm-up batch. Peak RSS: the contender's subprocess.",
        f"Machine: {config['cpus']} CPUs shared with other jobs (load average "
        f"{config['load_start']:.1f} at start, {config['load_end']:.1f} at end), niceness "
        f"{config['niceness']}: times are indicative.",
    ]
    if config["limit"] or config["max_epochs"]:
        lines.append(
            f"SMOKE RUN: --limit {config['limit']} --epochs {config['max_epochs']}: not a result."
        )
    for contender in CONTENDERS:
        if any(f"{contender.name}@{p}" in results for p in contender.protocols):
            lines.append(f"{contender.name}: {contender.note}.")
    return "\n".join(f"- {line}" for line in lines)


def _selected(only: str | None, scope: str) -> list[tuple[str, str]]:
    """(name, protocol) pairs picked by ``--only`` (by default, the scope's contenders; under
    ``trainval`` only the grouped protocol, the one that can select)."""
    pairs = [(c.name, p) for c in CONTENDERS for p in c.protocols]
    if scope == "trainval":
        pairs = [(n, p) for n, p in pairs if p == "grouped"]
    if not only:
        return [(n, p) for n, p in pairs if scope in BY_NAME[n].scopes]
    wanted = [w.strip() for w in only.split(",") if w.strip()]
    known = {n for n, _ in pairs} | {f"{n}@{p}" for n, p in pairs}
    unknown = [w for w in wanted if w not in known]
    if unknown:
        raise SystemExit(f"unknown contender(s) {unknown}; known: {', '.join(sorted(known))}")
    return [(n, p) for n, p in pairs if n in wanted or f"{n}@{p}" in wanted]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="contender[,contender] or contender@protocol")
    parser.add_argument("--scope", choices=SCOPES, default="all", help="trainval: no test slide")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--limit", type=int, help="use only N images (a seeded sample)")
    parser.add_argument("--epochs", type=int, help="cap every training schedule (smoke runs)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        name, protocol = args.child.split("@")
        result = run_contender(name, protocol, args.folds, args.epochs, args.scope)
        args.result.write_text(json.dumps(result) + "\n")
        return

    selected = _selected(args.only, args.scope)
    params = _params()
    store = image_store(params)
    subset = trainval_subset(store, params) if args.scope == "trainval" else np.arange(len(store))
    if args.limit:
        subset = np.sort(np.random.default_rng(SEED).permutation(subset)[: args.limit])
    protocols = sorted({p for _, p in selected})
    sizes = {p: write_folds(store, subset, p, args.folds, args.scope) for p in protocols}
    config = {
        "scope": args.scope,
        "images": len(subset),
        "slides": len({store.slides[i] for i in subset}),
        "folds": args.folds,
        "limit": args.limit,
        "max_epochs": args.epochs,
        "fold_sizes": sizes,
        "cpus": os.cpu_count(),
        "load_start": os.getloadavg()[0],
        "niceness": os.nice(0),
    }
    saved, markdown = _outputs(args.scope)
    previous = json.loads(saved.read_text()) if saved.is_file() else {}
    same = {k: previous.get("config", {}).get(k) for k in ("images", "folds", "max_epochs")}
    results = previous.get("results", {}) if same == {k: config[k] for k in same} else {}
    failed = []
    for name, protocol in selected:
        key = f"{name}@{protocol}"
        print(f"{key}: {args.folds} folds ...", flush=True)
        results[key] = _spawn(key, args.folds, args.epochs, args.scope)
        if "error" in results[key]:
            failed.append(key)
            print(f"{key} FAILED: {results[key]['error']}", flush=True)
        else:
            print(f"{key}: done in {results[key]['wall_s']:.0f} s", flush=True)
        config["load_end"] = os.getloadavg()[0]
        saved.write_text(json.dumps({"config": config, "results": results}, indent=2) + "\n")
        text = f"{table(results)}\n\n{notes(config, results)}\n"
        markdown.write_text(text)
    print(text)
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)} (logs in {_scoped(args.scope) / 'logs'})")


if __name__ == "__main__":
    main()
