import math

from glomx.evaluation.report import COLUMNS, DataSummary, summary_markdown, with_interval

SPLITS = {"test": {"images": 10, "class_1": 3, "slides": 2}}
SITES = {"SAS": {"images": 10, "class_1": 3, "slides": 2}}
SETTINGS = {"n_resamples": 100, "confidence": 0.95, "seed": 0, "tta": False}


def _intervals(value: float) -> dict:
    return {k: {"value": value, "ci_low": value - 0.1, "ci_high": value + 0.1} for k in COLUMNS}


def test_real_data_is_cited_and_synthetic_is_flagged() -> None:
    metrics = {"lr": _intervals(0.8)}
    champion = {"version": "3", "family": "lr", "changed": True, "reason": "first champion."}
    real = summary_markdown(DataSummary("real", SPLITS, SITES), metrics, {}, {}, champion, SETTINGS)
    assert "Bueno et al." in real and "Weishaupt et al." in real and "SYNTHETIC" not in real
    assert "moved to version 3 (lr)" in real and "| 0.800 † |" in real  # 2 slides
    assert "Only 2 test slide(s)" in real
    sites = {"lr": {"SAS": _intervals(0.5)}}
    data = DataSummary("synthetic", SPLITS, SITES)
    fake = summary_markdown(data, metrics, sites, {}, {"reason": "none"}, SETTINGS)
    assert "SYNTHETIC DATA" in fake and "Bueno" not in fake
    assert "| SAS | lr | 10 | 3 | 2 | 0.500 † | 0.500 † |" in fake  # 2 slides: no interval
    assert "† No interval: fewer than 5 test slides" in fake
    assert "No champion: none." in fake
    assert "Grad-CAM: `gradcam_<model>.png`" in fake


def test_enough_slides_get_intervals_and_a_missing_gradcam_is_explained() -> None:
    splits = {"test": {"images": 60, "class_1": 20, "slides": 6}}
    sites = {"SAS": {"images": 50, "class_1": 15, "slides": 5}}
    reason = "Grad-CAM needs the TensorFlow backend (KERAS_BACKEND=jax here)"
    report = summary_markdown(
        DataSummary("real", splits, sites),
        {"cnn": _intervals(0.8)},
        {"cnn": {"SAS": _intervals(0.7)}},
        {},
        {"reason": "none"},
        SETTINGS,
        gradcam_note=reason,
    )
    assert "| SAS | cnn | 50 | 15 | 5 | 0.700 [0.600, 0.800]" in report
    assert "†" not in report
    assert f"Grad-CAM: not drawn: {reason}" in report


def test_undefined_values_read_n_a() -> None:
    assert with_interval({"value": math.nan, "ci_low": math.nan, "ci_high": math.nan}) == "n/a"
    assert with_interval({"value": 0.5, "ci_low": math.nan, "ci_high": math.nan}) == "0.500"


def _ci(value: float, low: float, high: float) -> dict:
    return {"value": value, "ci_low": low, "ci_high": high}


def test_champion_section_shows_the_out_of_fold_table_intervals_ties_and_decision() -> None:
    data = DataSummary("real", SPLITS, SITES)
    metrics = {"ensemble": _intervals(0.9)}
    champion = {"version": "6", "family": "ensemble", "changed": True,
                "reason": "Tied. version 6 (ensemble): first champion."}  # fmt: skip
    selection = {
        "rule": "the rule",
        "ranking": [
            {"family": "cnn", "balanced_accuracy": _ci(0.954, 0.90, 0.99),
             "roc_auc": _ci(0.995, 0.98, 1.0)},
            {"family": "probe", "balanced_accuracy": _ci(0.938, 0.88, 0.98),
             "roc_auc": _ci(0.990, 0.97, 1.0)},
            {"family": "resnet", "balanced_accuracy": _ci(0.813, 0.70, 0.90),
             "roc_auc": _ci(0.860, 0.75, 0.95)},
        ],
        "differences": {
            "probe": {**_ci(0.016, -0.02, 0.05), "tied": True},
            "resnet": {**_ci(0.141, 0.06, 0.22), "tied": False},
        },
        "tied": ["cnn", "probe"],
        "candidate": "ensemble",
        "reason": "cnn and probe cannot be told apart.",
        "ensemble": {"members": ["cnn", "probe"], "balanced_accuracy": _ci(0.96, 0.91, 0.99),
                     "roc_auc": _ci(0.996, 0.99, 1.0)},
    }  # fmt: skip
    text = summary_markdown(data, metrics, {}, {}, champion, SETTINGS, selection)
    assert "Alias `champion` moved to version 6 (ensemble). Tied." in text
    assert "| model | OOF bal. acc. | OOF ROC-AUC | cnn minus it (paired) | vs best |" in text
    assert "| cnn | 0.954 [0.900, 0.990] | 0.995 [0.980, 1.000] | — | best |" in text
    assert (
        "| probe | 0.938 [0.880, 0.980] | 0.990 [0.970, 1.000] | 0.016 [-0.020, 0.050] | **tied** |"
        in text
    )
    assert (
        "| resnet | 0.813 [0.700, 0.900] | 0.860 [0.750, 0.950] | 0.141 [0.060, 0.220] "
        "| separated |" in text
    )
    assert (
        "| ensemble (cnn, probe) | 0.960 [0.910, 0.990] | 0.996 [0.990, 1.000] | — | candidate |"
        in text
    )
    assert "Decision: cnn and probe cannot be told apart." in text
    assert "Out-of-fold selection" not in summary_markdown(
        data, metrics, {}, {}, champion, SETTINGS
    )
