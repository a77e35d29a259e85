"""A model served over real HTTP by ``glomx serve``, and replies read as a browser would."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from glomx.team_server.main import ServerError, terminate, wait_ready
from glomx.team_server.postgres import free_port

SERVE_TIMEOUT_S = 180


def strict_json(text: str) -> Any:
    """``json.loads`` that refuses NaN and Infinity, as JavaScript's ``JSON.parse`` does."""

    def refuse(constant: str) -> None:
        raise ValueError(f"not JSON: bare {constant} in the response")

    return json.loads(text, parse_constant=refuse)


@contextmanager
def serving(env: dict[str, str], log_path: Path, *args: str) -> Iterator[str]:
    """``glomx serve [args]`` (default: the champion) in ``env``, until the block ends; yields
    its base URL."""
    port = free_port()
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "glomx.cli", "serve", "--port", str(port), *args],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env,
        )  # fmt: skip
        try:
            base = f"http://127.0.0.1:{port}"
            try:
                wait_ready(base, server, SERVE_TIMEOUT_S)
            except ServerError as err:
                pytest.fail(f"{err}\n{log_path.read_text()[-3000:]}")
            yield base
        finally:
            terminate(server)
