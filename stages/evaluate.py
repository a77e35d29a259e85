"""DVC stage: score the trained models on the test split, report, promote the champion."""

import logging

from glomx.evaluate import evaluate
from glomx.evaluation.report import with_interval
from glomx.params import load_params

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
result = evaluate(load_params())
for name, m in result["models"].items():
    print(f"{name:>16}: test balanced accuracy {with_interval(m['balanced_accuracy'])}")
champion = result["champion"]
print(f"champion: version {champion['version']} ({champion['family']}); see reports/summary.md")
