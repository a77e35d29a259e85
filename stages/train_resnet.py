"""DVC stage train-resnet: ResNet-50 transfer learning (ImageNet weights, or random init)."""

import logging

from glomx.models.resnet import ResNetClassifier
from glomx.params import load_params
from glomx.training import prepared_preprocessing, run_training

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
params = load_params()
paths, section = params["paths"], params["train_resnet"]
classifier = ResNetClassifier.from_params(section, prepared_preprocessing(paths))
scores = run_training("train-resnet", classifier, section, paths)
print(f"backbone weights: {classifier.meta.extra['weights']}")
print("validation:", ", ".join(f"{k} {v:.3f}" for k, v in scores.items()))
