"""DVC stage choose: choose the champion candidate on out-of-fold predictions (never test)."""

from glomx.pipeline import choose
from glomx.pipeline.door import load_config
from glomx.stage_main import stage_main

with stage_main("choose"):
    print(choose.run(load_config()))
