"""Every package glomx imports directly is declared in pyproject.toml and pinned in
constraints.txt, not merely brought in by another package (which may drop it)."""

from __future__ import annotations

import ast
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]


def _imported_top_levels() -> set[str]:
    found: set[str] = set()
    for file in (REPO / "glomx").rglob("*.py"):
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - {"glomx", "__future__"}


def test_every_direct_import_is_declared_and_pinned() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = {canonicalize_name(Requirement(r).name) for r in project["dependencies"]}
    pinned = {
        canonicalize_name(line.split("==")[0])
        for line in (REPO / "constraints.txt").read_text().splitlines()
        if "==" in line
    }
    distributions = packages_distributions()
    undeclared, unpinned = [], []
    for module in sorted(_imported_top_levels()):
        names = {canonicalize_name(d) for d in distributions.get(module, [])}
        assert names, f"glomx imports {module}, which no installed distribution provides"
        if not names & declared:
            undeclared.append(f"{module} ({', '.join(sorted(names))})")
        if not names & pinned:
            unpinned.append(module)
    assert undeclared == [], f"imported but not in pyproject's dependencies: {undeclared}"
    assert unpinned == [], f"imported but not pinned in constraints.txt: {unpinned}"
