"""A throwaway git copy of this working tree with tiny params and synthetic data, for the tests
that run the pipeline with DVC; the project's own outputs and MLflow store are never touched."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import bounded
import yaml

from glomx.data.synth import make_dataset
from glomx.models import FAMILIES

REPO = Path(__file__).resolve().parents[1]
OUTPUTS = ("artifacts/", "models/", "metrics/", "plots/", "reports/", "mlruns/", "dvc.lock")

TINY = {
    "prepare": {"image": {"size": 32}, "split": {"folds": 2}},  # 2 folds: a third fewer trials
    "augment": {"workers": 1},
    "train_lr": {"model": {"size": 16}, "fit": {"epochs": 2}},
    "train_cnn": {
        "model": {"size": 32, "filters": [8, 16]},
        "fit": {"epochs": 1, "batch_size": 16, "jit_compile": False},
    },
    "train_resnet": {
        "model": {"size": 32, "weights": "none", "finetune_epochs": 0},
        "fit": {"epochs": 1, "batch_size": 16},
    },
    "train_probe": {"model": {"size": 32}, "fit": {"C": [0.1], "batch_size": 16}, "stain": "none"},
    "train_mobilenet": {
        "model": {"size": 32, "finetune_epochs": 1},
        "fit": {"epochs": 1, "batch_size": 16},
        "stain": "none",
    },
    "evaluate": {"bootstrap": {"n_resamples": 50}, "gradcam_per_case": 1},
}


def merge(base: dict, override: dict) -> dict:
    """``override`` merged into ``base`` (nested dicts key by key); returns ``base``."""
    for key, value in override.items():
        base[key] = merge(base[key], value) if isinstance(value, dict) else value
    return base


def run(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 3000) -> str:
    """Run a command; fail the test with its output tail unless it succeeds within
    ``timeout`` s (the whole tiny pipeline: 24 min on 2 busy cores); stdout + stderr."""
    done = bounded.run(args, cwd=cwd, env=env, timeout=timeout)
    assert done.returncode == 0, (
        f"{' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    )
    return done.stdout + done.stderr


def _keep_families(root: Path, families: Sequence[str]) -> None:
    """Drop the other families' training stages (their lines in the ``families`` the train
    template expands), and their models from choose's and evaluate's deps."""
    spec = yaml.safe_load((root / "dvc.yaml").read_text())
    dropped = [f for f in FAMILIES if f not in families]
    (template,) = (v["families"] for v in spec["vars"] if isinstance(v, dict) and "families" in v)
    for family in dropped:
        del template[family]
    unwanted = {f"${{paths.models}}/{f}" for f in dropped}
    for stage in ("choose", "evaluate"):
        deps = spec["stages"][stage]["deps"]
        spec["stages"][stage]["deps"] = [d for d in deps if d not in unwanted]
    (root / "dvc.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))


def copy_env() -> dict[str, str]:
    """The environment to run commands in inside a copy: this Python's tools first, no
    MLFLOW_TRACKING_URI (the copy's own mlruns/)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def make_copy(
    root: Path,
    families: Sequence[str] = tuple(FAMILIES),
    overrides: dict | None = None,
    data: Path | None = None,
) -> dict[str, str]:
    """Copy the sources to ``root``, params merged with ``overrides`` (default :data:`TINY`),
    only ``families`` trained, ``data/`` a link to ``data`` (default: 90 synthetic patches
    written there); commit it all to a new git repository. Returns the environment to run
    commands in (this Python's tools first; no MLFLOW_TRACKING_URI: the copy's own mlruns/).
    bench/scale.py runs the pipeline at full size the same way."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.split()
    for name in files:
        if (REPO / name).is_file() and not name.startswith(OUTPUTS):
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, root / name)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params = merge(params, TINY if overrides is None else overrides)
    params["evaluate"]["families"] = list(families)
    params["choose"]["families"] = list(families)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    if set(families) != set(FAMILIES):
        _keep_families(root, families)
    if data is None:
        make_dataset(root / "data", 90, seed=5, size_range=(40, 80), n_slides=12, workers=1)
    else:  # ignored by git (/data), hashed by DVC through the link
        (root / "data").symlink_to(Path(data).resolve(), target_is_directory=True)
    env = copy_env()
    run(["git", "init", "-q"], root, env)
    for key, value in (("user.name", "t"), ("user.email", "t@t")):  # also for DVC's exp commits
        run(["git", "config", key, value], root, env)
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "copy"], root, env)
    return env
