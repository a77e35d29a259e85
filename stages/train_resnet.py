"""DVC stage train-resnet: ResNet-50 transfer learning (ImageNet weights, or random init)."""

from glomx.stage_main import stage_main
from glomx.training import train_stage

with stage_main("train-resnet"):
    train_stage("resnet")
