"""Does the linear probe's threshold transfer across labs? Leave-one-site-out on train + val.

For each stain normalisation, the probe's features (MobileNetV2 at 224 px, as train-probe
computes them) of the prepared train and val stores — never test — are pooled; each of the
sites with both classes is held out in turn, the probe (standardise + balanced logistic
regression, C = 0.01) is fitted on the other sites and scored on it at threshold 0.5 and at a
threshold chosen on the held-in sites' out-of-fold predictions (slide-grouped 5-fold CV): the
"threshold chosen on validation" remedy. The per-site oracle threshold shows how far apart
the sites' best thresholds lie.

Usage: ``python bench/probe_sites.py [--stains none,macenko,reinhard]`` after ``dvc repro
prepare``; prints a markdown table and writes ``bench/out/probe_sites.md``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from glomx.data.adapt import adapt
from glomx.data.stain import FIT_SAMPLE, StainNormalizer
from glomx.data.store import ArrayStore
from glomx.params import load_params

ROOT = Path(__file__).resolve().parents[1]
SIZE, C = 224, 0.01


def features(stores: list[ArrayStore], stain: StainNormalizer) -> np.ndarray:
    """Global-pooled MobileNetV2 features of every image of ``stores``."""
    import keras

    from glomx.models.backbones import pretrained_model

    net = pretrained_model("mobilenet_v2", SIZE)
    pooled = keras.Model(net.inputs, keras.layers.GlobalAveragePooling2D()(net.outputs[0]))
    parts = [
        pooled.predict(stain.transform(adapt(chunk, SIZE, 3)).astype(np.float32), verbose=0)
        for store in stores
        for _, chunk in store.iter_chunks(32)
    ]
    return np.concatenate(parts)


def best_threshold(labels: np.ndarray, proba: np.ndarray) -> float:
    """The threshold maximising balanced accuracy."""
    return float(max(np.unique(proba), key=lambda t: balanced_accuracy_score(labels, proba >= t)))


def leave_one_site_out(x: np.ndarray, y: np.ndarray, slides: np.ndarray, sites: np.ndarray):
    """Rows ``(site, AUC, bal. acc. @0.5, chosen t, bal. acc. @t, oracle t)``."""

    def probe() -> Pipeline:
        return make_pipeline(
            StandardScaler(), LogisticRegression(C=C, class_weight="balanced", max_iter=3000)
        )

    cv = StratifiedGroupKFold(5, shuffle=True, random_state=0)
    for site in sorted(set(sites)):
        held, rest = sites == site, sites != site
        if len(set(y[held])) < 2:
            continue
        oof = cross_val_predict(
            probe(), x[rest], y[rest], groups=slides[rest], cv=cv, method="predict_proba"
        )[:, 1]
        chosen = best_threshold(y[rest], oof)
        p = probe().fit(x[rest], y[rest]).predict_proba(x[held])[:, 1]
        yield (
            site,
            roc_auc_score(y[held], p),
            balanced_accuracy_score(y[held], p >= 0.5),
            chosen,
            balanced_accuracy_score(y[held], p >= chosen),
            best_threshold(y[held], p),
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stains", default="none,macenko,reinhard")
    args = parser.parse_args()
    params = load_params(ROOT / "params.yaml")
    prepared = ROOT / params["paths"]["prepared"]
    stores = [ArrayStore(prepared / split) for split in ("train", "val")]
    y = np.concatenate([s.labels for s in stores])
    slides = np.concatenate([np.asarray(s.slides) for s in stores])
    sites = np.array([s.split("_")[0].split("-")[0] for s in slides])
    train = stores[0]
    sample = np.unique(np.linspace(0, len(train) - 1, min(len(train), FIT_SAMPLE)).astype(int))
    lines = [
        f"Leave-one-site-out on train + val ({len(y)} crops, {len(set(slides))} slides), "
        f"MobileNetV2 probe, C = {C}",
        "",
        "| stain | held-out site | ROC-AUC | bal. acc. @ 0.5 | t chosen on held-in | "
        "bal. acc. @ t | oracle t |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for method in args.stains.split(","):
        stain = StainNormalizer("none")
        if method != "none":
            stain = StainNormalizer.fit(method, adapt(train.read(sample), SIZE, 3))
        x = features(stores, stain)
        rows = list(leave_one_site_out(x, y, slides, sites))
        for site, auc, bal, t, bal_t, oracle in rows:
            cells = f"{auc:.3f} | {bal:.3f} | {t:.2f} | {bal_t:.3f} | {oracle:.2f}"
            lines.append(f"| {method} | {site} | {cells} |")
        mean = np.mean([[r[1], r[2], r[4]] for r in rows], axis=0)
        lines.append(f"| {method} | **mean** | {mean[0]:.3f} | {mean[1]:.3f} | | {mean[2]:.3f} | |")
    text = "\n".join(lines) + "\n"
    print(text)
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "probe_sites.md").write_text(text)


if __name__ == "__main__":
    main()
