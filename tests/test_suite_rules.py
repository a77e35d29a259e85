"""The suite's own rules: under ``CI=true`` a skip fails the run, and a test that hangs fails
with its name after the timeout. Each rule is checked by running pytest on the two tests
below, which misbehave only when :data:`ON_PURPOSE` is set."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
from bounded import run

ON_PURPOSE = "GLOMX_TEST_MISBEHAVE"
HERE = Path(__file__)


def test_skips_on_purpose() -> None:
    """Skips when asked to (see :func:`test_a_skip_fails_under_ci_only`); else passes."""
    if os.environ.get(ON_PURPOSE):
        pytest.skip("asked to")


def test_hangs_on_purpose() -> None:
    """Sleeps past the timeout when asked to (see :func:`test_a_hang_fails_with_its_name`)."""
    if os.environ.get(ON_PURPOSE):
        time.sleep(30)


def _pytest(test: str, env: dict[str, str], *extra: str):
    argv = [sys.executable, "-m", "pytest", f"{HERE}::{test}", "-p", "no:cacheprovider", *extra]
    return run(argv, env={**os.environ, ON_PURPOSE: "1", **env}, cwd=HERE.parents[1], timeout=120)


def test_a_skip_fails_under_ci_only() -> None:
    lenient = _pytest("test_skips_on_purpose", {"CI": ""})
    assert lenient.returncode == 0 and "1 skipped" in lenient.stdout, lenient.stdout
    strict = _pytest("test_skips_on_purpose", {"CI": "true"})
    assert strict.returncode == 1 and "1 failed" in strict.stdout, strict.stdout
    assert "skipped under CI=true, which runs every test: asked to" in strict.stdout


def test_a_hang_fails_with_its_name() -> None:
    hung = _pytest("test_hangs_on_purpose", {}, "--timeout", "2")
    assert hung.returncode == 1, hung.stdout
    assert "Timeout (>2.0s)" in hung.stdout + hung.stderr
    assert "FAILED tests/test_suite_rules.py::test_hangs_on_purpose" in hung.stdout
