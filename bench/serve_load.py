"""The served model under load: the worker's resident memory while 8 clients send at once.

Starts a real server on a registered model (``glomx serve``, or ``--server mlflow`` for plain
``mlflow models serve`` to compare), waits until it is idle, then runs each scenario: every
client sends its requests one after the other, all clients at once. A sampler reads the
worker's RSS every 20 ms. Reported per scenario: idle RSS before, peak RSS during, RSS 3 s after
the last reply, requests/s and the HTTP statuses seen.

Scenarios (``--only`` picks some):

- ``patches``: batches of the largest real patches under ``--data`` (``--batch`` rows each);
- ``huge``: 6000×6000 PNGs, two rows per request (140 KB of base64 that decode to 108 MB);
- ``fullbody``: the largest real patches repeated to just under the server's body limit.

Usage: ``python bench/serve_load.py [--model models:/glomx@champion] [--server glomx|mlflow]``;
figures go to stdout and ``bench/out/serve_load.json``.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
MIB = 2**20
SETTLE_S = 3.0  # wait after the last reply before reading "after"
CLIENT_TIMEOUT_S = 1800


def _free_port() -> int:
    from glomx.team_server.postgres import free_port

    return free_port()


class Sampler(threading.Thread):
    """The peak RSS of one process, read every 20 ms until stopped."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.peak = 0
        self.running = True

    def rss(self) -> int:
        return self.process.memory_info().rss

    def run(self) -> None:
        while self.running:
            self.peak = max(self.peak, self.rss())
            time.sleep(0.02)

    def stop(self) -> int:
        self.running = False
        self.join()
        return self.peak


def start_server(kind: str, model: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    """``glomx serve`` or ``mlflow models serve`` with one worker, on ``port``."""
    if kind == "glomx":
        argv = [sys.executable, "-m", "glomx.cli", "serve", "--model", model, "--port", str(port)]
    else:
        argv = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model, "-w", "1",
                "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]  # fmt: skip
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    with open(log, "w") as out:
        return subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )


def worker_pid(server: subprocess.Popen[bytes]) -> int:
    """The process that holds the model: the largest one in the server's process tree."""
    tree = [psutil.Process(server.pid), *psutil.Process(server.pid).children(recursive=True)]
    return max(tree, key=lambda p: p.memory_info().rss).pid


def post(url: str, body: bytes) -> int:
    """The HTTP status of one POST (0: no reply)."""
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=CLIENT_TIMEOUT_S) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as err:
        err.read()
        return err.code
    except OSError:  # no reply in time, connection broken
        return 0


def body(rows: list[str]) -> bytes:
    return json.dumps(
        {"dataframe_split": {"columns": ["image"], "data": [[r] for r in rows]}}
    ).encode()


def huge_png(side: int = 6000) -> str:
    """A noisy-free but non-trivial ``side``² PNG: a gradient, ~140 KB compressed."""
    image = Image.linear_gradient("L").resize((side, side)).convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def scenarios(data: Path, batch: int, max_body: int) -> dict[str, bytes]:
    """Each scenario's one request body (every client sends the same bytes)."""
    largest = sorted(data.rglob("*.png"), key=lambda p: p.stat().st_size)[-batch:]
    patches = [base64.b64encode(p.read_bytes()).decode() for p in largest]
    per_row = max(len(r) for r in patches) + 8
    fill = (max_body - 200) // per_row
    return {
        "patches": body(patches),
        "huge": body([huge_png()] * 2),
        "fullbody": body([patches[i % len(patches)] for i in range(fill)]),
    }


def load(url: str, pid: int, payload: bytes, clients: int, requests: int) -> dict[str, Any]:
    """``clients`` threads each sending ``requests`` POSTs of ``payload``; RSS before, peak,
    after; requests/s."""
    sampler = Sampler(pid)
    idle = sampler.rss()
    sampler.start()
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        statuses = list(
            pool.map(lambda _: [post(url, payload) for _ in range(requests)], range(clients))
        )
    seconds = time.perf_counter() - start
    time.sleep(SETTLE_S)
    peak = sampler.stop()
    return {
        "body_mib": round(len(payload) / MIB, 2),
        "requests": clients * requests,
        "statuses": dict(Counter(s for c in statuses for s in c)),
        "idle_mib": round(idle / MIB),
        "peak_mib": round(peak / MIB),
        "after_mib": round(sampler.rss() / MIB),
        "req_per_s": round(clients * requests / seconds, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="models:/glomx@champion")
    parser.add_argument("--server", choices=("glomx", "mlflow"), default="glomx")
    parser.add_argument("--data", type=Path, default=ROOT / "data", help="real patches")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=2, help="per client and scenario")
    parser.add_argument("--batch", type=int, default=32, help="rows per `patches` request")
    parser.add_argument("--only", nargs="*", choices=("patches", "huge", "fullbody"))
    args = parser.parse_args()
    from glomx.tracking import tracking_uri

    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri()
    max_body = int(float(os.environ.get("GLOMX_SERVE_MAX_BODY_MB", "64")) * 1_000_000)
    bodies = scenarios(args.data, args.batch, max_body)
    OUT.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    server = start_server(args.server, args.model, port, OUT / f"serve_load-{args.server}.log")
    base = f"http://127.0.0.1:{port}"
    try:
        from glomx.team_server.main import wait_ready

        wait_ready(base, server, 300)
        post(f"{base}/invocations", bodies["patches"])  # warm-up: first predict builds graphs
        time.sleep(SETTLE_S)
        pid = worker_pid(server)
        report: dict[str, Any] = {"server": args.server, "model": args.model,
                                  "clients": args.clients, "cpus": os.cpu_count()}  # fmt: skip
        for name in args.only or list(bodies):
            report[name] = load(
                f"{base}/invocations", pid, bodies[name], args.clients, args.requests
            )
            print(name, report[name], flush=True)
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:  # still finishing requests
            server.kill()
    (OUT / f"serve_load-{args.server}.json").write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
