"""A model family is declared once, in ``glomx.models.FAMILIES``; everything else that names
families must agree with it, and this test says exactly what a new family still lacks.

Adding a family: its ``model:``/``fit:`` types and ``train_<family>`` section in
:mod:`glomx.family_params` (a ``TRAIN_SECTIONS`` entry and a :class:`~glomx.config.Params`
field), its module (a :class:`~glomx.models.base.Classifier` with those ``config_class`` and
``fit_config_class``) and tests, one ``FAMILIES`` entry, then what the failures below ask for:
a ``train_<family>`` section in params.yaml and its line in the ``families`` of dvc.yaml's
``vars``, from which the ``train`` template makes its stage ``train@<family>`` (read here as DVC
expands it); tests/test_dvc_deps.py checks the template's code deps.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from dvc_stages import expanded_stages

from glomx.config import TRAIN_PREFIX, Params, read
from glomx.family_params import TRAIN_SECTIONS, KerasTrainSection
from glomx.models import FAMILIES, family_class
from glomx.pipeline.train import stage_name

REPO = Path(__file__).resolve().parents[1]
SPEC = yaml.safe_load((REPO / "dvc.yaml").read_text())
STAGES = expanded_stages(REPO)
PARAMS = read(REPO / "params.yaml")
PATHS = PARAMS["paths"]
TRAIN_STAGES = {name for name in STAGES if name.startswith(stage_name(""))}


def entry_paths(stage: dict[str, Any], kind: str) -> set[str]:
    return {next(iter(e)) if isinstance(e, dict) else e for e in stage.get(kind, [])}


def module_file(family: str) -> str:
    """``glomx.models.cnn:CNNClassifier`` → ``glomx/models/cnn.py``."""
    return FAMILIES[family].split(":")[0].replace(".", "/") + ".py"


@pytest.mark.parametrize("family", list(FAMILIES))
def test_each_family_has_its_stage_its_params_and_its_place_downstream(family: str) -> None:
    stage = STAGES.get(stage_name(family))
    assert stage is not None, f"dvc.yaml's families lack {family}: no stage {stage_name(family)}"
    assert stage["cmd"] == f"python stages/train.py {family}"
    assert module_file(family) in stage["deps"]
    own = f"train_{family}"
    keras = issubclass(TRAIN_SECTIONS[family], KerasTrainSection)
    fit = "keras_fit" if keras else own  # DVC's template: a slot each
    assert stage["params"] == ["paths", "prepare.image", "prepare.site_regex", "cv", fit, own]
    assert stage["outs"] == [f"{PATHS['models']}/{family}", f"{PATHS['cv']}/{family}.csv"]
    assert entry_paths(stage, "metrics") == {f"{PATHS['metrics']}/{family}.json"}
    plots = {f"{PATHS['plots']}/{family}/{p}.csv" for p in ("confusion", "roc", "pr")}
    assert entry_paths(stage, "plots") == plots
    assert f"train_{family}" in PARAMS, f"params.yaml lacks section train_{family}"
    assert PATHS["cv"] in STAGES["choose"]["deps"]
    for downstream in ("choose", "evaluate"):
        assert f"{PATHS['models']}/{family}" in STAGES[downstream]["deps"], downstream


@pytest.mark.parametrize("family", list(FAMILIES))
def test_no_other_familys_params_or_module_reruns_a_family(family: str) -> None:
    """train@lr reruns for train_lr and logistic.py, never for train_cnn or cnn.py."""
    stage = STAGES[stage_name(family)]
    others = [f for f in FAMILIES if module_file(f) != module_file(family)]
    assert not {module_file(f) for f in others} & set(stage["deps"])
    assert not {f"train_{f}" for f in FAMILIES if f != family} & set(stage["params"])


def test_the_training_stages_are_one_template() -> None:
    """No hand-written copy of a training stage: the ``train`` template, once per family."""
    assert [name for name in SPEC["stages"] if name.startswith("train")] == ["train"]
    assert set(SPEC["stages"]["train"]) == {"foreach", "do"}


def test_nothing_names_a_family_that_does_not_exist() -> None:
    assert {stage_name(f) for f in FAMILIES} == TRAIN_STAGES
    sections = {name.removeprefix("train_") for name in PARAMS if name.startswith("train_")}
    assert sections == set(FAMILIES)
    assert set(PARAMS["choose"]["families"]) == set(PARAMS["evaluate"]["families"]) == set(FAMILIES)
    for downstream in ("choose", "evaluate"):
        models = {
            d.removeprefix(f"{PATHS['models']}/")
            for d in STAGES[downstream]["deps"]
            if d.startswith(f"{PATHS['models']}/")
        }
        assert models == set(FAMILIES), downstream
    text = (REPO / "dvc.yaml").read_text()
    assert set(re.findall(r"plots/evaluate/(\w+)/", text)) == {*FAMILIES, "colour_baseline"}
    assert set(re.findall(r"reports/gradcam_(\w+)\.png", text)) <= set(FAMILIES)
    assert set(re.findall(r"^  - plots/(\w+)/\w+\.png", text, re.M)) <= set(FAMILIES)


def test_each_family_is_typed_in_the_base_layer_as_its_module_builds_it() -> None:
    assert list(TRAIN_SECTIONS) == list(FAMILIES)
    for family, section in TRAIN_SECTIONS.items():
        cls = family_class(family)
        assert section.model_fields["model"].annotation is cls.config_class
        assert section.model_fields["fit"].annotation is cls.fit_config_class
        assert Params.model_fields[f"{TRAIN_PREFIX}{family}"].annotation == section | None
