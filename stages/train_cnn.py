"""DVC stage train-cnn: a small CNN from scratch, with pictures of its first-layer filters."""

import logging

from glomx.training import train_stage

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
train_stage("cnn")
