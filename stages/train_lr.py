"""DVC stage train-lr: logistic regression on flattened pixels, the original study's baseline."""

import logging

from glomx.models.logistic import LogisticClassifier
from glomx.params import load_params
from glomx.training import prepared_preprocessing, run_training

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
params = load_params()
paths, section = params["paths"], params["train_lr"]
classifier = LogisticClassifier.from_params(section, prepared_preprocessing(paths))
scores = run_training("train-lr", classifier, section, paths)
print("validation:", ", ".join(f"{k} {v:.3f}" for k, v in scores.items()))
