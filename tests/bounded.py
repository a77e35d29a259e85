"""Every subprocess a test starts is bounded: past its timeout the test fails naming the
command that hung, well before pytest-timeout (pyproject) stops the test itself."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

GLOMX = [sys.executable, "-m", "glomx.cli"]


def run(
    args: Sequence[str | Path], timeout: float = 300, **kwargs
) -> subprocess.CompletedProcess[str]:
    """A subprocess with captured text output, failing the test if it outlives ``timeout``."""
    args = [str(a) for a in args]
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kwargs)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"hung for more than {timeout} s: {' '.join(args)}") from None


def glomx(argv: Sequence[str | Path], timeout: float = 300, **kwargs):
    """``glomx ARGV`` as a user runs it."""
    return run([*GLOMX, *argv], timeout=timeout, **kwargs)


def wait(process: subprocess.Popen, timeout: float, what: str) -> int:
    """The exit status of ``process``; the test fails naming ``what`` if it outlives
    ``timeout`` (and the process is killed)."""
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        raise AssertionError(f"{what} hung for more than {timeout} s") from None
