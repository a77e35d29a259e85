"""Shared fixtures: an isolated MLflow store per test and the real data from ../shared."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_REMOTE = REPO.parent / "shared" / "glomeruli" / "dvc-remote"


@pytest.fixture(autouse=True)
def isolated_mlflow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test logs to its own SQLite store, never to the project's mlruns/."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The real patches at data/, pulled with DVC from ../shared when absent.

    Fails (never skips) under CI when they cannot be had; skips elsewhere.
    """
    data = REPO / "data"
    if not (data / "public.csv").is_file() and SHARED_REMOTE.is_dir():
        subprocess.run(
            [sys.executable, "-m", "dvc", "pull", "-q", "data.dvc"], cwd=REPO, check=True
        )
    if not (data / "public.csv").is_file():
        message = f"real data missing: {data} (needs {SHARED_REMOTE} and `dvc pull`)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return data
