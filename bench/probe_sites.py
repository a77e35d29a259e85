"""Which backbone, layer and stain for the probe, and does its threshold transfer across labs?

Train + val only, never test. For each backbone, pooled layer (``model.layer``: ``output``,
the backbone's last feature map, or an inner one) and stain normalisation, the probe's
features (at 224 px, as train@probe computes them) of the prepared train and val stores are
pooled and scored two ways: slide-grouped 6-fold CV (the pooled out-of-fold balanced accuracy
and ROC-AUC, averaged over 3 shuffles of the folds), and leave-one-site-out: each of the sites
with both classes is held out in turn, the probe (standardise + balanced logistic regression,
C = 0.01) is fitted on the other sites and scored on it at threshold 0.5 and at a threshold
chosen on the held-in sites' out-of-fold predictions (slide-grouped 5-fold CV): the "threshold
chosen on validation" remedy. The per-site oracle threshold shows how far apart the sites'
best thresholds lie.

Usage: ``python bench/probe_sites.py [--backbones mobilenet_v2,efficientnet_lite0]
[--layers output,block14_expand_relu,block15_expand_relu] [--stains none,macenko,reinhard]``
after ``dvc repro prepare``; prints markdown tables and writes ``bench/out/probe_sites.md``.
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

from glomx.config import read
from glomx.data.adapt import adapt
from glomx.data.split import sites_of
from glomx.data.stain import StainNormalizer
from glomx.data.store import ArrayStore

ROOT = Path(__file__).resolve().parents[1]
SIZE, C = 224, 0.01


def features(
    stores: list[ArrayStore], backbone: str, layers: list[str], stain: StainNormalizer
) -> dict[str, np.ndarray]:
    """Global-pooled features of every image of ``stores`` at each of ``backbone``'s ``layers``."""
    import keras

    from glomx.models.backbones import pretrained_model
    from glomx.models.probe import truncate

    net = pretrained_model(backbone, SIZE)
    pool = keras.layers.GlobalAveragePooling2D()
    taps = {layer: pool(truncate(net, layer).outputs[0]) for layer in layers}
    pooled = keras.Model(net.inputs, taps)  # a dict of outputs, also for a single layer
    parts = [
        pooled.predict(stain.transform(adapt(chunk, SIZE, 3)).astype(np.float32), verbose=0)
        for store in stores
        for _, chunk in store.iter_chunks(32)
    ]
    return {layer: np.concatenate([p[layer] for p in parts]) for layer in layers}


def best_threshold(labels: np.ndarray, proba: np.ndarray) -> float:
    """The threshold maximising balanced accuracy."""
    return float(max(np.unique(proba), key=lambda t: balanced_accuracy_score(labels, proba >= t)))


def probe() -> Pipeline:
    """Standardise + balanced logistic regression, as train@probe fits it."""
    return make_pipeline(
        StandardScaler(), LogisticRegression(C=C, class_weight="balanced", max_iter=3000)
    )


def grouped_cv(x: np.ndarray, y: np.ndarray, slides: np.ndarray) -> tuple[float, float]:
    """Pooled out-of-fold (balanced accuracy @ 0.5, ROC-AUC) of slide-grouped 6-fold CV,
    averaged over 3 shuffles of the slides into folds."""
    scores = []
    for seed in range(3):
        cv = StratifiedGroupKFold(6, shuffle=True, random_state=seed)
        oof = cross_val_predict(probe(), x, y, groups=slides, cv=cv, method="predict_proba")
        scores.append((balanced_accuracy_score(y, oof[:, 1] >= 0.5), roc_auc_score(y, oof[:, 1])))
    bal, auc = np.mean(scores, axis=0)
    return float(bal), float(auc)


def leave_one_site_out(x: np.ndarray, y: np.ndarray, slides: np.ndarray, sites: np.ndarray):
    """Rows ``(site, AUC, bal. acc. @0.5, chosen t, bal. acc. @t, oracle t)``."""
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
    parser.add_argument("--backbones", default="mobilenet_v2,efficientnet_lite0")
    parser.add_argument("--layers", default="output,block14_expand_relu,block15_expand_relu")
    parser.add_argument("--stains", default="none,macenko,reinhard")
    args = parser.parse_args()
    params = read(ROOT / "params.yaml")
    prepared = ROOT / params["paths"]["prepared"]
    stores = [ArrayStore(prepared / split) for split in ("train", "val")]
    y = np.concatenate([s.labels for s in stores])
    slides = np.concatenate([np.asarray(s.slides) for s in stores])
    sites = sites_of(slides, params["prepare"]["site_regex"])
    train = stores[0]
    head = f"train + val: {len(y)} crops, {len(set(slides))} slides; probe C = {C}"
    summary = [
        f"Probe choice on {head}",
        "",
        "| backbone | layer | stain | grouped CV bal. acc. | grouped CV ROC-AUC | "
        "leave-one-site-out: mean ROC-AUC | mean bal. acc. @ 0.5 | mean bal. acc. @ t |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    sites_table = [
        f"Leave-one-site-out per site on {head}",
        "",
        "| backbone | layer | stain | held-out site | ROC-AUC | bal. acc. @ 0.5 | "
        "t chosen on held-in | bal. acc. @ t | oracle t |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for backbone in args.backbones.split(","):
        for method in args.stains.split(","):
            stain = StainNormalizer.fit_store(method, train, SIZE, 3)
            for layer, x in features(stores, backbone, args.layers.split(","), stain).items():
                rows = list(leave_one_site_out(x, y, slides, sites))
                for site, auc, bal, t, bal_t, oracle in rows:
                    cells = f"{auc:.3f} | {bal:.3f} | {t:.2f} | {bal_t:.3f} | {oracle:.2f}"
                    sites_table.append(f"| {backbone} | {layer} | {method} | {site} | {cells} |")
                mean = np.mean([[r[1], r[2], r[4]] for r in rows], axis=0)
                cv_bal, cv_auc = grouped_cv(x, y, slides)
                summary.append(
                    f"| {backbone} | {layer} | {method} | {cv_bal:.3f} | {cv_auc:.3f} | "
                    f"{mean[0]:.3f} | {mean[1]:.3f} | {mean[2]:.3f} |"
                )
                print(summary[-1], flush=True)
    lines = [*summary, "", *sites_table]
    text = "\n".join(lines) + "\n"
    print(text)
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "probe_sites.md").write_text(text)


if __name__ == "__main__":
    main()
