"""DVC stage train@<family>: cross-validate one model family over the slide-grouped folds
(``python stages/train.py <family>``; the families: glomx.models.FAMILIES)."""

import sys

from glomx.config import load
from glomx.pipeline import train
from glomx.stage_main import stage_main

family = sys.argv[1] if len(sys.argv) > 1 else ""
with stage_main(train.stage_name(family)):
    print(train.run(load(), family))
