"""A bag's inference export (ONNX Runtime) against its Keras fold models: the same
probabilities, a frozen backbone the folds share computed once, a round trip through pickle
and save, and a clear error for a corrupt export."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from family_zoo import PREPROCESSING, Zoo, blob_images

from glomx.errors import CorruptModelError
from glomx.models import load_classifier, load_predictor
from glomx.models.base import Classifier
from glomx.models.exported import CHUNK, EXPORT_FILE, SPEC_FILE, ExportedModel, ExportSpec
from glomx.models.keras_common import KerasClassifier
from glomx.models.mean import MeanModel
from glomx.models.onnx_export import _converted_apart, export_mean, network

TOLERANCE = 1e-5  # float32 rounding of two runtimes; the bar is 1e-4
MACENKO = {  # a fitted Macenko normaliser's dict, as a mobilenet fold of `make run` saved it
    "method": "macenko",
    "target": {
        "stain_vectors": [[0.6101, 0.6994, 0.3722], [0.2521, 0.8963, 0.3647]],
        "max_concentrations": [1.6265, 1.2504],
    },
}


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    """Prepared-size images of both classes, one of them nearly flat (white), where a
    per-image standardisation is most sensitive to how its sums are added."""
    labels = np.arange(10) % 2
    tiles = blob_images(labels.astype(np.uint8), PREPROCESSING.size, seed=5)
    tiles[0] = 250
    tiles[0, 10:12, 10:12] = 240
    return tiles


def _bag(folds: dict[str, Classifier], directory: Path) -> MeanModel:
    """``folds`` saved as a bag in ``directory``, with its export."""
    bag = MeanModel.of(next(iter(folds.values())).family, folds, PREPROCESSING)
    bag.save(directory)
    assert export_mean(bag.members, bag.tags(), directory)
    return bag


@pytest.fixture(scope="module")
def cnn_bag(zoo: Zoo, tmp_path_factory: pytest.TempPathFactory) -> tuple[MeanModel, Path]:
    """Two CNN folds of different weights, one with a fitted Macenko stain normaliser."""
    first = zoo.fitted("cnn").classifier
    second = zoo.new("cnn", {"model": {"size": 32, "filters": [8, 16]}, "fit": {"seed": 7}})
    second.fit(zoo.train, zoo.val)
    second.record.stain = MACENKO  # the blobs show no tissue to fit one on
    directory = tmp_path_factory.mktemp("cnn") / "bag"
    return _bag({"fold-0": first, "fold-1": second}, directory), directory


def test_a_bags_export_predicts_as_its_keras_folds(
    cnn_bag: tuple[MeanModel, Path], images: np.ndarray
) -> None:
    bag, directory = cnn_bag
    exported = load_predictor(directory)
    assert isinstance(exported, ExportedModel)
    native = bag.predict_proba(images)
    assert np.abs(exported.predict_proba(images) - native).max() < TOLERANCE
    many = np.concatenate([images] * 4)  # more than one chunk: run side by side, kept in order
    assert len(many) > CHUNK
    assert np.abs(exported.predict_proba(many) - np.tile(native, 4)).max() < TOLERANCE
    assert exported.tags() == bag.tags() and exported.meta == bag.meta
    spec = ExportSpec.read(directory)
    assert spec.networks == ["fold-0", "fold-1"]
    assert [i.stain is None for i in spec.inputs] == [True, False]  # one input per stain
    assert exported.predict_proba(images[:0]).shape == (0,)
    assert "mean of 2 networks" in exported.summary()


def test_a_mean_of_exported_bags_loads_as_their_mean(
    cnn_bag: tuple[MeanModel, Path], images: np.ndarray, tmp_path: Path
) -> None:
    bag, directory = cnn_bag
    shutil.copytree(directory, tmp_path / "ensemble" / "cnn")
    shutil.copytree(directory, tmp_path / "ensemble" / "cnn2")
    MeanModel.of("ensemble", {"cnn": bag, "cnn2": bag}, PREPROCESSING).save_meta(
        tmp_path / "ensemble"
    )
    loaded = load_predictor(tmp_path / "ensemble")
    assert isinstance(loaded, MeanModel)
    assert all(isinstance(m, ExportedModel) for m in loaded.members.values())
    native = load_classifier(tmp_path / "ensemble").predict_proba(images)
    assert np.abs(loaded.predict_proba(images) - native).max() < TOLERANCE


def test_folds_sharing_a_frozen_backbone_store_and_compute_it_once(
    zoo: Zoo, images: np.ndarray, tmp_path: Path
) -> None:
    first = zoo.fitted("probe").classifier
    second = zoo.new("probe", {"model": {"size": 32}, "fit": {"C": [1.0], "batch_size": 8}})
    second.fit(zoo.train, zoo.val)
    bag = _bag({"fold-0": first, "fold-1": second}, tmp_path / "probe")
    assert isinstance(first, KerasClassifier)
    one = network(first)
    joined = onnx.load(str(tmp_path / "probe" / EXPORT_FILE))
    assert len(joined.graph.node) < 1.2 * len(one.graph.node)  # not 2×: the backbone once
    weights = sum(i.ByteSize() for i in joined.graph.initializer)
    assert weights < 1.2 * sum(i.ByteSize() for i in one.graph.initializer)
    exported = load_predictor(tmp_path / "probe")
    assert np.abs(exported.predict_proba(images) - bag.predict_proba(images)).max() < TOLERANCE


def test_an_export_round_trips_through_pickle_and_save(
    cnn_bag: tuple[MeanModel, Path], images: np.ndarray, tmp_path: Path
) -> None:
    _, directory = cnn_bag
    exported = load_predictor(directory)
    expected = exported.predict_proba(images)
    # a Ray actor gets the graph's bytes, not a path it may not see
    copy = pickle.loads(pickle.dumps(exported))
    np.testing.assert_array_equal(copy.predict_proba(images), expected)
    exported.set_threshold(0.3).save(tmp_path / "saved")
    again = load_predictor(tmp_path / "saved")
    assert again.meta.threshold == 0.3
    np.testing.assert_array_equal(again.predict_proba(images), expected)
    native = load_classifier(tmp_path / "saved")  # the native files came along
    assert native.meta.threshold == 0.3
    assert np.abs(native.predict_proba(images) - expected).max() < TOLERANCE


def test_a_corrupt_export_names_its_file(cnn_bag: tuple[MeanModel, Path], tmp_path: Path) -> None:
    _, directory = cnn_bag
    shutil.copytree(directory, tmp_path / "bag")
    (tmp_path / "bag" / EXPORT_FILE).write_bytes(b"not a graph")
    with pytest.raises(CorruptModelError, match=r"inference\.onnx exists but cannot be loaded"):
        load_predictor(tmp_path / "bag")


def test_a_bag_of_non_keras_models_has_no_export(zoo: Zoo, tmp_path: Path) -> None:
    lr = zoo.fitted("lr").classifier
    bag = MeanModel.of("lr", {"fold-0": lr}, PREPROCESSING)
    bag.save(tmp_path / "lr")
    assert not export_mean(bag.members, bag.tags(), tmp_path / "lr")
    assert not (tmp_path / "lr" / EXPORT_FILE).exists()
    assert not (tmp_path / "lr" / SPEC_FILE).exists()
    assert isinstance(load_predictor(tmp_path / "lr"), MeanModel)  # natively, as before


def test_a_fold_that_cannot_be_converted_names_its_folder(tmp_path: Path) -> None:
    """Each fold is converted by a process of its own: its failure comes back with the folder
    and the process's own error, not as a bare exit status."""
    (tmp_path / "fold-0").mkdir()
    with pytest.raises(RuntimeError, match=r"(?s)fold-0 to ONNX failed .*fold-0 is not a saved"):
        _converted_apart(tmp_path / "fold-0")
