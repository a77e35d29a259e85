"""Shared fixtures: an isolated MLflow store per test, the real data from ../shared, and a
PNG cut short that every image entry point must refuse."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_REMOTE = REPO.parent / "shared" / "glomeruli" / "dvc-remote"


@pytest.fixture(autouse=True)
def isolated_mlflow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test logs to its own SQLite store, never to the project's mlruns/.

    Besides the environment, MLflow's process-wide URI (``mlflow.set_tracking_uri``, which
    ``glomx.tracking.connect`` calls and which wins over the environment) is pointed at it:
    otherwise a ``models:/`` URI would resolve in the store of an earlier test.
    """
    import mlflow

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
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


@pytest.fixture(scope="session")
def cut_short_png() -> bytes:
    """A 64×64 RGB PNG cut short: its one IDAT chunk holds only the first 10 rows, as a
    complete zlib stream, then IEND. PIL decodes it without error, the other 54 rows black."""
    rows = np.random.default_rng(0).integers(0, 256, (10, 64 * 3), dtype=np.uint8)
    pixels = b"".join(b"\0" + row.tobytes() for row in rows)  # filter byte 0 per row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", 64, 64, 8, 2, 0, 0, 0)  # 8-bit RGB, not interlaced
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(pixels))
        + chunk(b"IEND", b"")
    )
