"""DVC stage augment: grow the training split with label-preserving augmentations."""

from glomx.config import load
from glomx.pipeline import augment
from glomx.stage_main import stage_main

with stage_main("augment"):
    print(augment.run(load()))
