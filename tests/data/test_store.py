"""The array store: chunked writes, streamed reads, and refusal of unfinished stores."""

from pathlib import Path

import numpy as np
import pytest

from glomx.data.store import ArrayStore, StoreError, StoreWriter


def _images(n: int, start: int = 0) -> np.ndarray:
    values = np.arange(start, start + n, dtype=np.uint8)
    return np.broadcast_to(values[:, None, None, None], (n, 4, 5, 3)).copy()


def _write(path: Path, chunks: list[int]) -> ArrayStore:
    start = 0
    with StoreWriter(path, (4, 5, 3), params={"image": {"size": 4}}, source_hash="abc") as w:
        for n in chunks:
            names = [f"s{i % 3}-{i}.png" for i in range(start, start + n)]
            w.append(
                _images(n, start),
                [i % 2 for i in range(start, start + n)],
                names,
                [f"s{i % 3}" for i in range(start, start + n)],
            )
            start += n
    return ArrayStore(path)


def test_roundtrip_is_a_standard_npy_file(tmp_path: Path) -> None:
    store = _write(tmp_path / "s", [4, 3, 5])
    on_disk = np.load(tmp_path / "s" / "images.npy")
    assert on_disk.shape == (12, 4, 5, 3)
    assert (on_disk[:, 0, 0, 0] == np.arange(12)).all()
    assert len(store) == 12 and store.image_shape == (4, 5, 3)
    assert store.manifest["class_counts"] == {"0": 6, "1": 6}
    assert store.manifest["slides"] == 3 and store.params == {"image": {"size": 4}}
    assert store.rows()[5].name == "s2-5.png" and store.rows()[5].label == 1


def test_reads_by_slice_indices_and_chunks(tmp_path: Path) -> None:
    store = _write(tmp_path / "s", [7, 5])
    assert (store.read(slice(3, 6))[:, 0, 0, 0] == [3, 4, 5]).all()
    assert (store.read([9, 0, 9, 2])[:, 1, 1, 1] == [9, 0, 9, 2]).all()
    chunks = list(store.iter_chunks(5))
    assert [start for start, _ in chunks] == [0, 5, 10]
    assert (np.concatenate([c for _, c in chunks]) == store.read(slice(0, 12))).all()


def test_wrong_chunk_shape_is_refused(tmp_path: Path) -> None:
    with StoreWriter(tmp_path / "s", (4, 5, 3)) as w, pytest.raises(StoreError, match="does not"):
        w.append(np.zeros((2, 5, 5, 3), np.uint8), [0, 1], ["a", "b"], ["s", "s"])


def test_interrupted_writer_leaves_no_readable_store(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"), StoreWriter(tmp_path / "s", (4, 5, 3)) as w:
        w.append(_images(2), [0, 1], ["a", "b"], ["s", "s"])
        raise RuntimeError("boom")
    with pytest.raises(StoreError, match="not a finished array store"):
        ArrayStore(tmp_path / "s")
    assert list(tmp_path.iterdir()) == []  # nothing half-written beside it either


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_interrupted_rewrite_keeps_the_previous_store_whole(tmp_path: Path) -> None:
    _write(tmp_path / "s", [3, 2])
    before = _tree(tmp_path)
    with pytest.raises(RuntimeError, match="boom"), StoreWriter(tmp_path / "s", (4, 5, 3)) as w:
        w.append(_images(7), [0] * 7, list("abcdefg"), ["s"] * 7)
        assert (tmp_path / "s" / "manifest.json").is_file()  # the old store, readable meanwhile
        raise RuntimeError("boom")
    assert _tree(tmp_path) == before and len(ArrayStore(tmp_path / "s")) == 5


def test_rewrite_replaces_the_whole_folder(tmp_path: Path) -> None:
    _write(tmp_path / "s", [3, 2])
    (tmp_path / "s" / "stray.txt").write_text("from an older writer")
    assert len(_write(tmp_path / "s", [4])) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]
    assert not (tmp_path / "s" / "stray.txt").exists()


def test_truncated_images_file_is_detected(tmp_path: Path) -> None:
    _write(tmp_path / "s", [6])
    images = tmp_path / "s" / "images.npy"
    images.write_bytes(images.read_bytes()[:-10])
    with pytest.raises(StoreError, match="inconsistent"):
        ArrayStore(tmp_path / "s")
