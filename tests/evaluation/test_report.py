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


def _ranked(*scores: tuple[str, float, float]) -> dict:
    ranking = [
        {"version": str(i), "family": f, "balanced_accuracy": ba, "roc_auc": auc}
        for i, (f, ba, auc) in enumerate(scores, 1)
    ]
    return {"version": "1", "family": scores[0][0], "changed": True, "reason": "first champion.",
            "ranking": ranking, "metric": "balanced_accuracy"}  # fmt: skip


def test_champion_section_ranks_the_candidates_and_flags_a_lead_under_one_patch() -> None:
    splits = {**SPLITS, "val": {"images": 114, "class_1": 22, "slides": 3}}
    data = DataSummary("real", splits, SITES)
    metrics = {"resnet": _intervals(0.8)}

    def summary(champion: dict) -> str:
        return summary_markdown(data, metrics, {}, {}, champion, SETTINGS)

    tie = summary(
        _ranked(("resnet", 0.9511, 0.9995), ("mobilenet", 0.9501, 0.9837), ("probe", 0.9447, 0.97),
                 ("lr", 0.9111, 0.97))
    )  # fmt: skip
    assert "| candidate | version | val balanced_accuracy | val roc_auc |" in tie
    assert "| resnet | 1 | 0.9511 | 0.9995 |\n| mobilenet | 2 | 0.9501 | 0.9837 |" in tie
    assert "leads the next by 0.0010" in tie and "is worth 0.0227" in tie and "0.0054" in tie
    assert "Validation does not separate resnet from mobilenet, probe**" in tie  # lr: 0.04 off

    clear = summary(_ranked(("probe", 0.99, 0.99), ("lr", 0.91, 0.97)))
    assert "leads the next by 0.0800" in clear and "does not separate" not in clear

    alone = summary(_ranked(("lr", 0.91, 0.97)))
    assert "| lr | 1 | 0.9100 | 0.9700 |" in alone and "leads the next" not in alone
