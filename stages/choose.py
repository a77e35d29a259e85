"""DVC stage choose: choose the champion candidate on out-of-fold predictions (never test)."""

from glomx.config import load
from glomx.pipeline import choose
from glomx.stage_main import stage_main

with stage_main("choose"):
    print(choose.run(load()))
