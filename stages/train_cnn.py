"""DVC stage train-cnn: a small CNN from scratch, with pictures of its first-layer filters."""

from glomx.stage_main import stage_main
from glomx.training import train_stage

with stage_main("train-cnn"):
    train_stage("cnn")
