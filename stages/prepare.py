"""DVC stage: catalogue, split and homogenise the raw patches into array stores."""

from pathlib import Path

from glomx.params import load_params
from glomx.pipeline.prepare import log_prepare_run, prepare
from glomx.stage_main import stage_main

with stage_main("prepare"):
    params = load_params()
    paths, config = params["paths"], params["prepare"]
    out = Path(paths["prepared"])
    counts = prepare(Path(paths["data"]), out, Path(paths["metrics"]) / "prepare.json", config)
    log_prepare_run(counts, out, config)  # the run starts once the decode workers are gone
    parts = {**counts["splits"], **{f"fold {k}": c for k, c in counts["folds"].items()}}
    for part, c in parts.items():
        print(
            f"{part:>6}: {c['images']} images ({c['class_1']} sclerotic) from {c['slides']} slides"
        )
