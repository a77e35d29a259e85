"""DVC stage train-lr: logistic regression on flattened pixels, the original study's baseline."""

import logging

from glomx.training import train_stage

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
train_stage("lr")
