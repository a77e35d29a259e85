"""DVC stage: choose the champion candidate on out-of-fold predictions (never test)."""

from glomx.params import load_params
from glomx.pipeline.choose import choose_stage
from glomx.stage_main import stage_main

with stage_main("choose"):
    decision = choose_stage(load_params())
    for row in decision["ranking"]:
        ba, auc = row["balanced_accuracy"], row["roc_auc"]
        print(
            f"{row['family']:>10}: out-of-fold balanced accuracy {ba['value']:.3f} "
            f"[{ba['ci_low']:.3f}, {ba['ci_high']:.3f}], ROC-AUC {auc['value']:.3f}"
        )
    print(f"candidate: {decision['candidate']} ({', '.join(decision['tied'])})")
