"""Cross-validation folds: no held-out slide leaks into a fold's training data, trials run on
a real Ray cluster (started here with `ray start --head`) with nested MLflow runs, and a
failing trial fails the stage with its family and fold."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cv_layout import PRE, SITE_REGEX, TEST_CV, cv_layout, typed
from mlflow import MlflowClient

from glomx.crossval import CVError, Trial, fold_indices, fold_trials, inner_slides, run_trials
from glomx.data.split import read_split_csv, sites_of, slide_folds
from glomx.data.store import ArrayStore, StoreWriter
from glomx.family_params import CNNConfig, CNNSection, FitConfig, LRFit, LRModel, LRSection
from glomx.pipeline.train import train
from glomx.ray_session import RayAddressError, ray_session
from glomx.stage_main import user_message
from glomx.team_server.postgres import free_port
from glomx.tracking import EXPERIMENT, stage_run
from glomx.tracking.runs import RunRef

LR = LRSection(model=LRModel(size=8), fit=LRFit(epochs=2, seed=1), class_weight="balanced")
CNN = CNNSection(
    model=CNNConfig(size=16, filters=(4, 8)),
    fit=FitConfig(epochs=1, batch_size=16, jit_compile=False),
    class_weight="balanced",
)


def _original(name: str) -> str:
    return name.split("#", 1)[0]


def test_no_held_out_slide_reaches_training_in_original_or_augmented_form(
    tmp_path: Path,
) -> None:
    paths = cv_layout(tmp_path)
    training = ArrayStore(paths["balanced"])
    originals = ArrayStore(Path(paths["prepared"]) / "train")
    folds = slide_folds(read_split_csv(Path(paths["prepared"]) / "split.csv"))
    held_everywhere: list[str] = []
    for fold in sorted(set(folds.values())):
        inner = inner_slides(originals, folds, fold, TEST_CV, SITE_REGEX)
        train, val, held = fold_indices(training, originals, folds, fold, inner)
        held_slides = {s for s, k in folds.items() if k == fold}
        train_names = [training.names[i] for i in train]
        held_names = [originals.names[i] for i in held]
        assert any("#aug" in n for n in train_names)  # copies do train, of training slides only
        assert not {training.slides[i] for i in train} & (held_slides | inner)
        assert not {_original(n) for n in train_names} & set(held_names)
        assert {originals.slides[i] for i in val} == inner and not inner & held_slides
        assert all("#aug" not in originals.names[i] for i in [*val, *held])  # originals only
        assert {originals.slides[i] for i in held} == held_slides
        held_everywhere += held_names
    assert sorted(held_everywhere) == sorted(originals.names)  # each original scored once


def test_trials_over_hospitals_leave_each_hospital_out_whole(tmp_path: Path) -> None:
    """``bench/calibrate.py`` runs the pipeline's trials with the hospitals as folds: each trial
    must score one whole hospital and train and choose on the others only."""
    paths = cv_layout(tmp_path)
    training = ArrayStore(paths["balanced"])
    originals = ArrayStore(Path(paths["prepared"]) / "train")
    slides = sorted(set(originals.slides))
    sites = dict(zip(slides, sites_of(slides, SITE_REGEX), strict=True))
    index = {site: k for k, site in enumerate(sorted(set(sites.values())))}
    folds = {slide: index[site] for slide, site in sites.items()}
    parent = RunRef("sqlite:///unused.db", "0", "run", "bench-calibrate", "synthetic", {})
    trials = fold_trials("lr", LR, PRE, training, originals, folds, TEST_CV, SITE_REGEX, parent)
    assert [t.fold for t in trials] == [0, 1, 2]
    for trial in trials:
        train, val, held = fold_indices(training, originals, folds, trial.fold, set(trial.inner))
        site = next(s for s, k in index.items() if k == trial.fold)
        assert {sites[originals.slides[i]] for i in held} == {site}
        assert sum(sites[s] == site for s in originals.slides) == len(held)
        assert site not in {sites[training.slides[i]] for i in train}
        assert site not in {sites[originals.slides[i]] for i in val} and trial.inner


def test_a_row_without_a_fold_is_refused(tmp_path: Path) -> None:
    paths = cv_layout(tmp_path)
    src = ArrayStore(paths["balanced"])
    with StoreWriter(tmp_path / "smote", src.image_shape) as w:
        w.append(src.read([0, 1]), [1, 1], ["smote0", "a"], ["smote", src.slides[1]])
        smoted = w.close({"data_kind": "synthetic"})
    folds = slide_folds(read_split_csv(Path(paths["prepared"]) / "split.csv"))
    with pytest.raises(CVError, match=r"SMOTE .* use balance\.strategy none"):
        fold_indices(smoted, ArrayStore(Path(paths["prepared"]) / "train"), folds, 0, set())


def test_a_failing_trial_fails_the_stage_with_family_and_fold(tmp_path: Path) -> None:
    paths = cv_layout(tmp_path)
    originals = Path(paths["prepared"]) / "train"
    folds = slide_folds(read_split_csv(Path(paths["prepared"]) / "split.csv"))
    with stage_run("train@lr", {}, "synthetic") as run:
        trial = Trial("lr", 1, LR, PRE, str(tmp_path / "no-store"), str(originals), folds,
                      ("SAS_0",), run.ref(), TEST_CV.restyle, TEST_CV.seed)  # fmt: skip
        with pytest.raises(CVError) as err:
            run_trials([trial], TEST_CV)
    message = user_message("train@lr", err.value).splitlines()[0]
    assert re.fullmatch(r"train@lr failed: lr fold 1: .*no-store is not a finished array store.*",
                        message), message  # fmt: skip


@pytest.fixture
def ray_cluster() -> Iterator[str]:
    """A real one-node Ray cluster on 127.0.0.1 (`ray start --head --block`), stopped after
    the test by ending that command, so no other Ray instance on the machine is touched."""
    ray = Path(sys.executable).with_name("ray")
    port = free_port()
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay short
    head = subprocess.Popen(
        [str(ray), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
         f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
         "--disable-usage-stats", f"--temp-dir={temp}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    address = f"127.0.0.1:{port}"
    try:
        import ray as ray_module

        deadline = time.monotonic() + 90
        while True:
            try:
                ray_module.init(address=address, include_dashboard=False, log_to_driver=False)
                ray_module.shutdown()
                break
            except (ConnectionError, RuntimeError) as err:
                if head.poll() is not None or time.monotonic() > deadline:
                    out = head.stdout.read() if head.stdout else ""
                    pytest.fail(f"ray start --head did not come up: {err}\n{out[-3000:]}")
                time.sleep(1)
        yield address
    finally:
        os.killpg(head.pid, 15)
        head.wait(timeout=60)


@pytest.mark.slow  # a Ray cluster and two families trained: over a minute
def test_a_tiny_cv_of_two_families_on_a_ray_cluster_nests_its_trial_runs(
    ray_cluster: str, tmp_path: Path, isolated_mlflow: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAY_ADDRESS", ray_cluster)
    paths = cv_layout(tmp_path)
    for family, section in (("lr", LR), ("cnn", CNN)):
        report = train(
            f"train@{family}",
            family,
            section,
            typed(paths),
            TEST_CV,
            SITE_REGEX,
        ).report
        assert report["oof"]["images"] == 72 and len(report["folds"]) == 3

    client = MlflowClient(isolated_mlflow)
    exp = client.get_experiment_by_name(EXPERIMENT).experiment_id
    for family in ("lr", "cnn"):
        (stage,) = client.search_runs([exp], f"tags.`glomx.stage` = 'train@{family}' and "
                                      "attributes.run_name = 'train@" + family + "'")  # fmt: skip
        trials = client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{stage.info.run_id}'")
        assert sorted(t.info.run_name for t in trials) == [f"{family} fold {k}" for k in range(3)]
        for t in trials:
            assert t.info.status == "FINISHED" and t.data.tags["glomx.family"] == family
            held = set(t.data.tags["cv.heldout_slides"].split(","))
            assert held and not held & set(t.data.tags["cv.inner_val_slides"].split(","))
            assert 0 <= t.data.metrics["oof_balanced_accuracy"] <= 1
            assert t.data.tags["glomx.pid"] != stage.data.tags["glomx.pid"]  # a Ray worker


def test_an_unreachable_ray_address_is_one_clear_error_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ray itself retries a dead address for minutes; the stage and predict must not hang."""
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{free_port()}")
    unreachable = r"RAY_ADDRESS=127\.0\.0\.1:\d+ is unreachable"
    with pytest.raises(RayAddressError, match=unreachable), ray_session():
        pytest.fail("Ray must not start")
