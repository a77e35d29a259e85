"""Tracking URI, provenance tags, run lifecycle and failure modes against real MLflow stores."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from glomx.tracking import EXPERIMENT, TrackingError, provenance_tags, stage_run, tracking_uri
from glomx.tracking.names import HOST_TAG, NOTE_DIGEST_TAG, NOTE_TAG, PID_TAG
from glomx.tracking.provenance import pipeline_outputs, ui_url
from glomx.tracking.store import EXPERIMENT_NOTE


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
    with stage_run("train@lr", params, "synthetic") as run:
        run.log_metrics({"val_auc": 0.9})
        run.log_epoch({"loss": 0.5, "val_loss": 0.6})
        run.log_epoch({"loss": 0.4, "val_loss": 0.5})

    uri = f"sqlite:///{tmp_path.resolve()}/mlruns/mlflow.db"
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    assert exp.artifact_location == (tmp_path.resolve() / "mlruns" / "artifacts").as_uri()
    (logged,) = _runs(uri)
    assert logged.info.run_name == "train@lr" and logged.info.status == "FINISHED"
    tags = logged.data.tags
    assert tags["git.commit"] == "unknown" and tags["git.dirty"] == "unknown"
    assert tags["data.dvc_md5"] == "abc123.dir" and tags["dvc.exp"] == "sunny-exp"
    assert len(tags["params.md5"]) == 32 and tags["data.kind"] == "synthetic"
    assert logged.data.params == {"fit.alpha": "0.5", "fit.layers": "[1, 2]", "note": "null"}
    assert [m.value for m in client.get_metric_history(logged.info.run_id, "epoch/loss")] == [
        0.5,
        0.4,
    ]


def _git_repo(root: Path, files: dict[str, str]) -> None:
    """A git repository at ``root`` with ``files`` committed."""

    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, timeout=60)

    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")


def test_git_commit_and_dirty_flag_inside_a_repo(tmp_path: Path) -> None:
    _git_repo(tmp_path, {"a.txt": "1"})
    clean = provenance_tags("s", "real", tmp_path)
    assert len(clean["git.commit"]) == 40 and clean["git.dirty"] == "false"
    assert "git.changed" not in clean
    (tmp_path / "a.txt").write_text("2")
    dirty = provenance_tags("s", "real", tmp_path)
    assert dirty["git.dirty"] == "true" and dirty["git.changed"] == "a.txt"


def test_a_foreach_stages_outputs_are_the_pipelines_own(tmp_path: Path) -> None:
    """A template stage (``foreach`` over a ``vars`` dict, as dvc.yaml's train) writes its
    outputs once per key, ``${key}`` and ``${item.*}`` filled in as DVC fills them."""
    dvc_yaml = {
        "vars": ["params.yaml", {"families": {"lr": {"tag": "a"}, "cnn": {"tag": "b"}}}],
        "stages": {
            "train": {
                "foreach": "${families}",
                "do": {
                    "cmd": "python train.py ${key}",
                    "outs": ["${paths.models}/${key}"],
                    "metrics": [{"metrics/${key}-${item.tag}.json": {"cache": False}}],
                },
            }
        },
    }
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(dvc_yaml))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"paths": {"models": "models"}}))
    assert pipeline_outputs(tmp_path) == [
        "dvc.lock",
        "metrics/cnn-b.json",
        "metrics/lr-a.json",
        "models/cnn",
        "models/lr",
    ]


def test_the_pipelines_own_outputs_do_not_make_the_tree_dirty(tmp_path: Path) -> None:
    """`dvc repro` rewrites dvc.lock and the cache: false metrics/plots git tracks; a clean
    clone that ran the pipeline is still clean, and a source edit is named. The DVC project
    sits in a sub-folder of the git repository (git paths are relative to the git root)."""
    dvc_yaml = {
        "stages": {
            "train": {
                "cmd": "python train.py",
                "outs": ["${paths.models}/lr"],
                "metrics": [{"${paths.metrics}/lr.json": {"cache": False}}],
                "plots": [{"${paths.plots}/lr/roc.csv": {"x": "fpr"}}, "plots/grid.png"],
            }
        },
        "plots": [{"summary": {"y": {"src/train.py": "x"}}}],  # top level: not an output
    }
    params = {"paths": {"models": "models", "metrics": "metrics", "plots": "plots"}}
    files = {
        "dvc.yaml": yaml.safe_dump(dvc_yaml),
        "params.yaml": yaml.safe_dump(params),
        "dvc.lock": "schema: '2.0'\n",
        "metrics/lr.json": "{}",
        "plots/lr/roc.csv": "fpr\n",
        "src/train.py": "print(1)\n",
    }
    _git_repo(tmp_path, {f"project/{name}": text for name, text in files.items()})
    project = tmp_path / "project"
    assert pipeline_outputs(project) == [
        "dvc.lock",
        "metrics/lr.json",
        "models/lr",
        "plots/grid.png",
        "plots/lr/roc.csv",
    ]
    (project / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    (project / "metrics" / "lr.json").write_text('{"auc": 1}')
    (project / "plots" / "lr" / "roc.csv").write_text("fpr\n0\n")
    (project / "plots" / "grid.png").write_bytes(b"new, untracked")
    assert provenance_tags("s", "real", project)["git.dirty"] == "false"

    (project / "src" / "train.py").write_text("print(2)\n")
    (project / "src" / "new file.py").write_text("")
    tags = provenance_tags("s", "real", project)
    assert tags["git.dirty"] == "true"
    assert tags["git.changed"] == "project/src/new file.py, project/src/train.py"


def test_keras_backend_is_recorded_once_keras_is_loaded(isolated_mlflow: str) -> None:
    import keras

    assert provenance_tags("s", "real")["keras.backend"] == keras.backend.backend()


def test_a_killed_stages_run_is_closed_by_the_next_stage_run(isolated_mlflow: str) -> None:
    """A stage killed with SIGKILL leaves its run RUNNING; the next run of any stage marks it
    KILLED (DVC may restore the killed stage itself from its cache, running no code). Runs of
    live processes (a parallel experiment, this process) stay open."""
    with stage_run("train@cnn", {}, "real"):
        pass  # creates the experiment
    client = MlflowClient(isolated_mlflow)
    exp = client.get_experiment_by_name(EXPERIMENT).experiment_id
    dead = subprocess.Popen(["true"])
    dead.wait(timeout=30)
    alive = subprocess.Popen(["sleep", "60"])
    try:
        host = socket.gethostname()
        stale = {}
        for name, pid in (("dead", dead.pid), ("alive", alive.pid), ("mine", os.getpid())):
            tags = {"glomx.stage": "train@cnn", HOST_TAG: host, PID_TAG: str(pid)}
            stale[name] = client.create_run(exp, tags=tags, run_name=name).info.run_id
        other_stage = {"glomx.stage": "train@lr", HOST_TAG: host, PID_TAG: str(dead.pid)}
        stale["other stage"] = client.create_run(exp, tags=other_stage).info.run_id
        with stage_run("train@cnn", {}, "real") as run:
            status = {k: client.get_run(v).info.status for k, v in stale.items()}
    finally:
        alive.kill()
        alive.wait(timeout=30)
    assert status == {
        "dead": "KILLED",
        "alive": "RUNNING",
        "mine": "RUNNING",
        "other stage": "KILLED",
    }
    killed = client.get_run(stale["dead"])
    assert (
        killed.info.end_time is not None
        and "ended without closing" in killed.data.tags["glomx.closed"]
    )
    tags = client.get_run(run.run_id).data.tags
    assert tags[HOST_TAG] == host and tags[PID_TAG] == str(os.getpid())


def test_experiment_opens_as_model_training_and_is_described(isolated_mlflow: str) -> None:
    client = MlflowClient(isolated_mlflow)
    client.create_experiment(EXPERIMENT)  # made before these tags existed
    with stage_run("train@lr", {}, "real"):
        pass
    tags = client.get_experiment_by_name(EXPERIMENT).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    assert "One run per DVC stage" in tags["mlflow.note.content"]
    exp = client.get_experiment_by_name(EXPERIMENT).experiment_id
    client.set_experiment_tag(exp, "mlflow.note.content", "written in the UI")
    with stage_run("train@lr", {}, "real"):
        pass
    assert client.get_experiment(exp).tags["mlflow.note.content"] == "written in the UI"


# what glomx wrote as the experiment's description before selection moved to out-of-fold
STALE_NOTE = """\
Kidney glomeruli patches (PAS stain): globally sclerotic (1) or not (0). One run per DVC stage
execution, tagged `glomx.stage` and with its provenance (`git.*`, `data.*`, `params.md5`).

- `train-<family>` runs: `epoch/<metric>` are per-epoch curves; `selected/<metric>` are the
  validation scores of the model the run kept (best epoch by its early-stopping monitor, at its
  decision threshold) and registered as a version of model `glomx`.
- `evaluate` runs: one child run per evaluated model with the same `test_<metric>` names
  (test split; 95 % slide-bootstrap intervals in `test_metrics.json`), linked to the scored
  version and its training run. Alias `champion` of `glomx` is chosen on validation only.
"""


@pytest.mark.parametrize("written", ["stale", "digest"])
def test_a_description_glomx_wrote_earlier_is_brought_up_to_date(
    written: str, isolated_mlflow: str
) -> None:
    client = MlflowClient(isolated_mlflow)
    exp = client.create_experiment(EXPERIMENT)
    if written == "stale":  # an earlier release's text, with no digest beside it
        client.set_experiment_tag(exp, NOTE_TAG, STALE_NOTE)
    else:  # a later text, with the digest glomx records beside what it writes
        client.set_experiment_tag(exp, NOTE_TAG, "an older note")
        client.set_experiment_tag(
            exp, NOTE_DIGEST_TAG, hashlib.sha256(b"an older note").hexdigest()
        )
    with stage_run("train-lr", {}, "real"):
        pass
    note = client.get_experiment(exp).tags[NOTE_TAG]
    assert note == EXPERIMENT_NOTE
    assert "out-of-fold" in note and "validation" not in note.replace("cross-validate", "")
    assert "only readers of the test split" in note


def test_ui_address_opens_the_experiment_on_model_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    assert ui_url("http://127.0.0.1:5000/") == (
        "http://127.0.0.1:5000/#/experiments?workflowType=machine_learning"
    )
    assert not (tmp_path / "mlruns").exists()  # asking does not create a store
    with stage_run("train@lr", {}, "real"):
        pass
    exp = MlflowClient(tracking_uri()).get_experiment_by_name(EXPERIMENT).experiment_id
    assert ui_url("http://h:1") == f"http://h:1/#/experiments/{exp}?workflowType=machine_learning"


def test_failed_block_ends_the_run_failed_and_logging_outside_is_refused(
    isolated_mlflow: str,
) -> None:
    with pytest.raises(ZeroDivisionError), stage_run("train@lr", {}, "real") as run:
        1 / 0  # noqa: B018
    (logged,) = _runs(isolated_mlflow)
    assert logged.info.status == "FAILED"
    with pytest.raises(TrackingError, match="not active"):
        run.log_metrics({"x": 1.0})


def test_a_locked_sqlite_store_says_why_and_points_to_the_server(isolated_mlflow: str) -> None:
    from mlflow.exceptions import MlflowException

    locked = MlflowException("(sqlite3.OperationalError) database is locked")  # as MLflow raises
    with (
        pytest.raises(TrackingError, match="make server") as caught,
        stage_run("train@lr", {}, "real"),
    ):
        raise locked
    assert isolated_mlflow in str(caught.value) and caught.value.__cause__ is locked
    assert "one process write at a time" in str(caught.value)
    (logged,) = _runs(isolated_mlflow)
    assert logged.info.status == "FAILED"


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


def test_epochs_are_logged_as_they_come_at_steps_that_count_on_across_phases(
    isolated_mlflow: str,
) -> None:
    """What a classifier's ``on_epoch`` hook does with ``run.log_epoch``: a second fit phase
    (fine-tuning) continues the steps of the first."""
    with stage_run("train@cnn", {}, "synthetic") as run:
        for loss in (0.7, 0.6):  # phase 1
            run.log_epoch({"loss": loss})
        run.log_epoch({"loss": 0.5})  # phase 2
    (logged,) = _runs(isolated_mlflow)
    history = MlflowClient(isolated_mlflow).get_metric_history(logged.info.run_id, "epoch/loss")
    assert sorted((h.step, h.value) for h in history) == [(0, 0.7), (1, 0.6), (2, 0.5)]


def test_lr_training_path_never_imports_tensorflow() -> None:
    code = (
        "import sys, glomx.pipeline.train, glomx.models.logistic, glomx.tracking.pyfunc;"
        "sys.exit('tensorflow' in sys.modules or 'keras' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0
