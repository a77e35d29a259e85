"""The top-level DVC plots of dvc.yaml, rendered through DVC and Vega-Lite as `make plots` does:
one colour per model, each curve joined in threshold order, counts and class names in every
confusion matrix."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import vl_convert
import yaml

from glomx.evaluation.metrics import write_plot_data

REPO = Path(__file__).resolve().parents[1]
# 7 negatives (one scored high), 4 positives (one scored low): tn 6, fp 1, fn 1, tp 3
LABELS = np.array([0] * 7 + [1] * 4)
PROBA = np.array([0.1, 0.2, 0.3, 0.15, 0.25, 0.05, 0.7, 0.8, 0.9, 0.6, 0.4])
# scores so small that "%g" writes their thresholds as 7.6e-06: as text they sort after "1"
TINY = np.array([7.6e-06, 3.1e-07, 2.2e-05])
# every model the top-level plots name (plots/evaluate/<model>/...)
MODELS = sorted(set(re.findall(r"plots/evaluate/(\w+)/", (REPO / "dvc.yaml").read_text())))


@pytest.fixture(scope="module")
def specs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """``dvc plots show --json`` in a DVC project holding this repository's top-level plots
    (image plots left out), its templates and plot data for every model they name."""
    root = tmp_path_factory.mktemp("project")
    dvc_init = [sys.executable, "-m", "dvc", "init", "-q", "--no-scm"]
    subprocess.run(dvc_init, cwd=root, check=True, timeout=120)
    shutil.copytree(REPO / ".dvc" / "plots", root / ".dvc" / "plots")
    plots = yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"]
    plots = [p for p in plots if not (isinstance(p, str) and p.endswith(".png"))]
    (root / "dvc.yaml").write_text(yaml.safe_dump({"plots": plots}))
    rng = np.random.default_rng(0)
    for model in MODELS:
        proba = PROBA if model == "cnn" else rng.random(len(LABELS))
        proba = np.r_[TINY, proba[len(TINY) :]]  # the first negatives scored near 0
        write_plot_data(root / "plots" / "evaluate" / model, LABELS, proba, 0.5)
    shown = subprocess.run(
        [sys.executable, "-m", "dvc", "plots", "show", "--json"],
        cwd=root,
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    data = json.loads(shown.stdout)["data"]
    return {k.split("::")[-1]: v[0]["content"] for k, v in data.items()}


def _svg(spec: dict) -> str:
    return vl_convert.vegalite_to_svg(spec, vl_version="5.21")


def test_curves_have_one_colour_per_model(specs: dict[str, dict]) -> None:
    for plot in ("test_roc", "test_pr"):
        svg = _svg(specs[plot])
        legend = set(re.findall(rf">({'|'.join(MODELS)})</text>", svg))
        assert legend == set(MODELS), plot
        lines = re.findall(r'aria-roledescription="line mark".*?stroke="(#[0-9a-f]{6})"', svg)
        assert len(set(lines)) == len(MODELS), plot


def _line_xs(node: dict) -> list[list[float]]:
    """The x pixel of every point of every line mark in a Vega scenegraph, in drawing order."""
    if node.get("marktype") == "line":
        return [[point["x"] for point in node["items"]]]
    return [xs for child in node.get("items", []) for xs in _line_xs(child)]


def test_curves_join_points_in_threshold_order(specs: dict[str, dict]) -> None:
    """DVC hands the template every value as text; joined in text order, a threshold such as
    7.6e-06 came after 1 and drew a false diagonal. In numeric order fpr (ROC) and recall (PR)
    never rise along a curve, from threshold 0 up to 1."""
    for plot in ("test_roc", "test_pr"):
        scene = vl_convert.vegalite_to_scenegraph(specs[plot], vl_version="5.21")
        lines = _line_xs(scene["scenegraph"])
        assert len(lines) == len(MODELS), plot
        for xs in lines:
            assert xs == sorted(xs, reverse=True), (plot, xs)


def test_confusion_matrices_print_counts_and_class_names(specs: dict[str, dict]) -> None:
    spec = specs["plots/evaluate/cnn/confusion.csv"]
    assert spec["title"]["text"] == "cnn: confusion matrix, test split"
    svg = _svg(spec)
    counts = re.findall(r'aria-roledescription="text mark".*?>(\d+)</text>', svg)
    assert sorted(map(int, counts)) == [1, 1, 3, 6]
    assert ">non-sclerotic</text>" in svg and ">sclerotic</text>" in svg
