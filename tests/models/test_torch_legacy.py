"""The torch-free reader of legacy ``.pth`` state dicts, on the real MobileNetV2 file."""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from glomx.models.backbones import MOBILENET_V2, weights_file
from glomx.models.torch_legacy import MAGIC, PROTOCOL, TorchFileError, load_state_dict


def test_mobilenet_file_reads_to_known_values() -> None:
    state = load_state_dict(weights_file(MOBILENET_V2))
    assert len(state) == 314
    conv = state["features.0.0.weight"]
    assert conv.shape == (32, 3, 3, 3) and conv.dtype == np.float32
    np.testing.assert_allclose(conv.ravel()[:3], [0.01318534, -0.00432129, 0.01482314], rtol=1e-5)
    np.testing.assert_allclose(
        state["features.1.conv.0.1.running_var"][1:3], [0.03315240, 0.02959199], rtol=1e-5
    )
    assert state["features.0.1.num_batches_tracked"].dtype == np.int64
    assert int(state["features.0.1.num_batches_tracked"]) == 1431430
    assert state["classifier.1.weight"].shape == (1000, 1280)


def test_truncated_file_is_refused(tmp_path: Path) -> None:
    data = weights_file(MOBILENET_V2).read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(data[: len(data) - 1000])
    with pytest.raises(TorchFileError, match=r"cut\.pth.*truncated"):
        load_state_dict(cut)


def test_not_a_torch_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.pth"
    path.write_bytes(b"PK\x03\x04 a zip file, the newer torch format")
    with pytest.raises(TorchFileError, match=r"x\.pth"):
        load_state_dict(path)


class _Exploit:
    def __reduce__(self) -> tuple:
        return (os.system, ("echo pwned",))


def test_code_in_the_pickle_is_never_run(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    for header in (MAGIC, PROTOCOL, {"little_endian": True}):
        pickle.dump(header, buffer, protocol=2)
    pickle.dump({"weight": _Exploit()}, buffer, protocol=2)
    path = tmp_path / "evil.pth"
    path.write_bytes(buffer.getvalue())
    with pytest.raises(TorchFileError, match=r"unsupported object .*system"):
        load_state_dict(path)
