"""dvc.yaml's stages as DVC itself expands them: its ``train`` template once per model family
(``train@<family>``), every ``${...}`` resolved from params.yaml and ``vars``, in DVC's order.
For the tests that check the pipeline's definition and the benchmarks that walk its stages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dvc.dvcfile import ProjectFile
from dvc.repo import Repo

REPO = Path(__file__).resolve().parents[1]


def expanded_stages(root: Path = REPO) -> dict[str, dict[str, Any]]:
    """Stage name → its definition as DVC runs it (the template's ``do`` filled in)."""
    with Repo(str(root)) as repo:
        return ProjectFile(repo, "dvc.yaml").resolver.resolve()["stages"]
