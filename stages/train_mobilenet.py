"""DVC stage train-mobilenet: MobileNetV2 (ImageNet weights) fine-tuned in two phases."""

from glomx.stage_main import stage_main
from glomx.training import train_stage

with stage_main("train-mobilenet"):
    train_stage("mobilenet")
