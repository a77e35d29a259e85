"""The package's layers hold: every ``glomx`` module imports only from its own layer or lower
ones (the order README's "Where things are" states), and no chain of imports comes back to
where it started.

Imports are read from the source: lazy imports inside functions and type-only imports count,
since moving an import into a function hides a loop from Python but does not remove it.
"""

from __future__ import annotations

import ast
from pathlib import Path

GLOMX = Path(__file__).resolve().parents[1] / "glomx"

# lowest first; a module may import from its own layer and those before it
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "base",
        (
            "__init__.py",
            "config.py",
            "errors.py",
            "family_params.py",
            "files.py",
            "processes.py",
            "progress.py",
            "ray_session.py",
            "section.py",
            "stage_main.py",
        ),
    ),
    ("data", ("data",)),
    ("evaluation", ("evaluation",)),
    ("models", ("models",)),
    ("tracking", ("tracking",)),
    # what the stages hand each other, and the fold trials the train stages run on Ray
    ("artifacts", ("artifacts", "crossval.py")),
    ("pipeline", ("pipeline",)),
    # the user's doors; team_server/ is `glomx server`, the team's MLflow tracking server
    ("doors", ("cli*.py", "predict.py", "calibrate.py", "report.py", "team_server")),
)


def layer(module: Path) -> int:
    """Index in :data:`LAYERS` of a file under ``glomx/`` (by its top-level name)."""
    top = module.relative_to(GLOMX).parts[0]
    for rank, (_, patterns) in enumerate(LAYERS):
        if any(Path(top).match(pattern) for pattern in patterns):
            return rank
    raise AssertionError(f"glomx/{top} is in no layer: add it to LAYERS in {__file__}")


def module_file(name: str) -> Path | None:
    """``glomx.data.store`` → ``glomx/data/store.py`` (or a package's ``__init__.py``)."""
    path = GLOMX.parent.joinpath(*name.split("."))
    for candidate in (path / "__init__.py", path.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def imports(file: Path) -> set[Path]:
    """The ``glomx`` files ``file`` imports anywhere in it (``from pkg import sub`` counts as
    ``sub`` when that is a module; a package's ``__init__`` run on the way does not count)."""
    found: set[Path] = set()
    for node in ast.walk(ast.parse(file.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{a.name}" for a in node.names]
            names = [n if module_file(n) else node.module for n in names]
        else:
            continue
        found |= {f for n in names if n.split(".")[0] == "glomx" and (f := module_file(n))}
    return found - {file}


def graph() -> dict[Path, set[Path]]:
    return {file: imports(file) for file in sorted(GLOMX.rglob("*.py"))}


def test_imports_go_down_the_layers() -> None:
    upward = [
        f"{src.relative_to(GLOMX)} ({LAYERS[layer(src)][0]}) imports "
        f"{dst.relative_to(GLOMX)} ({LAYERS[layer(dst)][0]})"
        for src, targets in graph().items()
        for dst in sorted(targets)
        if layer(dst) > layer(src)
    ]
    assert upward == []


def test_stages_are_siblings() -> None:
    """No module of ``pipeline/`` imports another: what stages share lives a layer below
    (``artifacts/``), so each stage reads top to bottom without following another."""
    pipeline = GLOMX / "pipeline"
    crossings = [
        f"{src.relative_to(GLOMX)} imports {dst.relative_to(GLOMX)}"
        for src, targets in graph().items()
        if src.parent == pipeline
        for dst in sorted(targets)
        if dst.parent == pipeline and dst.name != "__init__.py"
    ]
    assert crossings == []


def loops(edges: dict[Path, set[Path]]) -> list[str]:
    """Each import cycle found by a depth-first walk, as ``a -> b -> a``."""
    found: list[str] = []
    state: dict[Path, str] = {}  # "open" while on the current path, "done" after

    def visit(file: Path, path: list[Path]) -> None:
        state[file] = "open"
        for dst in sorted(edges.get(file, set())):
            if state.get(dst) == "open":
                cycle = [*path[path.index(dst) :], dst]
                found.append(" -> ".join(p.relative_to(GLOMX).as_posix() for p in cycle))
            elif dst not in state:
                visit(dst, [*path, dst])
        state[file] = "done"

    for file in sorted(edges):
        if file not in state:
            visit(file, [file])
    return found


def test_no_import_loop() -> None:
    assert loops(graph()) == []


def test_the_checks_see_a_lazy_import_and_a_loop(tmp_path: Path) -> None:
    """What the checks rely on: an import inside a function is an edge, a cycle is found."""
    registry, runs = GLOMX / "tracking" / "registry.py", GLOMX / "tracking" / "runs.py"
    lazy = tmp_path / "lazy.py"
    lazy.write_text("def f():\n    from glomx.tracking import registry\n")
    assert imports(lazy) == {registry}
    assert loops({registry: {runs}, runs: {registry}}) == [
        "tracking/registry.py -> tracking/runs.py -> tracking/registry.py"
    ]
    assert layer(runs) > layer(GLOMX / "models" / "base.py")
