"""A model family is declared once, in ``glomx.models.FAMILIES``; everything else that names
families must agree with it, and this test says exactly what a new family still lacks.

Adding a family: its ``model:``/``fit:`` types and ``train_<family>`` section in
:mod:`glomx.family_params` (a ``TRAIN_SECTIONS`` entry and a :class:`~glomx.config.Params`
field), its module (a :class:`~glomx.models.base.Classifier` with those ``config_class`` and
``fit_config_class``) and tests, one ``FAMILIES`` entry, then what the failures below ask for:
a ``train_<family>`` section in params.yaml and a ``train-<family>`` stage in dvc.yaml
(``python stages/train.py <family>``; tests/test_dvc_deps.py lists its code deps).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from glomx.config import TRAIN_PREFIX, Params, read
from glomx.family_params import TRAIN_SECTIONS, KerasTrainSection
from glomx.models import FAMILIES, family_class

REPO = Path(__file__).resolve().parents[1]
STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
PARAMS = read(REPO / "params.yaml")


def plot_files(stage: dict[str, Any]) -> set[str]:
    return {next(iter(p)) if isinstance(p, dict) else p for p in stage.get("plots", [])}


def metric_files(stage: dict[str, Any]) -> set[str]:
    return {next(iter(m)) if isinstance(m, dict) else m for m in stage.get("metrics", [])}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_each_family_has_its_stage_its_params_and_its_place_downstream(family: str) -> None:
    stage = STAGES.get(f"train-{family}")
    assert stage is not None, f"dvc.yaml lacks stage train-{family}"
    assert stage["cmd"] == f"python stages/train.py {family}"
    keras = issubclass(TRAIN_SECTIONS[family], KerasTrainSection)
    expected = ["paths", "prepare.image", "prepare.site_regex", "cv"]
    expected += ["keras_fit"] * keras + [f"train_{family}"]
    assert stage["params"] == expected
    assert stage["outs"] == [f"${{paths.models}}/{family}", f"${{paths.cv}}/{family}.csv"]
    assert metric_files(stage) == {f"${{paths.metrics}}/{family}.json"}
    assert {f"${{paths.plots}}/{family}/{p}.csv" for p in ("confusion", "roc", "pr")} <= (
        plot_files(stage)
    )
    assert f"train_{family}" in PARAMS, f"params.yaml lacks section train_{family}"
    assert {f"${{paths.cv}}/{family}.csv", "${paths.cv}"} & set(STAGES["choose"]["deps"])
    assert f"${{paths.models}}/{family}" in STAGES["evaluate"]["deps"]


def test_nothing_names_a_family_that_does_not_exist() -> None:
    staged = {name.removeprefix("train-") for name in STAGES if name.startswith("train-")}
    assert staged == set(FAMILIES)
    sections = {name.removeprefix("train_") for name in PARAMS if name.startswith("train_")}
    assert sections == set(FAMILIES)
    assert set(PARAMS["choose"]["families"]) == set(PARAMS["evaluate"]["families"]) == set(FAMILIES)


def test_each_family_is_typed_in_the_base_layer_as_its_module_builds_it() -> None:
    assert list(TRAIN_SECTIONS) == list(FAMILIES)
    for family, section in TRAIN_SECTIONS.items():
        cls = family_class(family)
        assert section.model_fields["model"].annotation is cls.config_class
        assert section.model_fields["fit"].annotation is cls.fit_config_class
        assert Params.model_fields[f"{TRAIN_PREFIX}{family}"].annotation == section | None
