"""DVC stage: score the trained models on the test split, report, promote the champion."""

from glomx.evaluation.report import with_interval
from glomx.params import load_params
from glomx.pipeline.evaluate import evaluate
from glomx.stage_main import stage_main

with stage_main("evaluate"):
    result = evaluate(load_params())
    for name, m in result["models"].items():
        print(f"{name:>16}: test balanced accuracy {with_interval(m['balanced_accuracy'])}")
    champion = result["champion"]
    print(f"champion: version {champion['version']} ({champion['family']}); see reports/summary.md")
