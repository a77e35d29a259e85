"""Balancing the training store: every strategy's promised counts, SMOTE geometry, weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.utils.class_weight import compute_class_weight

from glomx.config import Balance, ParamsError, parse
from glomx.data.classes import MissingClassError
from glomx.data.store import ArrayStore, StoreWriter
from glomx.pipeline.balance import CLASS_WEIGHTS, balance, smote_chunks

LABELS = [0, 1, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 1]  # 10 : 4


@pytest.fixture
def src(tmp_path: Path) -> ArrayStore:
    images = np.random.default_rng(0).integers(0, 256, (len(LABELS), 16, 16, 3), dtype=np.uint8)
    names = [f"img{i}.png" for i in range(len(LABELS))]
    with StoreWriter(tmp_path / "augmented", (16, 16, 3), {"image": {"size": 16}}) as w:
        w.append(images, LABELS, names, [f"slide{i % 4}" for i in range(len(LABELS))])
        return w.close({"data_kind": "synthetic"})


def params(strategy: str, smote_chunk: int = 128, k: int = 2) -> Balance:
    raw = {
        "strategy": strategy,
        "seed": 1,
        "chunk_size": 4,
        "smote": {"k_neighbors": k, "chunk_size": smote_chunk},
    }
    return parse(Balance, raw, "balance")


def all_images(store: ArrayStore) -> np.ndarray:
    return store.read(slice(0, len(store)))


def source_rows(src: ArrayStore, out: ArrayStore) -> list[int]:
    """The source row each output row copies, by name (``#dup<k>`` stripped)."""
    return [src.names.index(n.split("#dup")[0]) for n in out.names]


def test_none_keeps_the_store_unchanged(src: ArrayStore, tmp_path: Path) -> None:
    summary = balance(src, tmp_path / "out", params("none"))
    out = ArrayStore(tmp_path / "out")
    assert summary["before"] == summary["after"] == {"0": 10, "1": 4}
    assert out.names == src.names and np.array_equal(all_images(out), all_images(src))
    assert out.manifest["data_kind"] == "synthetic"


def test_oversample_repeats_rows_up_to_the_majority(src: ArrayStore, tmp_path: Path) -> None:
    summary = balance(src, tmp_path / "out", params("oversample"))
    out = ArrayStore(tmp_path / "out")
    assert summary["after"] == {"0": 10, "1": 10}
    assert out.names[: len(src)] == src.names
    assert sum("#dup" in n for n in out.names) == 6 and len(set(out.names)) == len(out)
    rows = source_rows(src, out)
    assert np.array_equal(all_images(out), src.read(rows))
    assert np.array_equal(out.labels, src.labels[rows])


def test_undersample_keeps_a_subset_down_to_the_minority(src: ArrayStore, tmp_path: Path) -> None:
    summary = balance(src, tmp_path / "out", params("undersample"))
    out = ArrayStore(tmp_path / "out")
    assert summary["after"] == {"0": 4, "1": 4}
    rows = source_rows(src, out)
    assert rows == sorted(set(rows))
    assert np.array_equal(all_images(out), src.read(rows))


@pytest.mark.parametrize(("smote_chunk", "k"), [(128, 2), (7, 1)])  # exact SMOTE; two chunks
def test_smote_adds_minority_images_between_existing_ones(
    src: ArrayStore, tmp_path: Path, smote_chunk: int, k: int
) -> None:
    summary = balance(src, tmp_path / "out", params("smote", smote_chunk, k))
    out = ArrayStore(tmp_path / "out")
    assert summary["after"] == {"0": 10, "1": 10}
    assert out.names[: len(src)] == src.names
    minority = all_images(src)[src.labels == 1].reshape(4, -1).astype(float)
    for new in all_images(out)[len(src) :].reshape(6, -1).astype(float):
        fits = []
        for i, a in enumerate(minority):
            for b in np.delete(minority, i, axis=0):
                lam = np.clip((new - a) @ (b - a) / ((b - a) @ (b - a)), 0, 1)
                fits.append(np.abs(a + lam * (b - a) - new).max())
        assert min(fits) <= 1.0  # on a segment, up to uint8 rounding and the fitted step


def test_smote_chunks_are_stratified_partitions() -> None:
    labels = np.array([0] * 30 + [1] * 10)
    chunks = smote_chunks(labels, chunk_size=10, k_neighbors=1, seed=0)
    assert len(chunks) == 4
    assert sorted(np.concatenate(chunks).tolist()) == list(range(40))
    assert all(
        np.count_nonzero(labels[c] == 1) == 2 or np.count_nonzero(labels[c] == 1) == 3
        for c in chunks
    )
    few = smote_chunks(labels, chunk_size=10, k_neighbors=4, seed=0)
    assert len(few) == 2  # each chunk needs k + 1 = 5 minority images


@pytest.mark.parametrize("strategy", ["none", "oversample", "undersample", "smote"])
def test_class_weights_are_sklearn_balanced_weights(
    src: ArrayStore, tmp_path: Path, strategy: str
) -> None:
    summary = balance(src, tmp_path / "out", params(strategy))
    labels = ArrayStore(tmp_path / "out").labels
    expected = compute_class_weight("balanced", classes=np.array([0, 1]), y=labels)
    written = json.loads((tmp_path / "out" / CLASS_WEIGHTS).read_text())
    assert written == summary["class_weights"]
    assert [written["0"], written["1"]] == pytest.approx(expected.tolist())
    if strategy == "none":
        assert written == pytest.approx({"0": 14 / 20, "1": 14 / 8})


def test_unknown_strategy_and_missing_class_are_refused(src: ArrayStore, tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match=r"balance\.strategy must be 'none', .*got 'adasyn'"):
        params("adasyn")
    with StoreWriter(tmp_path / "one", (16, 16, 3)) as w:
        w.append(np.zeros((3, 16, 16, 3), np.uint8), [0, 0, 0], ["a", "b", "c"], ["s"] * 3)
        one = w.close()
    with pytest.raises(MissingClassError, match=r"class\(es\) \[1\] have no images"):
        balance(one, tmp_path / "out", params("oversample"))
