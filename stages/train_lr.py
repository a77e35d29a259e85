"""DVC stage train-lr: logistic regression on flattened pixels, the original study's baseline."""

from glomx.pipeline.train import train_stage
from glomx.stage_main import stage_main

with stage_main("train-lr"):
    train_stage("lr")
