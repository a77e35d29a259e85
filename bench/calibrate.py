"""Does a threshold calibrated on a few of a new lab's labelled patches beat the model's own?

Leave-one-site-out with the pipeline's own training, on the train + val slides of
``artifacts/prepared/split.csv`` (never test; a site is ``prepare.site_regex``'s group, the
hospital). Every family of ``choose.families`` is cross-validated by the very trials its
``train@<family>`` stage runs (:mod:`glomx.crossval`: the augmented, balanced training store,
inner-validation slides for its fit-time choices, its ``params.yaml`` section), except that the
folds are the hospitals: each hospital's original patches are scored by a model that saw no
slide of it. The ensemble is the mean of the champion's members (``decision.json``'s tied
families, or ``--ensemble``), as the choose stage builds it, at threshold 0.5.

Then, for each model and hospital, many times over, ``n`` of its labelled patches are drawn, by
patch or as whole slides (slides added in random order until they hold ``n`` patches), a
threshold is chosen on them as ``glomx calibrate`` does, and the site's other patches are
scored at the model's own threshold and at the calibrated one (balanced accuracy). A draw with
one class only is refused, as the command refuses it: the lab keeps the model's threshold.
Platt scaling (a logistic fit of the label on the score's logit, on the same draw) is measured
too: with balanced class weights, its 0.5 is one more threshold (balanced accuracy);
unweighted, its probabilities against the raw ones (Brier score, lower is better).

Each family's held-out scores are cached in ``bench/out/calibrate_sites/`` under a key of its
params section, ``cv``, ``site_regex`` and the stores' manifests, so a rerun with other draws
trains nothing. The trials' MLflow runs go to ``bench/out/mlruns``, never the project's store.

Usage: ``python bench/calibrate.py [--families lr,cnn] [--ensemble cnn,probe] [--repeats 200]
[--sizes 5,10,20,40] [--suggested] [--scores DIR]`` after ``dvc repro balance``; prints
markdown tables and writes ``bench/out/calibrate.md`` (with ``--suggested`` instead
``calibrate_suggest.md``: ``glomx calibrate --suggest``'s draw against random ones). All five
families on the shared slice: about 15 min on 2 cores.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, brier_score_loss, roc_auc_score

from glomx.artifacts.decision import Decision
from glomx.artifacts.layout import DECISION_FILE, SPLIT_FILE, Layout
from glomx.calibrate import MIN_PER_CLASS, MIN_SLIDES
from glomx.config import Params, file_hash, load
from glomx.crossval import fold_trials, out_of_fold, run_trials
from glomx.data.split import read_split_csv, sites_of
from glomx.data.store import ArrayStore
from glomx.evaluation.metrics import choose_threshold
from glomx.evaluation.selection import ENSEMBLE, OOF, mean_of
from glomx.evaluation.suggest import suggest
from glomx.models import FAMILIES, family_section
from glomx.tracking import stage_run

ROOT = Path(__file__).resolve().parents[1]
SPLIT = ROOT / "artifacts" / "prepared" / SPLIT_FILE
DECISION = ROOT / "artifacts" / "select" / DECISION_FILE
OUT = ROOT / "bench" / "out"
MODES = ("patches", "slides")


def site_folds(site_regex: str) -> dict[str, int]:
    """Every train + val slide's fold: the index of its hospital among the sorted hospitals."""
    slides = sorted({r.slide for r in read_split_csv(SPLIT) if r.split != "test"})
    sites = sites_of(slides, site_regex)
    index = {site: k for k, site in enumerate(sorted(set(sites)))}
    return {slide: index[site] for slide, site in zip(slides, sites, strict=True)}


@functools.cache
def store_digest(path: Path) -> str:
    """md5 of a store's files, pixels included (streamed; once per store and run): a manifest
    alone does not tell two stores apart, e.g. the balanced store records balance's params,
    not augment's."""
    digest = hashlib.md5()
    for name in sorted(p.name for p in path.iterdir()):
        with open(path / name, "rb") as f:
            digest.update(name.encode() + hashlib.file_digest(f, "md5").digest())
    return digest.hexdigest()


def cache_path(
    params: Params, family: str, stores: list[ArrayStore], folds: dict[str, int]
) -> Path:
    """Where ``family``'s held-out scores are kept, named by everything they depend on."""
    facts = {
        "family": family,
        "section": family_section(params, family).logged(),  # as logged, so caches keep their keys
        "cv": params.need("cv").model_dump(),
        "site_regex": params.need("prepare").site_regex,
        "stores": [store_digest(s.path.resolve()) for s in stores],
        "split": file_hash(SPLIT),
        "folds": folds,
    }
    key = hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()
    return OUT / "calibrate_sites" / f"{family}-{key[:16]}.csv"


def held_out_scores(
    params: Params, family: str, folds: dict[str, int], bench: str = "bench-calibrate"
) -> OOF:
    """``family`` trained on all folds but one, scoring that one's original patches, for each
    fold in turn: the pipeline's CV trials with the given folds (the hospitals, or prepare's
    folds), cached. The trials' runs are nested under a run named ``<bench> <family>``."""
    layout, cfg = Layout(params.need("paths")), params.need("cv")
    site_regex = params.need("prepare").site_regex
    originals = ArrayStore(layout.prepared("train"))
    training = ArrayStore(layout.balanced)
    cache = cache_path(params, family, [originals, training], folds)
    if cache.is_file():
        return OOF.read(cache)
    logged = {"family": family, "folds": json.dumps(folds, sort_keys=True), "cv": cfg.model_dump()}
    with stage_run(f"{bench} {family}", logged, originals.data_kind) as run:
        trials = fold_trials(
            family,
            family_section(params, family),
            layout.preprocessing(),
            training,
            originals,
            folds,
            cfg,
            site_regex,
            run.ref(),
        )
        oof = out_of_fold(run_trials(trials, cfg))
    oof.write(cache)
    return oof


def champion_members() -> list[str]:
    """The tied families the choose stage averaged into the champion candidate, if any."""
    if not DECISION.is_file():
        return []
    return list(Decision.read(DECISION).ensemble.get("members", []))


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


def one_draw(
    y: np.ndarray, p: np.ndarray, own: np.ndarray, slides: np.ndarray, cal: np.ndarray
) -> dict[str, float]:
    """Balanced accuracy on the patches outside ``cal`` at the model's own thresholds ``own``,
    at the calibrated threshold and at balanced Platt's 0.5; Brier of raw and (unweighted)
    Platt probabilities; whether ``glomx calibrate`` would warn that the threshold is not to be
    trusted yet."""
    rest = np.setdiff1d(np.arange(len(y)), cal)
    yc, pc, yr, pr = y[cal], p[cal], y[rest], p[rest]
    few = min(yc.sum(), len(yc) - yc.sum()) < MIN_PER_CLASS or len(set(slides[cal])) < MIN_SLIDES
    out = {
        "ba_own": _ba(yr, pr >= own[rest]),
        "brier_raw": brier_score_loss(yr, pr),
        "warned": float(few),
    }
    if not 0 < yc.sum() < len(yc):  # one class: refused, the lab keeps the model's threshold
        return out | {"refused": 1.0, "ba_cal": out["ba_own"], "ba_platt": out["ba_own"],
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


def draws(
    oof: OOF, mask: np.ndarray, mode: str, n: int, repeats: int, seed: int
) -> dict[str, np.ndarray] | None:
    """:func:`one_draw`'s figures over ``repeats`` draws of ``n`` of the ``mask`` patches;
    None when no draw leaves a slide to score."""
    y, p, own, slides = oof.labels[mask], oof.proba[mask], oof.thresholds[mask], oof.slides[mask]
    rng = np.random.default_rng(seed)
    results = [
        one_draw(y, p, own, slides, cal)
        for _ in range(repeats)
        if (cal := draw(rng, slides, n, mode)) is not None
    ]
    return {k: np.array([d[k] for d in results]) for k in results[0]} if results else None


def suggested_draws(
    oof: OOF, mask: np.ndarray, n: int, repeats: int, seed: int, share: float = 0.8
) -> dict[str, np.ndarray] | None:
    """:func:`one_draw`'s figures for ``glomx calibrate --suggest n``'s draw, each repeat from a
    random ``share`` of the ``mask`` patches (the lab's unlabelled folder), at the median of the
    model's own thresholds there; None when there are too few patches."""
    y, p, own, slides = oof.labels[mask], oof.proba[mask], oof.thresholds[mask], oof.slides[mask]
    pool_size = int(share * len(y))
    if pool_size <= n:
        return None
    rng = np.random.default_rng(seed)
    threshold = float(np.median(own))
    results = []
    for _ in range(repeats):
        pool = np.sort(rng.choice(len(y), pool_size, replace=False))
        cal = pool[suggest(p[pool], slides[pool], threshold, n)]
        results.append(one_draw(y, p, own, slides, cal))
    return {k: np.array([d[k] for d in results]) for k in results[0]}


def suggested_report(
    models: dict[str, OOF], site_regex: str, sizes: list[int], repeats: int, seed: int
) -> list[str]:
    """Per model, hospital and n: the calibration gain of a random draw of n and of 2n (by
    patch) against the suggested draw of n, and whether the suggested n gains at least what the
    random 2n does."""
    table = _table(["model", "site", "n", "random n: gain [p10, p90]", "random 2n",
                    "suggested n", "suggested n ≥ random 2n", "suggested: warned"])  # fmt: skip
    for name, oof in models.items():
        sites = sites_of(oof.slides, site_regex)
        for site in sorted(set(sites)):
            mask = sites == site
            if not 0 < oof.labels[mask].sum() < mask.sum():
                continue
            for n in sizes:
                single = draws(oof, mask, "patches", n, repeats, seed)
                double = draws(oof, mask, "patches", 2 * n, repeats, seed)
                chosen = suggested_draws(oof, mask, n, repeats, seed)
                if single is None or double is None or chosen is None:
                    continue
                gain = {k: r["ba_cal"] - r["ba_own"] for k, r in
                        (("n", single), ("2n", double), ("s", chosen))}  # fmt: skip
                met = np.nanmean(gain["s"]) >= np.nanmean(gain["2n"])
                table.append(
                    f"| {name} | {site} | {n} | {_spread(gain['n'])} | {_spread(gain['2n'])} "
                    f"| {_spread(gain['s'])} | {'yes' if met else 'no'} "
                    f"| {chosen['warned'].mean():.0%} |"
                )
    return table


def cached_scores(directory: Path, families: list[str]) -> dict[str, OOF]:
    """Held-out scores already computed (``bench/out/calibrate_sites/<family>-<key>.csv``, e.g.
    another checkout's), one file per family, instead of training."""
    found = {}
    for family in families:
        files = sorted(directory.glob(f"{family}-*.csv"))
        if len(files) != 1:
            raise SystemExit(f"{directory}: need exactly one {family}-*.csv, found {len(files)}")
        found[family] = OOF.read(files[0])
    return found


def _spread(values: np.ndarray) -> str:
    v = values[~np.isnan(values)]
    if not len(v):
        return "n/a"
    lo, hi = np.percentile(v, [10, 90])
    return f"{v.mean():+.3f} [{lo:+.3f}, {hi:+.3f}]"


def _table(cols: list[str]) -> list[str]:
    return ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]


def report(models: dict[str, OOF], site_regex: str, args: argparse.Namespace) -> list[list[str]]:
    """The three tables: each model at each held-out hospital; the calibration gain per model,
    draw and size, a column per hospital; every figure per model, hospital, draw and size."""
    sizes = [int(s) for s in args.sizes.split(",")]
    sites_table = _table(["model", "site", "patches (scl.)", "slides", "AUC", "BA own",
                          "oracle BA"])  # fmt: skip
    summary: dict[tuple[str, str, int], dict[str, dict[str, np.ndarray]]] = {}
    detail = _table(["model", "site", "draw", "n", "refused", "BA own", "BA calibrated",
                     "gain [p10, p90]", "warned", "gain if not warned", "Platt BA gain",
                     "Brier raw → Platt"])  # fmt: skip
    for name, oof in models.items():
        sites = sites_of(oof.slides, site_regex)
        for site in sorted(set(sites)):
            mask = sites == site
            y, p = oof.labels[mask], oof.proba[mask]
            if not 0 < y.sum() < len(y):
                continue
            oracle = _ba(y, p >= choose_threshold(y, p, ties="interval"))
            sites_table.append(
                f"| {name} | {site} | {len(y)} ({y.sum()}) | {len(set(oof.slides[mask]))} "
                f"| {roc_auc_score(y, p):.3f} | {_ba(y, p >= oof.thresholds[mask]):.3f} "
                f"| {oracle:.3f} |"
            )
            for mode in MODES:
                for n in sizes:
                    r = draws(oof, mask, mode, n, args.repeats, args.seed)
                    if r is None:
                        continue
                    summary.setdefault((name, mode, n), {})[site] = r
                    gain, trusted = r["ba_cal"] - r["ba_own"], r["warned"] == 0
                    detail.append(
                        f"| {name} | {site} | {mode} | {n} | {r['refused'].mean():.0%} "
                        f"| {np.nanmean(r['ba_own']):.3f} | {np.nanmean(r['ba_cal']):.3f} "
                        f"| {_spread(gain)} | {r['warned'].mean():.0%} "
                        f"| {_spread(gain[trusted])} | {_spread(r['ba_platt'] - r['ba_own'])} "
                        f"| {r['brier_raw'].mean():.3f} → {r['brier_platt'].mean():.3f} |"
                    )
    site_names = sorted({s for per_site in summary.values() for s in per_site})
    gains = _table(["model", "draw", "n", *site_names, "mean gain", "warned",
                    "mean gain if not warned", "Platt mean gain"])  # fmt: skip
    for (name, mode, n), per_site in summary.items():
        cells = [
            _spread(r["ba_cal"] - r["ba_own"]) if (r := per_site.get(s)) else "n/a"
            for s in site_names
        ]
        mean = np.mean([np.nanmean(r["ba_cal"] - r["ba_own"]) for r in per_site.values()])
        platt = np.mean([np.nanmean(r["ba_platt"] - r["ba_own"]) for r in per_site.values()])
        warned = np.mean([r["warned"].mean() for r in per_site.values()])
        trusted = [
            np.mean(g)
            for r in per_site.values()
            if len(g := (r["ba_cal"] - r["ba_own"])[r["warned"] == 0])
        ]
        if_trusted = (
            f"{np.mean(trusted):+.3f} ({len(trusted)} of {len(per_site)})" if trusted else "n/a"
        )
        gains.append(
            f"| {name} | {mode} | {n} | {' | '.join(cells)} | {mean:+.3f} | {warned:.0%} "
            f"| {if_trusted} | {platt:+.3f} |"
        )
    return [sites_table, gains, detail]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", help="comma-separated (default: choose.families)")
    parser.add_argument(
        "--ensemble", help="members of the ensemble, comma-separated; '' for none (default: "
        "the champion's members in decision.json, when all are among the families)"
    )  # fmt: skip
    parser.add_argument("--repeats", type=int, default=200, help="draws per site, size and mode")
    parser.add_argument("--sizes", default="5,10,20,40", help="calibration set sizes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--suggested", action="store_true", help="instead, compare glomx calibrate --suggest's "
        "draw with random ones for the ensemble, else each family (calibrate_suggest.md)"
    )  # fmt: skip
    parser.add_argument(
        "--scores", type=Path, help="read the held-out scores from this folder of cached "
        "<family>-<key>.csv files instead of training (e.g. another checkout's calibrate_sites)"
    )  # fmt: skip
    args = parser.parse_args()
    if args.scores is None and not SPLIT.is_file():
        print(f"{SPLIT.relative_to(ROOT)} not found: run `dvc repro balance` first")
        return
    started = time.time()
    os.chdir(ROOT)  # params.yaml's paths are relative to it
    params = load(ROOT / "params.yaml")
    site_regex = params.need("prepare").site_regex
    if not site_regex:
        print("prepare.site_regex is null: set it so that slides have a hospital to leave out")
        return
    families = args.families.split(",") if args.families else params.need("choose").families
    if args.ensemble is not None:
        members = [m for m in args.ensemble.split(",") if m]
    else:
        members = [m for m in champion_members() if m in families]
        if len(members) < len(champion_members()):
            members = []  # the champion's ensemble needs every member; --ensemble asks for it
    if len(members) < 2 and args.ensemble is None:
        print("no ensemble (the champion is one family, choose has not run, or --families "
              "leaves out a member); --ensemble a,b adds one")  # fmt: skip
    if unknown := [f for f in families + members if f not in FAMILIES]:
        raise SystemExit(f"unknown family {unknown[0]!r}; known: {', '.join(FAMILIES)}")
    (OUT / "mlruns").mkdir(parents=True, exist_ok=True)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{OUT / 'mlruns' / 'mlflow.db'}"
    wanted = list(dict.fromkeys(families + members))
    if args.scores is not None:
        models = cached_scores(args.scores, wanted)
    else:
        folds = site_folds(site_regex)
        models = {f: held_out_scores(params, f, folds) for f in wanted}
    if len(members) > 1:
        models[f"{ENSEMBLE} ({', '.join(members)})"] = mean_of(models, members)
    if not args.suggested:
        write_report(
            "calibrate.md",
            "Lab calibration: leave-one-site-out, train + val slides only",
            "Each model trained on the other hospitals by its pipeline trial (ensemble: the "
            f"members' mean at 0.5); {args.repeats} draws per row (seed {args.seed}); BA on the "
            "site's patches outside each draw; BA own = at the model's own threshold; gain = "
            "calibrated − own, mean [10th, 90th percentile] over draws; refused = draws with one "
            "class (own threshold kept); warned = draws with "
            f"< {MIN_PER_CLASS} patches of a class or < {MIN_SLIDES} slides, where "
            f"`glomx calibrate` warns. {time.time() - started:.0f} s.",
            *report(models, site_regex, args),
        )
    else:
        sizes = [int(x) for x in args.sizes.split(",")]
        write_report(
            "calibrate_suggest.md",
            "Lab calibration: the suggested draw against random draws",
            "Leave-one-site-out held-out scores as in calibrate.md. Random: n (or 2n) patches "
            f"drawn at random from the site, {args.repeats} draws. Suggested: `glomx calibrate "
            "--suggest n`'s choice from a random 80 % of the site's patches (the lab's "
            f"unlabelled folder), {args.repeats} such folders, at the model's own threshold. "
            "Gain = balanced accuracy on the site's other patches at the calibrated threshold "
            "minus at the model's own, mean [10th, 90th percentile] (seed "
            f"{args.seed}).",
            # a lab calibrates the champion: its ensemble when there is one
            suggested_report(
                {k: v for k, v in models.items() if k.startswith(ENSEMBLE)} or models,
                site_regex,
                sizes,
                args.repeats,
                args.seed,
            ),
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
