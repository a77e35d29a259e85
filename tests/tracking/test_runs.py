"""Tracking URI, provenance tags, run lifecycle and failure modes against real MLflow stores."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

from glomx.tracking import EXPERIMENT, TrackingError, stage_run, tracking_uri


def _runs(uri: str) -> list:
    client = MlflowClient(uri)
    return client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])


def test_tracking_uri_prefers_env_then_dvc_root_then_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert tracking_uri() == f"sqlite:///{tmp_path}/mlflow.db"  # conftest's MLFLOW_TRACKING_URI
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    assert tracking_uri() == f"sqlite:///{tmp_path.resolve()}/mlruns/mlflow.db"
    monkeypatch.setenv("DVC_ROOT", "/repo")  # dvc exp run --temp: log to the parent repo
    assert tracking_uri() == "sqlite:////repo/mlruns/mlflow.db"
    assert tracking_uri(tmp_path / "x") == f"sqlite:///{tmp_path.resolve()}/x/mlruns/mlflow.db"


def test_embedded_store_run_with_provenance_outside_git(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))  # not inside a repo
    monkeypatch.setenv("DVC_EXP_NAME", "sunny-exp")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data.dvc").write_text("outs:\n- md5: abc123.dir\n  path: data\n")
    (tmp_path / "params.yaml").write_text("train_lr: {}\n")
    params = {"fit": {"alpha": 0.5, "layers": [1, 2]}, "note": None}
    with stage_run("train-lr", params, "synthetic") as run:
        run.log_metrics({"val_auc": 0.9})
        run.log_history({"loss": [0.5, 0.4], "val_loss": [0.6, 0.5]})

    uri = f"sqlite:///{tmp_path.resolve()}/mlruns/mlflow.db"
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    assert exp.artifact_location == (tmp_path.resolve() / "mlruns" / "artifacts").as_uri()
    (logged,) = _runs(uri)
    assert logged.info.run_name == "train-lr" and logged.info.status == "FINISHED"
    tags = logged.data.tags
    assert tags["git.commit"] == "unknown" and tags["git.dirty"] == "unknown"
    assert tags["data.dvc_md5"] == "abc123.dir" and tags["dvc.exp"] == "sunny-exp"
    assert len(tags["params.md5"]) == 32 and tags["data.kind"] == "synthetic"
    assert logged.data.params == {"fit.alpha": "0.5", "fit.layers": "[1, 2]", "note": "null"}
    assert [m.value for m in client.get_metric_history(logged.info.run_id, "epoch/loss")] == [
        0.5,
        0.4,
    ]


def test_git_commit_and_dirty_flag_inside_a_repo(tmp_path: Path) -> None:
    from glomx.tracking import provenance_tags

    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "a.txt").write_text("1")
    git("add", "a.txt")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    clean = provenance_tags("s", "real", tmp_path)
    assert len(clean["git.commit"]) == 40 and clean["git.dirty"] == "false"
    (tmp_path / "a.txt").write_text("2")
    assert provenance_tags("s", "real", tmp_path)["git.dirty"] == "true"


def test_failed_block_ends_the_run_failed_and_logging_outside_is_refused(
    isolated_mlflow: str,
) -> None:
    with pytest.raises(ZeroDivisionError), stage_run("train-lr", {}, "real") as run:
        1 / 0  # noqa: B018
    (logged,) = _runs(isolated_mlflow)
    assert logged.info.status == "FAILED"
    with pytest.raises(TrackingError, match="not active"):
        run.log_metrics({"x": 1.0})


def test_unreachable_server_is_a_clear_error_naming_the_uri(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with pytest.raises(TrackingError, match=f"{uri} is unreachable"), stage_run("x", {}, "real"):
        pytest.fail("the run must not start")


def test_keras_callback_logs_each_epoch_as_it_ends(isolated_mlflow: str) -> None:
    keras = pytest.importorskip("keras")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer="sgd", loss="binary_crossentropy")
    x, y = np.random.default_rng(0).random((8, 3)), np.array([0, 1] * 4)
    with stage_run("train-cnn", {}, "synthetic") as run:
        callback = run.keras_callback()
        assert isinstance(callback, keras.callbacks.Callback)
        model.fit(x, y, epochs=2, callbacks=[callback], verbose=0)
        model.fit(x, y, epochs=1, callbacks=[callback], verbose=0)  # a second phase
    (logged,) = _runs(isolated_mlflow)
    history = MlflowClient(isolated_mlflow).get_metric_history(logged.info.run_id, "epoch/loss")
    assert sorted(h.step for h in history) == [0, 1, 2]


def test_lr_training_path_never_imports_tensorflow() -> None:
    code = (
        "import sys, glomx.training, glomx.models.logistic, glomx.tracking.pyfunc;"
        "sys.exit('tensorflow' in sys.modules or 'keras' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0
