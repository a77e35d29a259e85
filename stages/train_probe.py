"""DVC stage train-probe: logistic regression on frozen pretrained ImageNet features."""

from glomx.pipeline.train import train_stage
from glomx.stage_main import stage_main

with stage_main("train-probe"):
    train_stage("probe")
