"""dvc.yaml's code deps cannot drift: each stage lists exactly the glomx modules it imports.

A module a stage imports but does not list would escape DVC's invalidation (`dvc repro` would
skip a stage whose code changed); a listed one it never imports would rerun it for nothing.
Imports are read from the source, transitively, lazy imports inside functions included. Model
families are loaded by name (``glomx.models.FAMILIES``): ``train-<family>`` adds its family's
module, ``evaluate`` (which loads every saved model) adds all of them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from glomx.models import FAMILIES

REPO = Path(__file__).resolve().parents[1]
SPEC = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
PACKAGE_INITS = {"glomx/__init__.py", "glomx/data/__init__.py", "glomx/evaluation/__init__.py"}


def module_file(name: str) -> str | None:
    """``glomx.data.store`` → ``glomx/data/store.py`` (or the package's ``__init__.py``)."""
    path = REPO.joinpath(*name.split("."))
    for candidate in (path / "__init__.py", path.with_suffix(".py")):
        if candidate.is_file():
            return candidate.relative_to(REPO).as_posix()
    return None


def imported_modules(file: str) -> set[str]:
    """Every ``glomx`` module name a source file imports (``from m import x``: m and m.x)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse((REPO / file).read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names if a.name.split(".")[0] == "glomx"}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "glomx":
            names |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
    return names


def closure(*files: str) -> set[str]:
    """The files of ``files`` and of everything they import, transitively."""
    seen: set[str] = set()
    todo = list(files)
    while todo:
        file = todo.pop()
        if file in seen:
            continue
        seen.add(file)
        for name in imported_modules(file):
            parts = name.split(".")
            todo += [f for i in range(1, len(parts) + 1) if (f := module_file(".".join(parts[:i])))]
    return seen


def family_files(stage: str) -> list[str]:
    """The family modules a stage loads by name."""
    modules = {family: spec.split(":")[0] for family, spec in FAMILIES.items()}
    if stage == "evaluate":
        return [module_file(m) for m in modules.values()]
    family = stage.removeprefix("train-")
    return [module_file(modules[family])] if stage.startswith("train-") else []


def listed_code(stage: str) -> set[str]:
    return {d for d in SPEC[stage]["deps"] if d.startswith(("glomx", "stages/"))}


def covered(file: str, listed: set[str]) -> bool:
    return any(file == d or file.startswith(d.rstrip("/") + "/") for d in listed)


@pytest.mark.parametrize("stage", sorted(SPEC))
def test_every_imported_module_is_a_dep_and_every_dep_is_imported(stage: str) -> None:
    script = SPEC[stage]["cmd"].split()[-1]
    needed = closure(script, *family_files(stage)) - PACKAGE_INITS
    listed = listed_code(stage)
    missing = sorted(f for f in needed if not covered(f, listed))
    assert not missing, f"{stage}: add to its deps in dvc.yaml: {missing}"
    unused = sorted(d for d in listed if not any(covered(f, {d}) for f in needed))
    assert not unused, f"{stage}: deps in dvc.yaml that it never imports: {unused}"
    for dep in listed:
        assert (REPO / dep).exists(), f"{stage}: dep {dep} does not exist"


def test_a_cnn_change_does_not_rerun_train_lr() -> None:
    assert not covered("glomx/models/cnn.py", listed_code("train-lr"))
    assert covered("glomx/models/cnn.py", listed_code("evaluate"))
