"""DVC stage evaluate: score the trained models on the test split, report, promote the champion."""

from glomx.config import load
from glomx.pipeline import evaluate
from glomx.stage_main import stage_main

with stage_main("evaluate"):
    print(evaluate.run(load()))
