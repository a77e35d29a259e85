"""Can a lab's *unlabelled* patches move the probe's decision closer to its best than 0.5 does?

Leave-one-site-out on the train + val patches of ``artifacts/prepared/split.csv`` (never
test; a site is the slide id's prefix before ``_``/``-``): the probe, frozen EfficientNet-Lite0
features at ``train_probe``'s layer and size (decoded from data/ as prepare decodes them,
computed once and cached in ``bench/out``), standardised, then a balanced logistic regression
at C = 0.01 as ``bench/probe_sites.py``, is fitted on the other hospitals, and the held-out
hospital's patches are then used without their labels by

- ``EM``: its sclerotic share estimated by EM (Saerens, Latinne & Decaestecker 2002) from the
  probe's probabilities, the posteriors re-weighted to that prior, threshold 0.5. The prior the
  probe was trained under is 0.5, not the training sites' sclerotic share: balanced class
  weights make the weighted training set half and half.
- ``true prior``: the same re-weighting to the site's real share, an oracle that shows what a
  perfect estimate would give.
- ``BCTS`` and ``BCTS+EM``: the probe's logit first scaled and shifted (bias-corrected
  temperature scaling, Alexandari et al. 2020; for two classes a Platt fit, balanced so that
  the training prior stays 0.5) on the training sites' slide-grouped out-of-fold probabilities,
  then thresholded at 0.5 as is, or after EM.
- ``EM quantile``: the cut that flags the EM prior's share of the site's patches.
- ``site std``: the pooled features standardised with the held-out site's own mean and standard
  deviation instead of the training scaler; a feature-level stand-in for re-estimating the
  backbone's batch-norm statistics, which the frozen, folded probe does not offer cheaply.
- ``per-site std``: every site, training ones included, standardised with its own statistics
  before the probe is fitted.

Balanced accuracy is scored on all of the site's patches; the gain over 0.5 comes with its
10th and 90th percentiles over a bootstrap of the site's slides, the unlabelled step re-run
on each resample (a resample with one class is skipped).

Usage: ``python bench/label_free.py [--repeats 200]`` after ``dvc repro prepare``; prints
markdown tables and writes ``bench/out/label_free.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from calibrate import OUT, ROOT, SPLIT, _ba, _logit, write_report
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from glomx.config import read
from glomx.data.adapt import adapt
from glomx.data.catalogue import FOLDERS
from glomx.data.images import Preprocessing, load_image
from glomx.data.split import read_split_csv, sites_of
from glomx.evaluation.metrics import choose_threshold

C = 0.01
TRAIN_PRIOR = 0.5  # balanced class weights: the weighted training set is half sclerotic
METHODS = (
    "0.5", "EM", "true prior", "BCTS", "BCTS+EM", "EM quantile", "site std", "per-site std"
)  # fmt: skip


def features(paths: list[Path], params: dict) -> np.ndarray:
    """Pooled probe features of each image, decoded as prepare decodes it (cached by the list
    of files and the probe's backbone, layer and size)."""
    model, image = params["train_probe"]["model"], params["prepare"]["image"]
    key = hashlib.sha256(repr(([str(p) for p in paths], model, image)).encode()).hexdigest()[:16]
    cache = OUT / f"label_free_features_{key}.npy"
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
    """Features, labels, slides and sites of the train + val patches of ``SPLIT`` (never test)."""
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


def reweight(p: np.ndarray, prior: float, train_prior: float = TRAIN_PRIOR) -> np.ndarray:
    """Posteriors under class prior ``prior`` from ones under ``train_prior`` (Bayes' rule, with
    p(x | y) assumed the same at both sites: pure prior shift)."""
    p = np.clip(p, 1e-6, 1 - 1e-6)
    pos = p * prior / train_prior
    neg = (1 - p) * (1 - prior) / (1 - train_prior)
    return pos / (pos + neg)


def em_prior(p: np.ndarray, train_prior: float = TRAIN_PRIOR, tol: float = 1e-7) -> float:
    """The sclerotic share of the patches behind ``p`` by EM (Saerens et al. 2002): re-weight the
    posteriors to the current prior, take their mean as the next one, until it settles."""
    prior = train_prior
    for _ in range(5000):
        new = float(reweight(p, prior, train_prior).mean())
        if abs(new - prior) < tol:
            return new
        prior = new
    return prior


def standardise(x: np.ndarray) -> np.ndarray:
    """``x`` centred and scaled by its own columns' mean and standard deviation."""
    sd = x.std(axis=0)
    return (x - x.mean(axis=0)) / np.where(sd < 1e-12, 1.0, sd)


@dataclass(frozen=True)
class HeldOut:
    """A held-out site's labels and features, and what was fitted without it."""

    y: np.ndarray
    x: np.ndarray
    p: np.ndarray  # the probe's probabilities
    pb: np.ndarray  # the same after BCTS
    head: LogisticRegression  # the probe's logistic regression, on training-scaled features
    per_site: Pipeline  # the probe fitted on per-site standardised features


def fit_site(
    x: np.ndarray, y: np.ndarray, slides: np.ndarray, sites: np.ndarray, site: str, seed: int
) -> HeldOut:
    """Everything fitted on the sites other than ``site`` (BCTS on their slide-grouped
    out-of-fold probabilities, so that it sees scores of slides the probe has not seen)."""
    tr, te = sites != site, sites == site
    model = probe().fit(x[tr], y[tr])
    cv = StratifiedGroupKFold(5, shuffle=True, random_state=seed)
    oof = cross_val_predict(
        probe(), x[tr], y[tr], groups=slides[tr], cv=cv, method="predict_proba"
    )[:, 1]
    bcts = LogisticRegression(C=1e4, class_weight="balanced").fit(_logit(oof), y[tr])
    p = model.predict_proba(x[te])[:, 1]
    own = x[tr].copy()
    for s in set(sites[tr]):
        own[sites[tr] == s] = standardise(own[sites[tr] == s])
    return HeldOut(
        y=y[te],
        x=x[te],
        p=p,
        pb=bcts.predict_proba(_logit(p))[:, 1],
        head=model[-1],
        per_site=probe().fit(own, y[tr]),
    )


def decisions(h: HeldOut, idx: np.ndarray) -> dict[str, np.ndarray]:
    """Each method's sclerotic calls on patches ``idx``, using only those patches' features and
    scores (their labels only for the ``true prior`` oracle)."""
    p, pb = h.p[idx], h.pb[idx]
    z, em = standardise(h.x[idx]), em_prior(p)
    return {
        "0.5": p >= 0.5,
        "EM": reweight(p, em) >= 0.5,
        "true prior": reweight(p, h.y[idx].mean()) >= 0.5,
        "BCTS": pb >= 0.5,
        "BCTS+EM": reweight(pb, em_prior(pb)) >= 0.5,
        "EM quantile": p >= np.quantile(p, 1 - em),
        "site std": h.head.predict_proba(z)[:, 1] >= 0.5,
        "per-site std": h.per_site.predict_proba(z)[:, 1] >= 0.5,
    }


def _cell(ba: float, gain: float, boot: np.ndarray) -> str:
    boot = boot[~np.isnan(boot)]
    lo, hi = np.percentile(boot, [10, 90]) if len(boot) else (np.nan, np.nan)
    return f"{ba:.3f} ({gain:+.3f} [{lo:+.3f}, {hi:+.3f}])"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200, help="slide-bootstrap resamples")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not SPLIT.is_file():
        print(f"{SPLIT.relative_to(ROOT)} not found: run dvc repro prepare first")
        return
    started = time.time()
    x, y, slides, sites = site_data(read(ROOT / "params.yaml"))
    head = ["site", "patches (scl.)", "true share", "share ≥0.5", "EM prior",
            "BCTS share ≥0.5", "BCTS+EM prior", "BA @0.5", "oracle BA"]  # fmt: skip
    prior_lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    ba: dict[str, dict[str, float]] = {}
    cells: dict[str, dict[str, str]] = {}
    for site in sorted(set(sites)):
        ys, ss = y[sites == site], slides[sites == site]
        if not 0 < ys.sum() < len(ys):
            continue
        h = fit_site(x, y, slides, sites, site, args.seed)
        full = decisions(h, np.arange(len(ys)))
        ba[site] = {m: _ba(ys, d) for m, d in full.items()}
        rng, units = np.random.default_rng(args.seed), np.unique(ss)
        boot = {m: [] for m in METHODS}
        for _ in range(args.repeats):
            idx = np.concatenate([np.flatnonzero(ss == u) for u in rng.choice(units, len(units))])
            d = decisions(h, idx)
            for m in METHODS:
                boot[m].append(_ba(ys[idx], d[m]) - _ba(ys[idx], d["0.5"]))
        cells[site] = {
            m: _cell(ba[site][m], ba[site][m] - ba[site]["0.5"], np.array(boot[m])) for m in METHODS
        }
        oracle = _ba(ys, h.p >= choose_threshold(ys, h.p, ties="interval"))
        prior_lines.append(
            f"| {site} | {len(ys)} ({ys.sum()}) | {ys.mean():.3f} | {(h.p >= 0.5).mean():.3f} "
            f"| {em_prior(h.p):.3f} | {(h.pb >= 0.5).mean():.3f} | {em_prior(h.pb):.3f} "
            f"| {ba[site]['0.5']:.3f} | {oracle:.3f} |"
        )
    cols = ["method", *cells, "mean gain"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for m in METHODS:
        mean = np.mean([ba[s][m] - ba[s]["0.5"] for s in ba])
        lines.append(f"| {m} | " + " | ".join(c[m] for c in cells.values()) + f" | {mean:+.3f} |")
    write_report(
        "label_free.md",
        "Label-free adaptation: leave-one-site-out, train + val slides only",
        "Probe fitted on the other sites; each held-out site's labels are used only to score "
        "(and by the `true prior` oracle). Cells: balanced accuracy on all the site's "
        "patches (gain over 0.5 [10th, 90th percentile] over "
        f"{args.repeats} slide-bootstrap resamples, seed {args.seed}). "
        f"Training prior {TRAIN_PRIOR} (balanced class weights). "
        f"{time.time() - started:.0f} s.",
        prior_lines,
        lines,
    )


if __name__ == "__main__":
    main()
