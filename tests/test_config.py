"""params.yaml at the door: every key of every section is checked, the families' ``model:`` and
``fit:`` included, and a misspelled one is a one-line error naming its full path, whichever
section it is in."""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from glomx.config import ParamsError, flatten, load, read
from glomx.family_params import FitConfig, ProbeFit
from glomx.models import FAMILIES, family_section

REPO = Path(__file__).resolve().parents[1]
PARAMS = read(REPO / "params.yaml")


def keys(node: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """The path of every key in the params file, depth first."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield (*path, str(key))
            yield from keys(value, (*path, str(key)))


def renamed(params: dict[str, Any], path: tuple[str, ...], new: str) -> dict[str, Any]:
    """``params`` with the key at ``path`` renamed to ``new`` (its value kept)."""
    out = copy.deepcopy(params)
    node = out
    for part in path[:-1]:
        node = node[part]
    node[new] = node.pop(path[-1])
    return out


def check(path: Path) -> None:
    """What every stage's door runs: the whole file, each family's own ``model:``/``fit:`` too."""
    load(path)


def test_the_repository_params_pass() -> None:
    check(REPO / "params.yaml")
    assert set(load(REPO / "params.yaml").train) == set(FAMILIES)


FREE_FORM = {("augment", "target", "per_class")}  # keys are data (class labels), not names
PATHS = [p for p in keys(PARAMS) if p[:-1] not in FREE_FORM]


@pytest.mark.parametrize("path", PATHS, ids=".".join)
def test_a_misspelled_key_anywhere_is_named_with_its_full_path(
    path: tuple[str, ...], tmp_path: Path
) -> None:
    wrong = f"{path[-1]}x"
    file = tmp_path / "params.yaml"
    file.write_text(yaml.safe_dump(renamed(PARAMS, path, wrong)))
    with pytest.raises(ParamsError) as err:
        check(file)
    message = str(err.value)
    assert "\n" not in message
    if path[0] == "keras_fit" or len(path) > 1:
        where = ".".join((*path[:-1], wrong))
        assert message.startswith(f"params.yaml: {where} is not a known key; valid: ")
        assert path[-1] in message.split("valid: ")[1].split(", ")  # the right name offered
    else:  # a section name: unknown, or a family that does not exist
        assert message.startswith(f"params.yaml: {wrong} is not a known ")


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (("train_cnn", "fit", "epochs"), "ten", "train_cnn.fit.epochs must be a valid integer"),
        (("keras_fit", "epochs"), 0, "keras_fit.epochs must be greater than or equal to 1"),
        (("prepare", "split", "strategy"), "shuffled", "prepare.split.strategy must be 'grouped'"),
        (("prepare", "policy", "missing_file"), "ignore", "prepare.policy.missing_file must be"),
        (("cv", "gpus_per_trial"), -1, "cv.gpus_per_trial must be auto or a number of GPUs"),
        (("train_probe", "stain"), "vahadane", "train_probe.stain must be 'none', 'macenko'"),
        (("train_lr", "model", "channels"), 2, "train_lr.model.channels must be 3 or 4, got 2"),
        (("evaluate", "promotion", "margin"), -0.1, "evaluate.promotion.margin must be greater"),
        (("choose", "families"), ["lr", "cnnn"], "choose.families names an unknown family 'cnnn'"),
    ],
    ids=lambda v: ".".join(v) if isinstance(v, tuple) else None,
)
def test_ill_typed_values_name_the_key_and_the_value(
    path: tuple[str, ...], value: Any, expected: str, tmp_path: Path
) -> None:
    params = copy.deepcopy(PARAMS)
    node = params
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ParamsError, match=f"^{re.escape(f'params.yaml: {expected}')}"):
        check(tmp_path / "params.yaml")


def test_a_missing_key_is_named(tmp_path: Path) -> None:
    params = copy.deepcopy(PARAMS)
    del params["prepare"]["split"]["folds"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ParamsError, match=r"^params.yaml: prepare.split.folds is missing"):
        check(tmp_path / "params.yaml")


def test_a_keras_familys_fit_is_keras_fit_with_its_own_values_over_it() -> None:
    params = load(REPO / "params.yaml")
    cnn, resnet = family_section(params, "cnn").fit, family_section(params, "resnet").fit
    assert cnn == FitConfig.model_validate({**PARAMS["keras_fit"], **PARAMS["train_cnn"]["fit"]})
    assert resnet == FitConfig.model_validate(PARAMS["keras_fit"])
    assert family_section(params, "probe").fit == ProbeFit.model_validate(
        PARAMS["train_probe"]["fit"]
    )  # not Keras's


def test_a_section_is_logged_with_the_files_values_not_the_defaults_it_leaves_out() -> None:
    """MLflow gets ``model:`` and ``fit:`` as written (a Keras ``fit:`` over ``keras_fit``),
    and the section's other keys with their defaults, as when they were plain mappings."""
    params = load(REPO / "params.yaml")
    for family in FAMILIES:
        raw = PARAMS[f"train_{family}"]
        fit = (
            {**PARAMS["keras_fit"], **raw["fit"]}
            if family in ("cnn", "resnet", "mobilenet")
            else raw["fit"]
        )
        logged = flatten(family_section(params, family).logged())
        assert {k: v for k, v in logged.items() if k.startswith(("model.", "fit."))} == flatten(
            {"model": raw["model"], "fit": fit}
        )
        assert logged["threshold.tune"] is raw["threshold"]["tune"]
        assert logged["stain"] == raw.get("stain", "none")  # a default, logged as before
    assert "model.backbone" not in flatten(family_section(params, "resnet").logged())


def test_loading_the_params_never_imports_tensorflow() -> None:
    """Prepare and the logistic regression's stage check every family's keys without Keras."""
    code = (
        "import sys; from glomx.config import load; from glomx.models import "
        "family_section; p = load(); [family_section(p, f) for f in p.train];"
        "sys.exit('tensorflow' in sys.modules or 'keras' in sys.modules)"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    assert (
        subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, timeout=120).returncode == 0
    )


def test_a_stage_refuses_a_misspelled_key_in_one_line_before_any_work(tmp_path: Path) -> None:
    """The misspelling the issue met: ``stian`` would have trained without stain normalising."""
    (tmp_path / "params.yaml").write_text(
        yaml.safe_dump(renamed(PARAMS, ("train_mobilenet", "stain"), "stian"))
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "GLOMX_DEBUG": "0"}
    done = subprocess.run(
        [sys.executable, str(REPO / "stages" / "prepare.py")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 1
    first = done.stderr.strip().splitlines()[0]
    assert first.startswith(
        "prepare failed: params.yaml: train_mobilenet.stian is not a known key; valid: "
    )
    assert "Traceback" not in done.stderr and not (tmp_path / "artifacts").exists()
