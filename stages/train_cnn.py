"""DVC stage train-cnn: a small CNN from scratch, with pictures of its first-layer filters."""

from glomx.pipeline.train import train_stage
from glomx.stage_main import stage_main

with stage_main("train-cnn"):
    train_stage("cnn")
