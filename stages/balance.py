"""DVC stage balance: balance the augmented training set and write class weights."""

from glomx.config import load
from glomx.pipeline import balance
from glomx.stage_main import stage_main

with stage_main("balance"):
    print(balance.run(load()))
