"""DVC stage train-lr: logistic regression on flattened pixels, the original study's baseline."""

from glomx.stage_main import stage_main
from glomx.training import train_stage

with stage_main("train-lr"):
    train_stage("lr")
