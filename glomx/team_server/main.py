"""``glomx server`` (``make server``): the MLflow tracking server a team shares.

Backend store: a private PostgreSQL cluster (:mod:`glomx.team_server.postgres`) under ``--dir``,
created with its database on first start. Artifacts: proxied by the server
(``--serve-artifacts``), kept under ``--artifacts``; clients upload and download them over HTTP,
so a run's models are reachable from any clone pointed at the server. Runs in the foreground;
SIGINT or SIGTERM stops MLflow, then PostgreSQL.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import FrameType
from typing import Any

from glomx.team_server.postgres import Postgres, PostgresError, server_user

DATABASE = "mlflow"
READY_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 30.0


class ServerError(PostgresError):
    """The MLflow server did not come up."""


def _stop_on_signal(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    """Poll ``url``/health until it answers 200; fail when ``process`` exits or time is up."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerError(
                f"mlflow server exited with status {process.returncode} before "
                f"{url} answered (its messages are above)"
            )
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.5)
    raise ServerError(f"{url} did not answer within {timeout:.0f} s")


def terminate(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to a server's process group (its workers too), SIGKILL after a grace time."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def serve(
    folder: Path, host: str, port: int, artifacts: Path | None, workers: int, pg_user: str | None
) -> int:
    """Start PostgreSQL and ``mlflow server``; block until stopped; returns the exit status."""
    folder = folder.resolve()
    artifacts = (artifacts or folder / "artifacts").resolve()
    postgres = Postgres(folder, server_user(pg_user))
    postgres.init()
    for signum in (signal.SIGINT, signal.SIGTERM):  # SIGINT too where a shell ignored it
        signal.signal(signum, _stop_on_signal)
    process = None
    try:
        postgres.start()
        postgres.ensure_database(DATABASE)
        env = {
            **os.environ,
            "PGPASSFILE": str(postgres.passfile),  # the password stays out of URI and argv
            "MLFLOW_BACKEND_STORE_URI": postgres.sqlalchemy_uri(DATABASE),
        }
        command = [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--serve-artifacts",
            "--artifacts-destination",
            str(artifacts),
            "--host",
            host,
            "--port",
            str(port),
            "--workers",
            str(workers),
        ]
        process = subprocess.Popen(command, env=env, start_new_session=True)
        url = f"http://{host}:{port}"
        wait_ready(url, process, READY_TIMEOUT_S)
        print(
            f"MLflow tracking server ready at {url} (PostgreSQL on 127.0.0.1:"
            f"{postgres.port}, data in {postgres.data}, artifacts in {artifacts}).\n"
            f"Point clones at it: export MLFLOW_TRACKING_URI={url}",
            flush=True,
        )
        return process.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        if process is not None:
            terminate(process)
        postgres.stop()


def _main(args: argparse.Namespace) -> int:
    return serve(args.dir, args.host, args.port, args.artifacts, args.workers, args.pg_user)


def add_server_parser(subparsers: Any) -> argparse.ArgumentParser:
    """``glomx server [--dir D] [--host H] [--port P] [--artifacts A]``."""
    p = subparsers.add_parser(
        "server",
        help="run the team's MLflow tracking server (PostgreSQL store, proxied artifacts)",
        description="Creates the PostgreSQL cluster and database on first start. Clients set "
        "MLFLOW_TRACKING_URI=http://HOST:PORT. Ctrl-C or SIGTERM stops MLflow and PostgreSQL.",
    )
    p.add_argument(
        "--dir",
        type=Path,
        default=Path("mlflow-server"),
        help="server folder: PostgreSQL cluster and password file (default: %(default)s)",
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default: %(default)s; 0.0.0.0 for other machines)",
    )
    p.add_argument("--port", type=int, default=5000)
    p.add_argument(
        "--artifacts",
        type=Path,
        default=None,
        help="where the server keeps artifacts (default: DIR/artifacts)",
    )
    p.add_argument("--workers", type=int, default=2, help="MLflow worker processes")
    p.add_argument(
        "--pg-user",
        default=None,
        help="OS user PostgreSQL runs as (default: yours; `postgres` under root)",
    )
    p.set_defaults(func=_main)
    return p
