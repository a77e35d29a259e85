"""DVC stage prepare: catalogue, split and homogenise the raw patches into array stores."""

from glomx.config import load
from glomx.pipeline import prepare
from glomx.stage_main import stage_main

with stage_main("prepare"):
    print(prepare.run(load()))
