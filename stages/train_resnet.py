"""DVC stage train-resnet: ResNet-50 transfer learning (ImageNet weights, or random init)."""

from glomx.pipeline.train import train_stage
from glomx.stage_main import stage_main

with stage_main("train-resnet"):
    train_stage("resnet")
