"""DVC stage: balance the augmented training set and write class weights."""

import json
from pathlib import Path

from glomx.data.store import ArrayStore
from glomx.params import flatten, load_params
from glomx.pipeline.balance import balance_store
from glomx.stage_main import stage_main
from glomx.tracking import stage_run

with stage_main("balance"):
    params = load_params()
    paths, config = params["paths"], params["balance"]
    src = ArrayStore(paths["augmented"])
    summary = balance_store(src, paths["balanced"], config)
    metrics = Path(paths["metrics"]) / "balance.json"
    metrics.parent.mkdir(parents=True, exist_ok=True)
    metrics.write_text(json.dumps(summary, indent=2) + "\n")
    with stage_run("balance", config, src.data_kind) as run:
        run.log_dict(summary, "balance.json")
        run.log_metrics({k: v for k, v in flatten(summary).items() if k != "strategy"})
        run.log_dataset(ArrayStore(paths["balanced"]), "balanced")
    print(f"balance ({config['strategy']}): {summary['before']} → {summary['after']}")
