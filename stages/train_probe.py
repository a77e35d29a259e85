"""DVC stage train-probe: logistic regression on frozen pretrained ImageNet features."""

from glomx.stage_main import stage_main
from glomx.training import train_stage

with stage_main("train-probe"):
    train_stage("probe")
