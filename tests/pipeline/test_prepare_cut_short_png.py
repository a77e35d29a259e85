"""prepare on a PNG cut short (clean end of its pixel data, then IEND): refused or skipped per
``prepare.policy.unreadable_image``, never stored with black rows; the name printed once."""

from __future__ import annotations

import copy
import csv
from pathlib import Path

import pytest

from glomx.config import Prepare, read
from glomx.data.synth import make_dataset
from glomx.pipeline.prepare import PrepareError, prepare

REPO = Path(__file__).resolve().parents[2]


def test_png_cut_short_is_refused_or_skipped(cut_short_png: bytes, tmp_path: Path) -> None:
    data = tmp_path / "data"
    make_dataset(data, 30, seed=3, size_range=(40, 60), n_slides=6, workers=1)
    victim = sorted((data / "globally_sclerotic_glomeruli").glob("*.png"))[0]
    victim.write_bytes(cut_short_png)
    params = copy.deepcopy(read(REPO / "params.yaml")["prepare"])
    params["image"]["size"], params["workers"] = 32, 1

    with pytest.raises(PrepareError) as err:
        prepare(data, tmp_path / "p", tmp_path / "p.json", Prepare.model_validate(params))
    message = str(err.value)
    assert f"  {victim.name}: corrupt or truncated image (pixel data ends after" in message
    assert message.count(victim.name) == 1  # not "X.png: X.png: corrupt…"
    assert "every image was decoded first; all problems are listed together" in message
    with open(tmp_path / "p" / "problems.csv", newline="") as f:
        (problem,) = [r for r in csv.DictReader(f) if r["kind"] == "unreadable_image"]
    assert problem["name"] == victim.name and victim.name not in problem["detail"]

    params["policy"] = {**params["policy"], "unreadable_image": "skip"}
    counts = prepare(data, tmp_path / "q", tmp_path / "q.json", Prepare.model_validate(params))
    assert counts["total"] == 29 and counts["skipped"] == 1
    assert victim.name not in (tmp_path / "q" / "split.csv").read_text()
    assert victim.name in (tmp_path / "q" / "problems.csv").read_text()
