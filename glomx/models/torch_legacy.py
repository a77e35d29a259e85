"""Read PyTorch's legacy (pre-1.6, non-zip) ``.pth`` state dicts into numpy, without torch.

The legacy format is a run of pickles followed by raw storage bytes:

1. the magic number ``0x1950a86a20f9469cfc6c``, 2. the protocol version (1001), 3. a dict of
system facts (endianness, type sizes), 4. the object itself, whose tensors refer to storages
through ``persistent_id`` tuples ``("storage", StorageType, key, location, numel, view)``,
5. the list of storage keys in the order their data follows, then for each key an int64
element count and that many elements, little-endian.

Only what a state dict needs is understood: ``OrderedDict``, ``torch._utils._rebuild_tensor_v2``
(and v1) over the plain numeric storage types. Anything else in the pickle (arbitrary classes,
functions) is refused, so reading a weights file never runs code from it.
"""

from __future__ import annotations

import collections
import pickle
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from glomx.errors import GlomxError

MAGIC = 0x1950A86A20F9469CFC6C
PROTOCOL = 1001
STORAGE_DTYPES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class TorchFileError(GlomxError, ValueError):
    """The file is not a legacy PyTorch state dict this reader understands."""


class _Storage:
    """A storage named in the pickle; its bytes are read after the pickle ends."""

    def __init__(self, dtype: type, numel: int) -> None:
        self.dtype = np.dtype(dtype)
        self.numel = numel
        self.data: np.ndarray | None = None


class _LazyTensor:
    """A strided view of a storage, materialised once the storage bytes are read."""

    def __init__(self, storage: _Storage, offset: int, size: tuple, stride: tuple) -> None:
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def materialise(self) -> np.ndarray:
        data = self.storage.data
        assert data is not None
        item = data.itemsize
        view = np.lib.stride_tricks.as_strided(
            data[self.offset :],
            shape=tuple(self.size),
            strides=tuple(s * item for s in self.stride),
            writeable=False,
        )
        return np.array(view)


def _rebuild_tensor(storage: _Storage, offset: int, size: tuple, stride: tuple, *_: Any):
    return _LazyTensor(storage, offset, size, stride)


class _StorageType:
    def __init__(self, name: str) -> None:
        self.name = name


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: BinaryIO, storages: dict[str, _Storage]) -> None:
        super().__init__(file, encoding="latin1")
        self.storages = storages

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        raise TorchFileError(f"unsupported object {module}.{name} in a weights file")

    def persistent_load(self, pid: Any) -> _Storage:
        kind, storage_type, key, _location, numel, view = pid
        if kind != "storage" or view is not None:
            raise TorchFileError(f"unsupported storage reference {pid[:3]!r}")
        if key not in self.storages:
            self.storages[key] = _Storage(STORAGE_DTYPES[storage_type.name], int(numel))
        return self.storages[key]


def _materialise(value: Any) -> Any:
    if isinstance(value, _LazyTensor):
        return value.materialise()
    if isinstance(value, dict):
        return collections.OrderedDict((k, _materialise(v)) for k, v in value.items())
    return value


def _read_storages(f: BinaryIO, keys: list[str], storages: dict[str, _Storage]) -> None:
    for key in keys:
        storage = storages[key]
        (numel,) = np.frombuffer(f.read(8), dtype="<i8")
        nbytes = int(numel) * storage.dtype.itemsize
        raw = f.read(nbytes)
        if numel != storage.numel or len(raw) != nbytes:
            raise TorchFileError(f"storage {key} is truncated or inconsistent")
        storage.data = np.frombuffer(raw, dtype=storage.dtype.newbyteorder("<"))


def load_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """The tensors of a legacy ``.pth`` file as ``{name: numpy array}``, in file order."""
    path = Path(path)
    storages: dict[str, _Storage] = {}
    try:
        with path.open("rb") as f:
            if pickle.load(f) != MAGIC or pickle.load(f) != PROTOCOL:
                raise TorchFileError("not a legacy PyTorch file (bad magic or protocol)")
            info = pickle.load(f)
            if not info.get("little_endian", True):
                raise TorchFileError("big-endian files are not supported")
            state = _Unpickler(f, storages).load()
            keys = pickle.load(f)
            _read_storages(f, keys, storages)
    except TorchFileError as error:
        raise TorchFileError(f"{path}: {error}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, KeyError, TypeError) as error:
        raise TorchFileError(
            f"{path}: not a readable legacy PyTorch state dict ({error})"
        ) from None
    if not isinstance(state, dict):
        raise TorchFileError(f"{path}: holds a {type(state).__name__}, not a state dict")
    return _materialise(state)
