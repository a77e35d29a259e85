"""Does a model keep its shipped threshold at a hospital it never saw? No labels used.

Leave-one-hospital-out on the train + val slides of ``artifacts/prepared/split.csv`` (test is
never read), with the trials and cache of ``bench/calibrate.py``: each family is trained by
its pipeline CV trial with the hospitals as folds, and the champion is the mean of its members
(``decision.json``) at 0.5, as ``choose`` builds it. Per model and hospital: patches
(sclerotic), ROC-AUC, balanced accuracy at the shipped threshold (each fold model's own; 0.5
for the ensemble), at the hospital's best threshold (an oracle no lab has), and the gap.

Home: the pooled out-of-fold balanced accuracy of the normal CV (prepare's folds of the 18
slides), with its slide-bootstrap interval, so that a gain abroad is never bought at home. It
is the pipeline's own ``artifacts/cv/<family>.csv`` when ``dvc.lock`` ran it with exactly
these params; otherwise ``--home`` trains those trials (cached too).

A candidate is a params change, ``--set KEY=VALUE`` (repeatable, as ``dvc exp run -S``): its
augmented, balanced store is rebuilt under ``bench/out/sites/stores/`` when it touches
``augment`` or ``balance``, so the workspace's outputs are never changed. Each run is kept as
``bench/out/sites/<name>.json``; a candidate is judged against ``today`` by the rule of
``docs/generalisation.md`` (:mod:`glomx.evaluation.adoption`). ``--table`` prints every kept
run as one table.

Usage: ``python bench/sites.py [--name today] [--set augment.ops.zoom.factor=0.25 ...]
[--families cnn,mobilenet,probe] [--home]`` after ``dvc repro balance``.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from calibrate import (
    OUT,
    ROOT,
    SPLIT,
    _ba,
    _table,
    champion_members,
    held_out_scores,
    site_folds,
)
from sklearn.metrics import roc_auc_score

from glomx.config import Params, ParamsError, file_hash, parse, read
from glomx.data.split import read_split_csv, sites_of, slide_folds
from glomx.errors import GlomxError
from glomx.evaluation.adoption import SiteFigures, judge
from glomx.evaluation.metrics import choose_threshold
from glomx.evaluation.selection import ENSEMBLE, OOF, mean_of, paired_difference
from glomx.models import FAMILIES
from glomx.pipeline import augment, balance
from glomx.pipeline.train import stage_name

RUNS = OUT / "sites"
TODAY = "today"
UPSTREAM = ("prepare", "augment", "balance")  # the stages a training stage's store comes from


def with_overrides(raw: dict[str, Any], sets: list[str]) -> dict[str, Any]:
    """``raw`` params with each ``KEY=VALUE`` applied (VALUE read as YAML); a key that
    params.yaml does not have is refused, as ``dvc exp run -S`` would not catch it."""
    out = copy.deepcopy(raw)
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep:
            raise ParamsError(f"--set {item}: write --set KEY=VALUE, e.g. cv.restyle.enabled=true")
        parts = key.split(".")
        node = out
        for depth, part in enumerate(parts):
            if not isinstance(node, dict) or part not in node:
                known = ", ".join(node) if isinstance(node, dict) else "none"
                where = ".".join(parts[: depth + 1])
                raise ParamsError(
                    f"--set {item}: params.yaml has no key {where} (there: {known}); "
                    "write --set KEY=VALUE with a key that params.yaml has"
                )
            if depth < len(parts) - 1:
                node = node[part]
        node[parts[-1]] = yaml.safe_load(value)
    return out


def candidate_stores(params: Params, raw: dict[str, Any], workspace: dict[str, Any]) -> Params:
    """``params`` itself when its augment and balance are the workspace's; otherwise the same
    params reading a store rebuilt for it under ``bench/out/sites/stores/<key>/`` (built once:
    the augment and balance stages' own code, outputs and MLflow runs kept in the bench)."""
    if all(raw[s] == workspace[s] for s in ("augment", "balance")):
        return params
    paths = params.need("paths")
    facts = [
        raw["augment"],
        raw["balance"],
        file_hash(Path(paths.prepared) / "train" / "manifest.json"),
    ]
    key = hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]
    root = RUNS / "stores" / key
    moved = paths.model_copy(
        update={k: str(root / k) for k in ("augmented", "balanced", "metrics", "plots")}
    )
    out = params.model_copy(update={"paths": moved})
    if not (root / "balanced" / "manifest.json").is_file():
        started = time.time()
        print(augment.run(out), flush=True)
        print(balance.run(out), flush=True)
        print(f"candidate store built in {time.time() - started:.0f} s: {root}", flush=True)
    return out


def _at(raw: dict[str, Any], key: str) -> Any:
    """``raw``'s value at a dotted key, as dvc.lock names a stage's params (None if absent)."""
    node: Any = raw
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _same(a: Any, b: Any) -> bool:
    """Equal params, leaves compared as text too: dvc.lock keeps ``1e-05`` as a string."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b or str(a) == str(b)


def pipeline_oof(raw: dict[str, Any], family: str) -> OOF | None:
    """The pipeline's own out-of-fold predictions of ``family`` when ``dvc.lock`` recorded
    every stage from prepare to ``train@<family>`` with exactly ``raw``'s params; else None."""
    lock = yaml.safe_load((ROOT / "dvc.lock").read_text())["stages"]
    for stage in (*UPSTREAM, stage_name(family)):
        recorded = lock.get(stage, {}).get("params", {}).get("params.yaml")
        if not recorded or any(not _same(_at(raw, k), v) for k, v in recorded.items()):
            return None
    path = Path(raw["paths"]["cv"]) / f"{family}.csv"
    return OOF.read(path) if path.is_file() else None


def site_rows(name: str, oof: OOF, site_regex: str) -> list[dict[str, Any]]:
    """Per hospital: patches, sclerotic, ROC-AUC, BA at the shipped and the best threshold."""
    sites = sites_of(oof.slides, site_regex)
    rows = []
    for site in sorted(set(sites)):
        mask = sites == site
        y, p = oof.labels[mask], oof.proba[mask]
        shipped = _ba(y, p >= oof.thresholds[mask])
        best = _ba(y, p >= choose_threshold(y, p, ties="interval"))
        auc = roc_auc_score(y, p) if 0 < y.sum() < len(y) else float("nan")
        counts = {"patches": int(mask.sum()), "sclerotic": int(y.sum())}
        rows.append({"model": name, "site": site, **counts, "auc": auc, "shipped": shipped,
                     "best": best})  # fmt: skip
    return rows


def home_figures(oof: OOF, boot: dict[str, Any]) -> dict[str, float]:
    ba = oof.intervals(boot)["balanced_accuracy"]
    return {"value": ba["value"], "ci_low": ba["ci_low"], "ci_high": ba["ci_high"]}


def figures(run: dict[str, Any]) -> SiteFigures:
    """The champion's rows of a kept run, as the adoption rule reads them."""
    rows = [r for r in run["sites"] if r["model"] == run["champion"]]
    home = run["home"].get(run["champion"])
    return SiteFigures(
        {r["site"]: r["shipped"] for r in rows},
        {r["site"]: r["sclerotic"] for r in rows},
        None if home is None else home["value"],
    )


def verdict(run: dict[str, Any], today: dict[str, Any], boot: dict[str, Any]) -> str:
    """The rule's one line for ``run`` against ``today``, with the paired home difference."""
    low = today["home"].get(today["champion"], {}).get("ci_low", float("nan"))
    line = judge(figures(today), figures(run), low).reason()
    mine, theirs = (RUNS / f"{r['name']}-home.csv" for r in (run, today))
    if mine.is_file() and theirs.is_file():
        d = paired_difference(OOF.read(mine), OOF.read(theirs), boot)
        line += f"; home vs today {d['value']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]"
    return line


def _f(value: float) -> str:
    return "n/a" if value is None or np.isnan(value) else f"{value:.3f}"


def report(run: dict[str, Any]) -> list[str]:
    """The run's table: a row per model and hospital, then home figures."""
    lines = _table(["model", "hospital", "patches (scl.)", "ROC-AUC", "BA shipped", "BA best",
                    "gap"])  # fmt: skip
    for r in run["sites"]:
        lines.append(f"| {r['model']} | {r['site']} | {r['patches']} ({r['sclerotic']}) "
                     f"| {_f(r['auc'])} | {_f(r['shipped'])} | {_f(r['best'])} "
                     f"| {_f(r['best'] - r['shipped'])} |")  # fmt: skip
    lines += ["", *_table(["model", "home OOF BA (18 slides) [95 % slide bootstrap]"])]
    for model, h in run["home"].items():
        lines.append(f"| {model} | {h['value']:.3f} [{h['ci_low']:.3f}, {h['ci_high']:.3f}] |")
    return lines


def summary_table(boot: dict[str, Any]) -> list[str]:
    """Every kept run's champion in one table, each judged against the run it names."""
    runs = {p.stem: json.loads(p.read_text()) for p in sorted(RUNS.glob("*.json"))}
    sites = sorted({r["site"] for run in runs.values() for r in run["sites"]})
    lines = _table(["run", "model", "params", *(f"{s} BA shipped" for s in sites), "home OOF BA",
                    "min, last run", "verdict"])  # fmt: skip
    for run in sorted(runs.values(), key=lambda r: (r["against"], r["against"] != r["name"])):
        shipped = {r["site"]: r["shipped"] for r in run["sites"] if r["model"] == run["champion"]}
        home = run["home"].get(run["champion"])
        base = runs.get(run["against"])
        judged = "—" if base is None or base is run else verdict(run, base, boot)
        lines.append(
            f"| {run['name']} | {run['champion']} | {' '.join(run['set']) or 'params.yaml'} "
            f"| {' | '.join(_f(shipped.get(s, float('nan'))) for s in sites)} "
            f"| {_f(home['value']) if home else 'not run'} | {run['seconds'] / 60:.0f} "
            f"| {judged} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default=TODAY, help="kept as bench/out/sites/<name>.json")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--families", help="comma-separated (default: choose.families)")
    parser.add_argument("--home", action="store_true", help="train the normal CV if needed")
    parser.add_argument(
        "--ensemble", help="the champion's members, comma-separated (default: decision.json's)"
    )
    parser.add_argument("--against", default=TODAY, help="the kept run a candidate is judged by")
    parser.add_argument("--table", action="store_true", help="only print every kept run")
    args = parser.parse_args()
    os.chdir(ROOT)  # params.yaml's paths are relative to it
    workspace = read(ROOT / "params.yaml")
    raw = with_overrides(workspace, args.set)
    params = parse(Params, raw, "")
    boot = params.need("cv").bootstrap.model_dump()
    if args.table:
        print("\n".join(summary_table(boot)))
        return
    if not SPLIT.is_file():
        raise SystemExit(f"{SPLIT.relative_to(ROOT)} not found: run `dvc repro balance` first")
    started = time.time()
    site_regex = params.need("prepare").site_regex
    if not site_regex:
        raise SystemExit("prepare.site_regex is null: set it so that slides have a hospital")
    families = args.families.split(",") if args.families else params.need("choose").families
    if unknown := [
        f for f in families + (args.ensemble or "").split(",") if f and f not in FAMILIES
    ]:
        raise SystemExit(f"unknown family {unknown[0]!r}; known: {', '.join(FAMILIES)}")
    members = args.ensemble.split(",") if args.ensemble else champion_members()
    if not members:
        raise SystemExit("artifacts/select/decision.json has no champion: run `make run` first")
    (OUT / "mlruns").mkdir(parents=True, exist_ok=True)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{OUT / 'mlruns' / 'mlflow.db'}"
    params = candidate_stores(params, raw, workspace)
    split = [r for r in read_split_csv(SPLIT) if r.split != "test"]
    sites, home_folds = site_folds(site_regex), slide_folds(split)
    models = list(dict.fromkeys(families + members))
    away = {f: held_out_scores(params, f, sites, "bench-sites") for f in models}
    home: dict[str, OOF] = {}
    for f in models:
        own = None if args.set else pipeline_oof(raw, f)
        if own is None and args.home:
            own = held_out_scores(params, f, home_folds, "bench-sites-home")
        if own is not None:
            home[f] = own
    champion = f"{ENSEMBLE} ({', '.join(members)})" if len(members) > 1 else members[0]
    if len(members) > 1:
        away[champion] = mean_of(away, members)
        if all(m in home for m in members):
            home[champion] = mean_of(home, members)
    RUNS.mkdir(parents=True, exist_ok=True)
    if champion in home:
        home[champion].write(RUNS / f"{args.name}-home.csv")
    run = {
        "name": args.name,
        "set": args.set,
        "against": args.against,
        "champion": champion,
        "started": started,
        "seconds": time.time() - started,
        "sites": [row for name, oof in away.items() for row in site_rows(name, oof, site_regex)],
        "home": {name: home_figures(oof, boot) for name, oof in home.items()},
    }
    (RUNS / f"{args.name}.json").write_text(json.dumps(run, indent=2) + "\n")
    lines = [f"# bench-sites: {args.name} ({' '.join(args.set) or 'params.yaml'})", "",
             *report(run), ""]  # fmt: skip
    if args.name != args.against and (RUNS / f"{args.against}.json").is_file():
        today = json.loads((RUNS / f"{args.against}.json").read_text())
        lines.append(f"Verdict against {args.against}: {verdict(run, today, boot)}")
    lines.append(f"{run['seconds']:.0f} s ({time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} "
                 "cores)")  # fmt: skip
    print("\n".join(lines))


if __name__ == "__main__":
    try:
        main()
    except GlomxError as err:
        sys.exit(f"bench-sites failed: {err}")
