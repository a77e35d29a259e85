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
    for split, c in counts["splits"].items():
        print(
            f"{split:>5}: {c['images']} images ({c['class_1']} sclerotic) from {c['slides']} slides"
        )
