"""DVC stage train-resnet: ResNet-50 transfer learning (ImageNet weights, or random init)."""

import logging

from glomx.training import train_stage

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
train_stage("resnet")
