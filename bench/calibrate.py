"""Does a threshold calibrated on a few of a new lab's labelled patches beat 0.5 on its others?

Leave-one-site-out on the train + val slides of ``artifacts/prepared/split.csv`` (never test;
a site is the slide id's prefix before ``_``/``-``): for each hospital the probe family
(frozen EfficientNet-Lite0 features at ``train_probe``'s layer and size, standardised, then a
balanced logistic regression, C = 0.01 as ``bench/probe_sites.py``) is fitted on the other
hospitals and scores the held-out one. Then, many times over, ``n`` of its labelled patches
are drawn, by patch or as whole slides (slides added in random order until they hold ``n``
patches), a threshold is chosen on them as ``glomx calibrate`` does, and the site's other
patches are scored at 0.5 and at that threshold (balanced accuracy). A draw with one class
only is refused, as the command refuses it: the lab keeps 0.5 there.

Platt scaling (a logistic fit of the label on the score's logit, on the same draw) is
measured too: with balanced class weights, its 0.5 is one more threshold (balanced accuracy);
unweighted, its probabilities against the raw ones (Brier score, lower is better).

Images are decoded from data/ here (``glomx.data.images``), not read from the pipeline's
stores; each image's features are computed once and cached in ``bench/out``.

Usage: ``python bench/calibrate.py [--repeats 200] [--sizes 5,10,20,40]`` after
``dvc repro prepare``; prints a markdown table and writes ``bench/out/calibrate.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import time
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, brier_score_loss, roc_auc_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from glomx.calibrate import MIN_PER_CLASS, MIN_SLIDES
from glomx.config import read
from glomx.data.adapt import adapt
from glomx.data.catalogue import FOLDERS
from glomx.data.images import Preprocessing, load_image
from glomx.data.split import read_split_csv, sites_of
from glomx.evaluation.metrics import choose_threshold

ROOT = Path(__file__).resolve().parents[1]
SPLIT = ROOT / "artifacts" / "prepared" / "split.csv"
OUT = ROOT / "bench" / "out"
C = 0.01
MODES = ("patches", "slides")


def features(paths: list[Path], params: dict) -> np.ndarray:
    """Pooled probe features of each image, decoded as prepare decodes it (cached by the list
    of files and the probe's backbone, layer and size)."""
    model, image = params["train_probe"]["model"], params["prepare"]["image"]
    key = hashlib.sha256(repr(([str(p) for p in paths], model, image)).encode()).hexdigest()[:16]
    cache = OUT / f"calibrate_features_{key}.npy"
    if cache.is_file():
        return np.load(cache)
    import keras

    from glomx.models.backbones import pretrained_model
    from glomx.models.probe import truncate

    pre = Preprocessing(image["size"], image["channels"], image["method"], image["fill"])
    net = pretrained_model(model["backbone"], model["size"])
    pooled = keras.Model(
        net.inputs, keras.layers.GlobalAveragePooling2D()(truncate(net, model["layer"]).outputs[0])
    )
    parts = []
    for start in range(0, len(paths), 32):
        batch = np.stack([load_image(p, pre) for p in paths[start : start + 32]])
        x = adapt(batch, model["size"], 3).astype(np.float32)
        parts.append(np.asarray(pooled.predict(x, verbose=0), dtype=np.float32))
        print(f"  features {min(start + 32, len(paths))}/{len(paths)}", end="\r", flush=True)
    feats = np.concatenate(parts)
    OUT.mkdir(parents=True, exist_ok=True)
    np.save(cache, feats)
    return feats


def site_data(params: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Features, labels, slides and sites of the train + val patches of ``SPLIT`` (never test),
    shared with ``bench/label_free.py`` so both benches score the same patches."""
    rows = [r for r in read_split_csv(SPLIT) if r.split != "test"]
    data = ROOT / params["paths"]["data"]
    x = features([data / FOLDERS[r.label] / r.name for r in rows], params)
    y = np.array([r.label for r in rows])
    slides = np.array([r.slide for r in rows])
    return x, y, slides, sites_of(slides, params["prepare"]["site_regex"])


def probe() -> Pipeline:
    """An unfitted probe head: standardise, then balanced logistic regression at ``C``."""
    return make_pipeline(
        StandardScaler(), LogisticRegression(C=C, class_weight="balanced", max_iter=3000)
    )


def held_out_scores(x: np.ndarray, y: np.ndarray, sites: np.ndarray, site: str) -> np.ndarray:
    """The probe fitted on the other sites, scoring ``site``'s patches."""
    model = probe().fit(x[sites != site], y[sites != site])
    return model.predict_proba(x[sites == site])[:, 1]


def draw(rng: np.random.Generator, slides: np.ndarray, n: int, mode: str) -> np.ndarray | None:
    """Indices of a calibration draw of ``n`` patches (by patch) or of whole slides holding at
    least ``n``; None when that leaves no slide to score."""
    if mode == "patches":
        return rng.choice(len(slides), n, replace=False) if n < len(slides) else None
    order, chosen = rng.permutation(np.unique(slides)), []
    for slide in order[:-1]:  # keep one slide at least for scoring
        chosen.append(slide)
        if np.isin(slides, chosen).sum() >= n:
            return np.flatnonzero(np.isin(slides, chosen))
    return None


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))[:, None]


def _ba(y: np.ndarray, pred: np.ndarray) -> float:
    return float(balanced_accuracy_score(y, pred)) if 0 < y.sum() < len(y) else np.nan


def one_draw(y: np.ndarray, p: np.ndarray, slides: np.ndarray, cal: np.ndarray) -> dict[str, float]:
    """Balanced accuracy on the patches outside ``cal`` at 0.5, at the calibrated threshold and
    at balanced Platt's 0.5; Brier of raw and (unweighted) Platt probabilities; whether
    ``glomx calibrate`` would warn that the threshold is not to be trusted yet."""
    rest = np.setdiff1d(np.arange(len(y)), cal)
    yc, pc, yr, pr = y[cal], p[cal], y[rest], p[rest]
    few = min(yc.sum(), len(yc) - yc.sum()) < MIN_PER_CLASS or len(set(slides[cal])) < MIN_SLIDES
    out = {
        "ba_05": _ba(yr, pr >= 0.5),
        "brier_raw": brier_score_loss(yr, pr),
        "warned": float(few),
    }
    if not 0 < yc.sum() < len(yc):  # one class: refused, the lab keeps 0.5
        return out | {"refused": 1.0, "ba_cal": out["ba_05"], "ba_platt": out["ba_05"],
                      "brier_platt": out["brier_raw"]}  # fmt: skip
    t = choose_threshold(yc, pc, ties="interval")
    balanced = LogisticRegression(C=1e4, class_weight="balanced").fit(_logit(pc), yc)
    plain = LogisticRegression(C=1e4).fit(_logit(pc), yc)
    return out | {
        "refused": 0.0,
        "ba_cal": _ba(yr, pr >= t),
        "ba_platt": _ba(yr, balanced.predict_proba(_logit(pr))[:, 1] >= 0.5),
        "brier_platt": brier_score_loss(yr, plain.predict_proba(_logit(pr))[:, 1]),
    }


def _spread(values: np.ndarray) -> str:
    v = values[~np.isnan(values)]
    if not len(v):
        return "n/a"
    lo, hi = np.percentile(v, [10, 90])
    return f"{v.mean():+.3f} [{lo:+.3f}, {hi:+.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200, help="draws per site, size and mode")
    parser.add_argument("--sizes", default="5,10,20,40", help="calibration set sizes")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not SPLIT.is_file():
        print(f"{SPLIT.relative_to(ROOT)} not found: run dvc repro prepare first")
        return
    started = time.time()
    x, y, slides, sites = site_data(read(ROOT / "params.yaml"))
    sizes = [int(s) for s in args.sizes.split(",")]
    head = ["site", "patches (scl.)", "slides", "AUC", "BA @0.5", "oracle BA"]
    site_lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    cols = ["site", "draw", "n", "refused", "BA @0.5", "BA calibrated", "gain [p10, p90]",
            "warned", "gain if not warned", "Platt BA gain", "Brier raw → Platt"]  # fmt: skip
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for site in sorted(set(sites)):
        mask = sites == site
        ys, ss = y[mask], slides[mask]
        if not 0 < ys.sum() < len(ys):
            continue
        p = held_out_scores(x, y, sites, site)
        oracle = _ba(ys, p >= choose_threshold(ys, p, ties="interval"))
        site_lines.append(
            f"| {site} | {len(ys)} ({ys.sum()}) | {len(set(ss))} | {roc_auc_score(ys, p):.3f} "
            f"| {_ba(ys, p >= 0.5):.3f} | {oracle:.3f} |"
        )
        rng = np.random.default_rng(args.seed)
        for mode in MODES:
            for n in sizes:
                results = [
                    one_draw(ys, p, ss, cal)
                    for _ in range(args.repeats)
                    if (cal := draw(rng, ss, n, mode)) is not None
                ]
                if not results:
                    continue
                r = {k: np.array([d[k] for d in results]) for k in results[0]}
                gain, trusted = r["ba_cal"] - r["ba_05"], r["warned"] == 0
                lines.append(
                    f"| {site} | {mode} | {n} | {r['refused'].mean():.0%} "
                    f"| {np.nanmean(r['ba_05']):.3f} | {np.nanmean(r['ba_cal']):.3f} "
                    f"| {_spread(gain)} | {r['warned'].mean():.0%} | {_spread(gain[trusted])} "
                    f"| {_spread(r['ba_platt'] - r['ba_05'])} "
                    f"| {r['brier_raw'].mean():.3f} → {r['brier_platt'].mean():.3f} |"
                )
    write_report(
        "calibrate.md",
        "Lab calibration: leave-one-site-out, train + val slides only",
        f"Probe fitted on the other sites; {args.repeats} draws per row (seed {args.seed}); "
        "BA on the site's patches outside each draw; gain = calibrated − 0.5, mean "
        "[10th, 90th percentile] over draws; refused = draws with one class (0.5 kept); "
        f"warned = draws with < {MIN_PER_CLASS} patches of a class or < {MIN_SLIDES} "
        "slides, where `glomx calibrate` warns. "
        f"{time.time() - started:.0f} s.",
        site_lines,
        lines,
    )


def write_report(name: str, title: str, intro: str, *tables: list[str]) -> None:
    """``bench/out/<name>``: a title, one paragraph and the tables; printed as well."""
    blocks = [f"# {title}", intro, *("\n".join(t) for t in tables)]
    text = "\n\n".join(blocks) + "\n"
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / name).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
