"""dvc.yaml's code deps cannot drift: each stage lists the glomx modules it imports.

A module a stage imports but does not list would escape DVC's invalidation (`dvc repro` would
skip a stage whose code changed); a listed one it never imports would rerun it for nothing.
Imports are read from the source, transitively, lazy imports inside functions included. Stages
are read as DVC expands dvc.yaml (tests/dvc_stages.py). Model families are loaded by name
(``glomx.models.FAMILIES``): ``train@<family>`` adds its family's module, ``choose`` and
``evaluate`` (which load any saved model) add all of them. The ``train`` template cannot give
each family its own list of deps (DVC interpolates strings, not lists), so every family also
lists the model modules another family imports (keras_common.py, ...), never another
family's own module. A package ``__init__.py`` that holds only a docstring and constants runs
no code, so it need not be listed.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping, Set
from pathlib import Path
from typing import Any

import pytest
from dvc_stages import expanded_stages

from glomx.models import FAMILIES
from glomx.pipeline.train import stage_name

REPO = Path(__file__).resolve().parents[1]
SPEC = expanded_stages(REPO)


def module_file(root: Path, name: str) -> str | None:
    """``glomx.data.store`` → ``glomx/data/store.py`` (or the package's ``__init__.py``)."""
    path = root.joinpath(*name.split("."))
    for candidate in (path / "__init__.py", path.with_suffix(".py")):
        if candidate.is_file():
            return candidate.relative_to(root).as_posix()
    return None


def imported_modules(root: Path, file: str) -> set[str]:
    """Every ``glomx`` module name a source file imports (``from m import x``: m and m.x)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse((root / file).read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names if a.name.split(".")[0] == "glomx"}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "glomx":
            names |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
    return names


def closure(root: Path, *files: str) -> set[str]:
    """The files of ``files`` and of everything they import, transitively."""
    seen: set[str] = set()
    todo = list(files)
    while todo:
        file = todo.pop()
        if file in seen:
            continue
        seen.add(file)
        for name in imported_modules(root, file):
            parts = name.split(".")
            todo += [
                f for i in range(1, len(parts) + 1) if (f := module_file(root, ".".join(parts[:i])))
            ]
    return seen


def inert_init(root: Path, file: str) -> bool:
    """A package ``__init__.py`` of a docstring and constant assignments only."""
    if Path(file).name != "__init__.py":
        return False
    body = ast.parse((root / file).read_text()).body
    return all(
        isinstance(node, ast.Expr | ast.Assign) and isinstance(node.value, ast.Constant)
        for node in body
    )


def family_files(root: Path, stage: str, families: Mapping[str, str]) -> list[str]:
    """The family modules a stage loads by name (``families``: name → ``"module:Class"``)."""
    modules = {stage_name(family): spec.split(":")[0] for family, spec in families.items()}
    if stage in ("choose", "evaluate"):
        return [f for m in modules.values() if (f := module_file(root, m))]
    if stage in modules and (f := module_file(root, modules[stage])):
        return [f]
    return []


def listed_code(spec: Mapping[str, Any]) -> set[str]:
    return {d for d in spec["deps"] if d.startswith(("glomx", "stages/"))}


def covered(file: str, listed: set[str]) -> bool:
    return any(file == d or file.startswith(d.rstrip("/") + "/") for d in listed)


def needed_files(
    root: Path, stage: str, spec: Mapping[str, Any], families: Mapping[str, str]
) -> set[str]:
    """The files a stage runs: its script, the family modules it loads, what they import."""
    script = next(w for w in spec["cmd"].split() if w.startswith("stages/"))
    return {
        f
        for f in closure(root, script, *family_files(root, stage, families))
        if not inert_init(root, f)
    }


def template_shared(
    root: Path, stages: Mapping[str, Mapping[str, Any]], families: Mapping[str, str]
) -> set[str]:
    """What the ``train`` template may list for every family: the files some family's stage
    needs, other than the families' own modules."""
    trains = [stage_name(f) for f in families if stage_name(f) in stages]
    needed = set().union(*(needed_files(root, s, stages[s], families) for s in trains))
    return needed - set(family_files(root, "choose", families))


def dep_problems(
    root: Path,
    stage: str,
    spec: Mapping[str, Any],
    families: Mapping[str, str],
    shared: Set[str] = frozenset(),
) -> list[str]:
    """What is wrong with one stage's code deps; empty when they are its imports, plus any of
    ``shared`` (the train template's: :func:`template_shared`)."""
    needed = needed_files(root, stage, spec, families)
    listed = listed_code(spec)
    missing = sorted(f for f in needed if not covered(f, listed))
    gone = sorted(d for d in listed if not (root / d).exists())
    unused = sorted(
        d
        for d in listed
        if d not in gone and d not in shared and not any(covered(f, {d}) for f in needed)
    )
    return (
        [f"{stage}: add to its deps in dvc.yaml: {missing}"] * bool(missing)
        + [f"{stage}: deps in dvc.yaml that do not exist: {gone}"] * bool(gone)
        + [f"{stage}: deps in dvc.yaml that it never imports: {unused}"] * bool(unused)
    )


@pytest.mark.parametrize("stage", sorted(SPEC))
def test_every_imported_module_is_a_dep_and_every_dep_is_imported(stage: str) -> None:
    shared = template_shared(REPO, SPEC, FAMILIES) if stage.startswith(stage_name("")) else set()
    assert dep_problems(REPO, stage, SPEC[stage], FAMILIES, shared) == []


@pytest.mark.parametrize("family", list(FAMILIES))
def test_another_familys_module_does_not_rerun_a_family(family: str) -> None:
    """A cnn.py change reruns train@cnn (and choose, evaluate), not train@lr."""
    own = set(family_files(REPO, stage_name(family), FAMILIES))
    others = set(family_files(REPO, "evaluate", FAMILIES)) - own
    listed = listed_code(SPEC[stage_name(family)])
    assert own and all(covered(f, listed) for f in own)
    assert not [f for f in others if covered(f, listed)]
    assert all(covered(f, listed_code(SPEC["evaluate"])) for f in others | own)


# the fake train template's deps besides each family's own module
FAKE_TEMPLATE = ["stages/s.py", "glomx/a.py", "glomx/b.py", "glomx/c.py", "glomx/helper.py"]


@pytest.fixture
def fake_repo(tmp_path: Path) -> Path:
    """stages/s.py → glomx.a → glomx.b, which imports glomx.c inside a function; glomx.fam and
    glomx.fam2 (which imports glomx.helper) are model families loaded by name; glomx.unused is
    imported by nobody."""
    files = {
        "stages/s.py": "from glomx.a import run\n",
        "glomx/__init__.py": '"""Package."""\n\n__version__ = "1"\n',
        "glomx/a.py": "from glomx import b\n\nrun = b.run\n",
        "glomx/b.py": "def run():\n    import glomx.c\n\n    return glomx.c\n",
        "glomx/c.py": "",
        "glomx/fam.py": "from glomx.c import *\n",
        "glomx/fam2.py": "from glomx import helper\n",
        "glomx/helper.py": "",
        "glomx/unused.py": "",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


@pytest.mark.parametrize(
    ("stage", "deps", "problem"),
    [
        ("s", ["stages/s.py", "glomx/a.py", "glomx/b.py", "glomx/c.py"], None),
        ("s", ["stages/s.py", "glomx"], None),  # a folder covers its files
        ("s", ["stages/s.py", "glomx/a.py", "glomx/b.py"], "add to its deps.*glomx/c.py"),
        ("s", ["glomx/a.py", "glomx/b.py", "glomx/c.py"], "add to its deps.*stages/s.py"),
        (
            "s",
            ["stages/s.py", "glomx/a.py", "glomx/b.py", "glomx/c.py", "glomx/unused.py"],
            "never imports.*glomx/unused.py",
        ),
        (
            "s",
            ["stages/s.py", "glomx/a.py", "glomx/b.py", "glomx/c.py", "glomx/gone.py"],
            "do not exist.*glomx/gone.py",
        ),
        (
            "train@fam",
            ["stages/s.py", "glomx/a.py", "glomx/b.py", "glomx/c.py"],
            "add to its deps.*glomx/fam.py",
        ),
        ("train@fam", [*FAKE_TEMPLATE, "glomx/fam.py"], None),  # helper.py: fam2's, shared
        ("train@fam2", [*FAKE_TEMPLATE, "glomx/fam2.py"], None),
        (
            "train@fam",
            [*FAKE_TEMPLATE, "glomx/fam.py", "glomx/fam2.py"],  # another family's own module
            "never imports.*glomx/fam2.py",
        ),
    ],
)
def test_the_checker_on_a_fake_repo(
    fake_repo: Path, stage: str, deps: list[str], problem: str | None
) -> None:
    spec = {"cmd": "python stages/s.py", "deps": deps}
    families = {"fam": "glomx.fam:Model", "fam2": "glomx.fam2:Model"}
    template = {stage_name(f): {"cmd": "python stages/s.py", "deps": []} for f in families}
    shared = template_shared(fake_repo, template, families) if stage in template else set()
    problems = dep_problems(fake_repo, stage, spec, families, shared)
    if problem is None:
        assert problems == []
    else:
        (message,) = problems
        assert re.search(problem, message), message


def test_an_init_with_code_must_be_listed(fake_repo: Path) -> None:
    (fake_repo / "glomx/__init__.py").write_text("from glomx.c import *\n")
    deps = ["stages/s.py", "glomx/a.py", "glomx/b.py", "glomx/c.py"]
    (message,) = dep_problems(fake_repo, "s", {"cmd": "python stages/s.py", "deps": deps}, {})
    assert "glomx/__init__.py" in message
