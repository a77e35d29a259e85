"""DVC stage balance: balance the augmented training set and write class weights."""

from glomx.pipeline import balance
from glomx.pipeline.door import load_config
from glomx.stage_main import stage_main

with stage_main("balance"):
    print(balance.run(load_config()))
