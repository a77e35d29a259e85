"""bench/champion.py's own logic: which rows it measures, the native copy, its arithmetic."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import champion  # a bench script, beside its sibling modules

from glomx.data.images import Preprocessing
from glomx.models.base import ModelMeta


def _model(folder: Path, export: bool = False) -> None:
    folder.mkdir(parents=True)
    meta = ModelMeta("ensemble", 256, 3, Preprocessing(256, 3, "pad", "white"))
    meta.save(folder, {"members": ["cnn", "probe"]})
    (folder / "model.keras").write_bytes(b"weights")
    if export:
        for name in champion.EXPORT_FILES:
            (folder / name).write_bytes(b"export")


def _ensemble(root: Path, exported_folds: bool) -> Path:
    """An ensemble of cnn and probe bags of two folds, cnn's folds exported when asked."""
    ensemble = root / "ensemble"
    _model(ensemble)
    for member in ("cnn", "probe"):
        _model(ensemble / member)
        for k in range(2):
            _model(ensemble / member / f"fold-{k}", exported_folds and member == "cnn")
    return ensemble


def test_the_native_copy_lacks_every_export_and_keeps_the_rest(tmp_path: Path) -> None:
    ensemble = _ensemble(tmp_path, exported_folds=True)
    native = champion.without_exports(ensemble, tmp_path / "native")
    kept = sorted(p.relative_to(native) for p in native.rglob("*") if p.is_file())
    expected = sorted(
        p.relative_to(ensemble)
        for p in ensemble.rglob("*")
        if p.is_file() and p.name not in champion.EXPORT_FILES
    )
    assert kept == expected
    assert champion.has_export(ensemble) and not champion.has_export(native)
    (ensemble / "glomx.json").write_text("{}")  # a rerun copies afresh
    assert champion.without_exports(ensemble, native) == native
    assert (native / "glomx.json").read_text() == "{}"


def test_rows_are_both_ways_only_where_an_export_is(tmp_path: Path) -> None:
    ensemble = _ensemble(tmp_path, exported_folds=True)
    native = tmp_path / "native"
    registry = champion.Target("champion", "registry", "models:/glomx@champion")
    rows = champion.targets(ensemble, native, registry)
    assert [(t.name, t.loads, t.model) for t in rows] == [
        (champion.DECODING, "no model", None),
        ("champion", "exported", str(ensemble)),
        ("champion", "native", str(native)),
        ("cnn bag", "exported", str(ensemble / "cnn")),
        ("cnn bag", "native", str(native / "cnn")),
        ("probe bag", "native", str(native / "probe")),
        ("cnn/fold-0 model", "exported", str(ensemble / "cnn/fold-0")),
        ("cnn/fold-0 model", "native", str(native / "cnn/fold-0")),
        ("champion", "registry", "models:/glomx@champion"),
    ]


def test_without_an_export_the_exported_row_says_so(tmp_path: Path) -> None:
    ensemble = _ensemble(tmp_path, exported_folds=False)
    rows = champion.targets(ensemble, ensemble, champion.Target("champion", "registry"))
    skipped = [t for t in rows if t.skipped]
    assert [(t.name, t.loads) for t in skipped] == [("champion", "exported")]
    assert "no export yet" in skipped[0].skipped
    assert all(t.loads != "exported" for t in rows if not t.skipped)


def test_without_a_registry_its_row_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    row = champion.registered(_ensemble(tmp_path, exported_folds=False))
    assert row.model is None and row.skipped.startswith("no MLflow registry at")
    assert not (tmp_path / "mlruns").exists()  # none created


@pytest.mark.parametrize(
    ("n", "one_s", "all_s", "expected"),
    [(201, 30.0, 80.0, 4.0), (2, 1.0, 1.5, 2.0), (20, 5.0, 5.0, None), (20, 5.0, 4.0, None)],
)
def test_throughput_leaves_the_first_image_and_loading_out(
    n: int, one_s: float, all_s: float, expected: float | None
) -> None:
    assert champion.throughput(n, one_s, all_s) == expected


def test_ratios_to_decoding_and_to_the_native_champion() -> None:
    def measured(name: str, loads: str, cold: float, ips: float, rss: float) -> dict:
        figures = {"cold_start_s": cold, "images_per_s": ips, "peak_rss_mib": rss}
        return {"name": name, "loads": loads, "skipped": "", "note": "", **figures}

    rows = [
        measured(champion.DECODING, "no model", 1.0, 20.0, 100.0),
        measured("champion", "exported", 5.0, 10.0, 500.0),
        measured("champion", "native", 25.0, 4.0, 2000.0),
        measured("cnn bag", "native", 10.0, 16.0, 1000.0),
        {"name": "champion", "loads": "registry", "skipped": "no MLflow registry at x", "note": ""},
    ]
    champion.compare(rows)
    assert rows[1]["vs_decoding"] == {"cold_start_x": 5.0, "images_per_s_x": 0.5, "peak_rss_x": 5.0}
    assert rows[1]["vs_native_champion"] == {
        "cold_start_speed_up": 5.0,
        "images_per_s_speed_up": 2.5,
    }
    assert "vs_native_champion" not in rows[3] and "vs_decoding" not in rows[4]
    lines = champion.table(rows)
    assert (
        "| champion | exported | 5.0 | 10.0 | 500 | 5.0× | 0.50× | 5.0× | 5.0×, 2.5× |"
        in (lines[3])
    )
    assert lines[-1].endswith("| no MLflow registry at x |")
