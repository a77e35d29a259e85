"""DVC stage train-cnn: a small CNN from scratch, with pictures of its first-layer filters."""

import logging

from glomx.models.cnn import CNNClassifier
from glomx.params import load_params
from glomx.training import prepared_preprocessing, run_training

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
params = load_params()
paths, section = params["paths"], params["train_cnn"]
classifier = CNNClassifier.from_params(section, prepared_preprocessing(paths))
scores = run_training("train-cnn", classifier, section, paths)
print("validation:", ", ".join(f"{k} {v:.3f}" for k, v in scores.items()))
