"""DVC stage train-mobilenet: MobileNetV2 (ImageNet weights) fine-tuned in two phases."""

from glomx.pipeline.train import train_stage
from glomx.stage_main import stage_main

with stage_main("train-mobilenet"):
    train_stage("mobilenet")
