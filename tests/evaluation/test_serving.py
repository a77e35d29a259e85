"""The champion through the registry: pyfunc round trip, predict by URI, and a real REST server."""

from __future__ import annotations

import argparse
import base64
import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from glomx.cli_predict import add_champion_parser
from glomx.data.images import load_image
from glomx.models import load_classifier
from glomx.predict import load_model, predict_files
from glomx.tracking.registry import promote

SERVE_TIMEOUT_S = 180


@pytest.fixture
def champion(registered_lr: str) -> str:
    """The registered LR model promoted to champion."""
    assert promote([registered_lr]).version == registered_lr
    return registered_lr


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")


def test_pyfunc_round_trip_and_predict_by_uri(
    champion: str, lr_dir: Path, png_folder: Path, tmp_path: Path
) -> None:
    good, bad = png_folder / "SAS_1-0.png", png_folder / "VUHSK_7-8.png"
    served = mlflow.pyfunc.load_model("models:/glomx@champion")
    out = served.predict(pd.DataFrame({"image": [_b64(good), _b64(bad)]}))
    local = load_classifier(lr_dir)
    expected = local.predict_proba(load_image(good, local.meta.preprocessing)[None])[0]
    assert out["probability"][0] == pytest.approx(expected, abs=1e-6)
    assert out["label"][0] == int(expected >= local.meta.threshold)
    assert np.isnan(out["probability"][1]) and "not a readable image" in out["error"][1]

    model = load_model("models:/glomx@champion")
    assert model.source == f"models:/glomx/{champion}"
    predict_files([good], model, tmp_path / "p.csv", workers=1, progress=False)
    with open(tmp_path / "p.csv", newline="") as f:
        row = next(csv.DictReader(f))
    assert float(row["probability"]) == pytest.approx(expected, abs=1e-6)
    assert row["model"] == f"models:/glomx/{champion}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float) -> int:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.status


def test_served_champion_answers_a_rest_request(
    champion: str, png_folder: Path, tmp_path: Path
) -> None:
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    # mlflow execs `uvicorn` from PATH: the one installed beside this interpreter
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    log = open(tmp_path / "serve.log", "w")  # noqa: SIM115 - closed in finally
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/glomx@champion",
         "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + SERVE_TIMEOUT_S
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                if _get(f"{base}/ping", 2) == 200:
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            assert time.monotonic() < deadline, "server did not answer /ping in time"
            time.sleep(0.5)
        body = {
            "dataframe_split": {"columns": ["image"], "data": [[_b64(png_folder / "SAS_1-0.png")]]}
        }
        request = urllib.request.Request(
            f"{base}/invocations",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.loads(response.read())
        (prediction,) = answer["predictions"]
        assert 0.0 <= prediction["probability"] <= 1.0
        assert prediction["label"] in (0, 1) and not prediction.get("error")
    finally:
        _stop(server)
        log.close()


def _stop(server: subprocess.Popen) -> None:
    """End the server's process group (mlflow → uvicorn → worker)."""
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, None)):
        try:
            os.killpg(server.pid, sig)
        except ProcessLookupError:
            return
        try:
            server.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def test_champion_command(champion: str, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    add_champion_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["champion"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert f"models:/glomx/{champion} (lr)" in out and "balanced_accuracy 0.9000" in out
    assert "first champion" in out and "train-lr" in out
