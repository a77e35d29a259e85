"""The Classifier contract, checked on every family of ``glomx.models.FAMILIES`` alike.

As scikit-learn's ``parametrize_with_checks``: :data:`CHECKS` is a list of check functions,
each run on every family (test ids ``<family>-<check>``), on the tiny fits of
tests/family_zoo.py, so a new family gets every check by being in ``FAMILIES``. What only one
family does stays in that family's own test file.

A check is ``slow`` where it trains long: one that looks at the session's shared fit, for a
family whose fit takes minutes; one that fits anew, unless its fit takes instants.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

import keras
import numpy as np
import pytest
from family_zoo import CLASS_WEIGHT, Zoo, spec, write_store

from glomx.config import ParamsError
from glomx.data.store import StoreWriter
from glomx.errors import CorruptModelError
from glomx.models import FAMILIES, load_classifier, load_predictor
from glomx.models.base import META_FILE
from glomx.models.exported import ExportedModel, has_export
from glomx.models.mean import MeanModel
from glomx.models.onnx_export import export_mean

Check = Callable[[str, Zoo, Path], None]
VALIDATION_SCORES = ("val_loss", "val_auc", "val_balanced_accuracy")


def check_fit_returns_itself_and_reports_every_epoch(family: str, zoo: Zoo, _: Path) -> None:
    fitted = zoo.fitted(family)
    clf = fitted.classifier
    history, record = clf.history_, clf.record
    assert fitted.returned is clf
    assert set(VALIDATION_SCORES) <= set(history)
    assert all(len(scores) == record.epochs_run for scores in history.values())
    assert len(fitted.epochs) == record.epochs_run  # on_epoch: once per epoch, as it comes
    for key in VALIDATION_SCORES:
        assert [epoch[key] for epoch in fitted.epochs] == history[key], key
    assert 1 <= record.best_epoch <= record.epochs_run
    assert record.class_weight == {str(k): v for k, v in CLASS_WEIGHT.items()}


def check_predict_proba_takes_any_size_and_channels(family: str, zoo: Zoo, _: Path) -> None:
    clf = zoo.fitted(family).classifier
    rgba = np.random.default_rng(0).integers(0, 256, (5, 50, 50, 4), np.uint8)
    proba = clf.predict_proba(rgba)
    assert proba.shape == (5,) and proba.dtype == np.float32
    assert ((proba >= 0) & (proba <= 1)).all()
    assert clf.predict_proba(np.empty((0, 40, 40, 3), np.uint8)).shape == (0,)
    assert clf.predict_store(zoo.val, batch_size=5).shape == (len(zoo.val),)


def check_save_and_load_round_trip(family: str, zoo: Zoo, tmp_path: Path) -> None:
    clf = zoo.fitted(family).classifier
    clf.save(tmp_path / family)
    assert {p.name for p in (tmp_path / family).iterdir()} == {spec(family).weights_file, META_FILE}
    loaded = load_classifier(tmp_path / family)
    assert type(loaded) is type(clf) and loaded.meta == clf.meta
    images = zoo.val.read(slice(0, len(zoo.val)))
    atol = 0 if spec(family).exact else 1e-6
    np.testing.assert_allclose(loaded.predict_proba(images), clf.predict_proba(images), 0, atol)
    assert all(words in loaded.summary() for words in spec(family).summary_says)


def check_corrupt_weights_file_is_named_with_how_to_rebuild_it(
    family: str, zoo: Zoo, tmp_path: Path
) -> None:
    for damage in ("truncated", "garbage"):
        directory = tmp_path / damage
        zoo.fitted(family).classifier.save(directory)
        path = directory / spec(family).weights_file
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"<html>oops</html>")
        with pytest.raises(CorruptModelError) as err:
            load_classifier(directory)
        message = str(err.value)
        assert message.startswith(f"{path} exists but cannot be loaded"), damage
        assert "corrupt" in message and "File not found" not in message
        assert f"`dvc repro train@{family}`" in message and f"`dvc checkout {directory}`" in message


def check_bad_params_name_the_key(family: str, zoo: Zoo, _: Path) -> None:
    where = f"train_{family}"
    for part in ("model", "fit"):
        with pytest.raises(ParamsError, match=rf"{where}\.{part}\.nosuchkey is not a known key"):
            zoo.new(family, {part: {"nosuchkey": 3}})
    with pytest.raises(ParamsError, match=rf"{where}\.model\.size must be greater than or equal"):
        zoo.new(family, {"model": {"size": 0}})


def check_unfitted_use_and_unusable_stores_are_refused(
    family: str, zoo: Zoo, tmp_path: Path
) -> None:
    clf = zoo.new(family)
    with pytest.raises(RuntimeError, match="not fitted"):
        clf.predict_proba(zoo.val.read(slice(0, 1)))
    with StoreWriter(tmp_path / "empty", zoo.train.image_shape, zoo.train.params) as writer:
        empty = writer.close({"data_kind": "synthetic"})
    with pytest.raises(ValueError, match="empty has no images to train on"):
        clf.fit(empty, zoo.val)
    one_image = write_store(tmp_path / "one", zoo.val.read([0]), zoo.val.labels[:1])
    with pytest.raises(ValueError, match="needs both classes"):  # one image: one class
        clf.fit(zoo.train, one_image)


def check_same_seed_same_model(family: str, zoo: Zoo, _: Path) -> None:
    """The same params (seed included) give the same model whatever ran before."""
    first = zoo.fitted(family).classifier
    keras.random.normal((3,), seed=None)  # global random state advanced since the first fit
    np.random.default_rng().random()
    again = zoo.fit(family).classifier
    images = zoo.val.read(slice(0, len(zoo.val)))
    atol = 0 if spec(family).exact else 1e-5
    np.testing.assert_allclose(again.predict_proba(images), first.predict_proba(images), 0, atol)
    assert again.record == first.record


def check_its_bag_export_predicts_as_it_does(family: str, zoo: Zoo, tmp_path: Path) -> None:
    """A Keras family's bag is exported for ONNX Runtime (what predict and serving load) and
    gives its probabilities within float32 rounding; another family's is not exported."""
    clf = zoo.fitted(family).classifier
    bag = MeanModel.of(family, {"fold-0": clf}, clf.meta.preprocessing)
    bag.save(tmp_path / family)
    exported = export_mean(bag.members, bag.tags(), tmp_path / family)
    assert exported == (clf.native_flavor == "keras") == has_export(tmp_path / family)
    loaded = load_predictor(tmp_path / family)
    assert isinstance(loaded, ExportedModel) == exported
    rgba = np.random.default_rng(1).integers(0, 256, (4, 50, 50, 4), np.uint8)
    for images in (zoo.val.read(slice(0, len(zoo.val))), rgba):
        assert np.abs(loaded.predict_proba(images) - clf.predict_proba(images)).max() < 1e-5


Fits = Literal["no", "shared", "anew"]  # what a check trains: nothing, the zoo's fit, its own
CHECKS: list[tuple[Check, Fits]] = [
    (check_fit_returns_itself_and_reports_every_epoch, "shared"),
    (check_predict_proba_takes_any_size_and_channels, "shared"),
    (check_save_and_load_round_trip, "shared"),
    (check_corrupt_weights_file_is_named_with_how_to_rebuild_it, "shared"),
    (check_bad_params_name_the_key, "no"),
    (check_unfitted_use_and_unusable_stores_are_refused, "no"),
    (check_same_seed_same_model, "anew"),
    (check_its_bag_export_predicts_as_it_does, "shared"),
]


def is_slow(fits: Fits, fit_takes: str) -> bool:
    return (fits == "shared" and fit_takes == "minutes") or (
        fits == "anew" and fit_takes != "instants"
    )


def family_checks() -> Iterator[object]:
    """Every check on every family, marked ``slow`` where it trains long."""
    for family in FAMILIES:
        for check, fits in CHECKS:
            marks = [pytest.mark.slow] if is_slow(fits, spec(family).fit_takes) else []
            yield pytest.param(family, check, marks=marks, id=f"{family}-{check.__name__}")


@pytest.mark.parametrize(("family", "check"), family_checks())
def test_family(family: str, check: Check, zoo: Zoo, tmp_path: Path) -> None:
    check(family, zoo, tmp_path)
