"""DVC stage: catalogue, split and homogenise the raw patches into array stores."""

import logging
from pathlib import Path

from glomx.params import load_params
from glomx.prepare import prepare

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
params = load_params()
paths = params["paths"]
counts = prepare(
    Path(paths["data"]),
    Path(paths["prepared"]),
    Path(paths["metrics"]) / "prepare.json",
    params["prepare"],
)
for split, c in counts["splits"].items():
    print(f"{split:>5}: {c['images']} images ({c['class_1']} sclerotic) from {c['slides']} slides")
