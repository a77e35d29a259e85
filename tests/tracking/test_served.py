"""The champion through the registry: pyfunc round trip, predict by URI, and one real REST
server (``glomx serve``, started once for this module) answering every HTTP check: strict JSON
with null for failed rows, no file paths, a PNG cut short, bounded pixels, bounded bodies,
short errors that never echo the request, and README's command."""

from __future__ import annotations

import argparse
import base64
import csv
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from served_http import serving, strict_json

from glomx.cli_predict import add_champion_parser
from glomx.config import parse
from glomx.data.images import load_image
from glomx.data.store import ArrayStore
from glomx.family_params import LRSection
from glomx.models import load_classifier
from glomx.models.logistic import LogisticClassifier
from glomx.models.mean import MeanModel, copy_member
from glomx.predict import load_model, predict_files
from glomx.tracking import stage_run
from glomx.tracking.http_guard import MAX_BODY_MB
from glomx.tracking.pyfunc import INPUT_REFUSAL, MAX_IMAGE_PIXELS, MAX_REQUEST_PIXELS
from glomx.tracking.registry import promote, register

REPO = Path(__file__).resolve().parents[2]
REQUEST_PIXELS = 3_000_000  # the served module's request budget; images keep the default
BODY_MB = 2  # the served module's body limit


@pytest.fixture
def champion(registered_lr: str) -> str:
    """The registered LR model promoted to champion."""
    assert promote(registered_lr).version == registered_lr
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
    assert out["probability"][1] is None and "not a readable image" in out["error"][1]

    model = load_model("models:/glomx@champion")
    assert model.source == f"models:/glomx/{champion}"
    predict_files([good], model, tmp_path / "p.csv", workers=1, progress=False)
    with open(tmp_path / "p.csv", newline="") as f:
        row = next(csv.DictReader(f))
    assert float(row["probability"]) == pytest.approx(expected, abs=1e-6)
    assert row["model"] == f"models:/glomx/{champion}"


@pytest.fixture(scope="module")
def ensemble_dir(lr_dir: Path, prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ``ensemble`` as the choose stage builds it: the mean of two saved models (``lr_dir``
    and a second LR at another size), each copied into a folder of its own."""
    root = tmp_path_factory.mktemp("ensemble")
    pre = load_classifier(lr_dir).meta.preprocessing
    other = LogisticClassifier.from_params(
        parse(LRSection, {"model": {"size": 6}, "fit": {"epochs": 2}}, "train_lr"), pre
    )
    other.fit(ArrayStore(prepared / "train"), ArrayStore(prepared / "val"))
    other.save(root / "lr6")
    members = {"lr": load_classifier(lr_dir), "lr6": load_classifier(root / "lr6")}
    copy_member(lr_dir, root / "ensemble" / "lr")
    copy_member(root / "lr6", root / "ensemble" / "lr6")
    MeanModel.of("ensemble", members, pre).save_meta(root / "ensemble")
    return root / "ensemble"


@pytest.fixture(scope="module")
def store_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The served model's own tracking store."""
    return f"sqlite:///{tmp_path_factory.mktemp('served')}/mlflow.db"


@pytest.fixture(scope="module")
def server(ensemble_dir: Path, prepared: Path, store_uri: str) -> Iterator[str]:
    """``ensemble_dir`` registered and promoted in a store of its own, served by ``glomx
    serve`` for the whole module; yields the base URL."""
    root = Path(store_uri.removeprefix("sqlite:///")).parent
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", store_uri)
        images = ArrayStore(prepared / "val").read([0])
        with stage_run("choose", {}, "synthetic") as run:
            version = register(run, ensemble_dir, load_classifier(ensemble_dir), images)
        promote(version)
        env = {
            **os.environ,
            MAX_REQUEST_PIXELS[0]: str(REQUEST_PIXELS),
            MAX_BODY_MB[0]: str(BODY_MB),
        }
    with serving(env, root / "serve.log") as base:
        yield base


def _send(base: str, body: bytes | Iterable[bytes], **headers: str) -> tuple[int, str]:
    """POST ``body`` to /invocations (chunked when an iterable) → (HTTP status, reply text),
    errors included."""
    headers = {"Content-Type": "application/json", **headers}
    request = urllib.request.Request(f"{base}/invocations", data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def _post(base: str, columns: list[str], rows: list[list[str | None]]) -> tuple[int, str]:
    """POST a ``dataframe_split`` request → (HTTP status, response text), errors included."""
    return _send(base, json.dumps({"dataframe_split": {"columns": columns, "data": rows}}).encode())


def test_served_champion_answers_in_strict_json_with_null_for_failed_rows(
    server: str, ensemble_dir: Path, png_folder: Path, cut_short_png: bytes
) -> None:
    good = png_folder / "SAS_1-0.png"
    rows = [
        [_b64(good)],
        [_b64(png_folder / "VUHSK_7-8.png")],  # text, not an image
        [_b64(png_folder / "SAS_1-9.png")],  # truncated mid-file
        [base64.b64encode(cut_short_png).decode()],  # pixel data ends cleanly after 10 rows
    ]
    status, text = _post(server, ["image"], rows)
    assert status == 200, text
    ok, *failed = strict_json(text)["predictions"]
    local = load_classifier(ensemble_dir)
    expected = local.predict_proba(load_image(good, local.meta.preprocessing)[None])[0]
    assert ok["probability"] == pytest.approx(expected, abs=1e-6)
    assert ok["label"] == int(expected >= local.meta.threshold) and ok["error"] is None
    assert [(r["probability"], r["label"]) for r in failed] == [(None, None)] * 3
    assert failed[0]["error"].startswith("row 1: not a readable image")
    assert failed[1]["error"].startswith("row 2: corrupt or truncated image")
    assert "row 3: corrupt or truncated image (pixel data ends after" in failed[2]["error"]


def test_served_model_keeps_mlflow_routes(server: str) -> None:
    """`/ping`, `/health` and `/version` answer as `mlflow models serve` does."""
    for route, expected in (("ping", "\n"), ("health", "\n"), ("version", mlflow.__version__)):
        with urllib.request.urlopen(f"{server}/{route}", timeout=10) as response:
            assert (response.status, response.read().decode()) == (200, expected)


def _refusal(column: str) -> dict[str, str]:
    return {
        "error_code": "INVALID_PARAMETER_VALUE",
        "message": f"column '{column}' not accepted: {INPUT_REFUSAL}",
    }


def test_served_model_never_opens_a_path(server: str, png_folder: Path, tmp_path: Path) -> None:
    """Naming a file, existing or not, gets one fixed refusal; nothing tells them apart."""
    good = str(png_folder / "SAS_1-0.png")
    paths = ["/etc/passwd", str(tmp_path / "no-such-file.png"), str(tmp_path), good]
    for path in paths:
        status, text = _post(server, ["path"], [[path]])
        assert (status, strict_json(text)) == (400, _refusal("path")), text
    # beside an image the path is not dropped unread (as MLflow drops undeclared columns): the
    # request is refused as a whole
    status, text = _post(server, ["image", "path"], [[_b64(Path(good)), good]])
    assert (status, strict_json(text)) == (400, _refusal("path")), text


def test_served_model_names_an_undeclared_column(server: str, png_folder: Path) -> None:
    """Any column but `image` is refused by name, in every request format, never dropped."""
    image = _b64(png_folder / "SAS_1-0.png")
    status, text = _post(server, ["image", "slide"], [[image, "SAS_1"]])
    assert (status, strict_json(text)) == (400, _refusal("slide")), text
    records = {"dataframe_records": [{"image": image, "Image": image}]}
    status, text = _send(server, json.dumps(records).encode())
    assert (status, strict_json(text)) == (400, _refusal("Image")), text


def test_served_model_refuses_a_body_over_its_limit_without_reading_it(server: str) -> None:
    """Declared (Content-Length) or streamed (chunked), a body over the limit gets a short
    413, and the client reads it rather than a broken connection."""
    limit = BODY_MB * 1_000_000
    over = b'{"dataframe_split": {"columns": ["image"], "data": [["' + b"A" * limit + b'"]]}}'
    chunks = (over[i : i + 65536] for i in range(0, len(over), 65536))
    for body in (over, chunks):
        status, text = _send(server, body)
        assert status == 413 and len(text) < 300, text[:300]
        assert strict_json(text) == {
            "error_code": "REQUEST_LIMIT_EXCEEDED",
            "message": f"the request body is over this server's limit of {BODY_MB} MB "
            f"({MAX_BODY_MB[0]}); send fewer images per request",
        }
    # curl asks first above 1 MB (`Expect: 100-continue`) and gets the 413 instead of a go-ahead
    done = subprocess.run(
        ["curl", "-s", "-w", "\n%{http_code}", f"{server}/invocations",
         "-H", "Content-Type: application/json", "--data-binary", "@-"],
        input=over, capture_output=True, timeout=30,
    )  # fmt: skip
    text, code = done.stdout.decode().rsplit("\n", 1)
    assert code == "413" and strict_json(text)["error_code"] == "REQUEST_LIMIT_EXCEEDED", text


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (
            b'{"dataframe_split": {"columns": ["image"], "data": [["' + b"A" * 999_000,
            "not valid JSON",
        ),
        (b'{"dataframe_split": "\xff' + b"\xff" * 999_000 + b'"}', "not UTF-8 text"),
        (b"[" + b'"A", ' * 200_000 + b'"A"]', "must be a JSON object"),
        (b'{"dataframe_split": {"columns": ["image"], "data": "' + b"A" * 999_000 + b'"}}', ""),
    ],
)
def test_a_malformed_body_gets_a_short_error_not_its_echo(
    server: str, body: bytes, reason: str
) -> None:
    """1 MB of malformed request: 400 and a reply under 1 KB, whatever MLflow would say."""
    status, text = _send(server, body)
    answer = strict_json(text)
    assert status == 400 and len(text) < 1000 and reason in answer["message"], text[:1000]
    assert set(answer) == {"error_code", "message"} and "AAAAAAAAAA" not in text


def _blank_png(side: int) -> str:
    """A base64 PNG of ``side``×``side`` white pixels: a few KiB that decode to megapixels."""
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), "white").save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_served_model_bounds_pixels_from_headers(server: str, png_folder: Path) -> None:
    """An image over the per-image limit, and the rows past the request's pixel budget, get
    error rows; the rows within both are predicted."""
    big, mid = _blank_png(2001), _blank_png(1200)  # 4.004 Mpx, 1.44 Mpx
    rows = [[big], [mid], [_b64(png_folder / "SAS_1-0.png")], [mid], [mid]]
    status, text = _post(server, ["image"], rows)
    assert status == 200, text
    answers = strict_json(text)["predictions"]
    assert answers[0]["error"] == (
        f"row 0: 2001x2001 px is over this server's limit of {MAX_IMAGE_PIXELS[1]} px per image "
        f"({MAX_IMAGE_PIXELS[0]}); send glomerulus patches, downscaled if need be"
    )
    assert [a["error"] for a in answers[1:4]] == [None] * 3  # 1.44 + 0.0003 + 1.44 Mpx
    assert answers[4]["error"] == (
        f"row 4: over this server's limit of {REQUEST_PIXELS} px per request "
        f"({MAX_REQUEST_PIXELS[0]}); send this row in another request"
    )
    assert answers[4]["probability"] is None and answers[1]["probability"] is not None


def readme_serve_command() -> str:
    """The ```bash block of README's **Serve** bullet, as written."""
    readme = (REPO / "README.md").read_text()
    serve = readme[readme.index("- **Serve**") :]
    match = re.search(r"```bash\n(.*?)```", serve, re.DOTALL)
    assert match, "README's Serve bullet has no bash block"
    return match.group(1)


def test_readme_serve_command_on_the_largest_real_patch(
    server: str, ensemble_dir: Path, real_data: Path, tmp_path: Path
) -> None:
    largest = max(real_data.rglob("*.png"), key=lambda p: p.stat().st_size)
    assert largest.stat().st_size > 120_000  # well above the ~98 KB that broke inlining
    shutil.copy(largest, tmp_path / "patch.png")
    command = readme_serve_command()
    assert "http://127.0.0.1:5001/" in command and "patch.png" in command
    command = command.replace("http://127.0.0.1:5001/", f"{server}/")  # this test's server
    done = subprocess.run(
        ["bash", "-c", f"set -o pipefail\n{command}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0 and not done.stderr, done.stderr
    (row,) = strict_json(done.stdout)["predictions"]
    local = load_classifier(ensemble_dir)
    expected = local.predict_proba(load_image(largest, local.meta.preprocessing)[None])[0]
    assert row["error"] is None and row["probability"] == pytest.approx(expected, abs=1e-6)


def test_served_ensemble_and_glomx_predict_agree(
    server: str, store_uri: str, ensemble_dir: Path, png_folder: Path, tmp_path: Path
) -> None:
    """The ensemble over real HTTP and through `glomx predict` (same registry version):
    the same probability and label per image, and both the mean of its two members."""
    files = [png_folder / "SAS_1-0.png", png_folder / "SAS_1-1.png"]
    status, text = _post(server, ["image"], [[_b64(f)] for f in files])
    assert status == 200, text
    served = strict_json(text)["predictions"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": store_uri}
    glomx = Path(sys.executable).with_name("glomx")
    out = tmp_path / "pred.csv"
    done = subprocess.run(
        [str(glomx), "predict", *map(str, files), "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    with open(out, newline="") as f:
        rows = {Path(r["name"]).name: r for r in csv.DictReader(f)}
    ensemble = load_classifier(ensemble_dir)
    for file, answer in zip(files, served, strict=True):
        row = rows[file.name]
        assert float(row["probability"]) == pytest.approx(answer["probability"], abs=1e-6)
        assert int(row["label"]) == answer["label"] and row["model"].endswith("/1")
        image = load_image(file, ensemble.meta.preprocessing)[None]
        members = [m.predict_proba(image)[0] for m in ensemble.members.values()]
        assert answer["probability"] == pytest.approx(np.mean(members), abs=1e-6)
        assert members[0] != pytest.approx(members[1], abs=1e-4)  # a mean of two models


def _raw(base: str, head: str, body: bytes = b"") -> socket.socket:
    """An HTTP/1.1 POST to /invocations on a socket of its own: ``head`` (header lines), then
    ``body``, which need not be all of it."""
    host, port = base.removeprefix("http://").split(":")
    conn = socket.create_connection((host, int(port)), timeout=60)
    conn.sendall(f"POST /invocations HTTP/1.1\r\nHost: {host}\r\n{head}\r\n".encode() + body)
    return conn


def _reply(conn: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    chunks = []
    while chunk := conn.recv(65536):
        chunks.append(chunk)
    conn.close()
    return b"".join(chunks)


def test_one_request_is_served_at_a_time_and_none_is_lost(server: str, png_folder: Path) -> None:
    """GLOMX_SERVE_MAX_CONCURRENT=1 (the default): while one request holds the slot (its body
    still arriving), the others wait, unanswered; once it is done, every one is answered."""
    files = [png_folder / n for n in ("SAS_1-0.png", "SAS_1-1.png", "deeper/VUHSK_7-3.png")]
    body = json.dumps({"dataframe_split": {"columns": ["image"], "data": [[_b64(files[0])]]}})
    head = "Content-Type: application/json\r\nConnection: close\r\n"
    first = _raw(server, f"{head}Content-Length: {len(body)}\r\n", body[:20].encode())
    time.sleep(2)  # it holds the slot now, reading its body
    with ThreadPoolExecutor(len(files)) as pool:
        waiting = [pool.submit(_post, server, ["image"], [[_b64(f)]]) for f in files]
        done, _ = futures_wait(waiting, timeout=5)
        assert not done, "a request was served while another held the only slot"
        first.sendall(body[20:].encode())
        reply = _reply(first)
        answers = [w.result(timeout=120) for w in waiting]
    assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
    assert [status for status, _ in answers] == [200] * len(files)
    one = strict_json(reply.split(b"\r\n\r\n", 1)[1])["predictions"][0]["probability"]
    assert strict_json(answers[0][1])["predictions"][0]["probability"] == one


def test_the_default_body_limit_is_64_mb(server: str, store_uri: str, tmp_path: Path) -> None:
    """Without GLOMX_SERVE_MAX_BODY_MB: a body declared one byte over 64 MB is refused (413)
    before it is sent; one of exactly 64 MB gets the go-ahead (100 Continue)."""
    env = {k: v for k, v in os.environ.items() if k != MAX_BODY_MB[0]}
    env["MLFLOW_TRACKING_URI"] = store_uri
    head = "Content-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: {}\r\n"
    with serving(env, tmp_path / "serve.log") as base:
        over = _reply(_raw(base, head.format(64_000_001) + "Connection: close\r\n"))
        at_limit = _raw(base, head.format(64_000_000))
        go_ahead = at_limit.recv(100)
        at_limit.close()
    assert over.startswith(b"HTTP/1.1 413"), over[:200]
    assert b"over this server's limit of 64 MB" in over
    assert go_ahead.startswith(b"HTTP/1.1 100 Continue"), go_ahead


def test_champion_command(champion: str, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    add_champion_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["champion"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert f"models:/glomx/{champion} (lr)" in out and "balanced_accuracy 0.9000" in out
    assert "first champion" in out and "train@lr" in out
