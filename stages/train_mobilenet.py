"""DVC stage train-mobilenet: MobileNetV2 (ImageNet weights) fine-tuned in two phases."""

import logging

from glomx.training import train_stage

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
train_stage("mobilenet")
