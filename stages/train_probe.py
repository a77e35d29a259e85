"""DVC stage train-probe: logistic regression on frozen pretrained ImageNet features."""

import logging

from glomx.training import train_stage

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
train_stage("probe")
