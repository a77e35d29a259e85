"""Augmentation of the training store: determinism, exactness of each op, targets, DVC wiring."""

from __future__ import annotations

import runpy
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml
from skimage.color import hed2rgb

from glomx.config import Augment, AugmentOps, AugmentTarget, ParamsError
from glomx.data.store import ArrayStore, StoreWriter
from glomx.pipeline.augment import (
    AugmentError,
    augment,
    augment_image,
    copies_per_image,
    dihedral,
    grid_figure,
    parse_ops,
    stain_jitter,
)

REPO = Path(__file__).resolve().parents[2]
LABELS = [0, 0, 1, 0, 0, 1, 0, 0, 1, 0, 0, 1]  # 8 : 4
ALL_ON = {
    "dihedral": {"enabled": True},
    "rotate": {"enabled": True, "degrees": 15},
    "shear": {"enabled": True, "degrees": 5},
    "zoom": {"enabled": True, "factor": 0.1},
    "brightness": {"enabled": True, "delta": 0.05},
    "contrast": {"enabled": True, "factor": 0.1},
    "stain": {"enabled": True, "scale": 0.05, "shift": 0.005},
}


def tissue(rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """A smooth H&E-like uint8 RGB image made from positive stain concentrations."""
    coarse = rng.uniform(0.0, 0.08, (size // 4, size // 4, 3))
    hed = np.kron(coarse, np.ones((4, 4, 1))) + rng.uniform(0, 0.01, (size, size, 3))
    return np.rint(hed2rgb(hed) * 255).astype(np.uint8)


def make_store(path: Path, labels: list[int] = LABELS, channels: int = 3) -> ArrayStore:
    rng = np.random.default_rng(7)
    images = np.stack([tissue(rng) for _ in labels])
    if channels == 4:
        images = np.concatenate([images, np.full((*images.shape[:3], 1), 255, np.uint8)], -1)
    with StoreWriter(path, images.shape[1:], {"image": {"size": 32}}, "abc") as w:
        w.append(
            images,
            labels,
            [f"s{i % 3}-{i}.png" for i in range(len(labels))],
            [f"s{i % 3}" for i in range(len(labels))],
        )
        return w.close({"data_kind": "synthetic"})


def params(**changes: object) -> Augment:
    base = {
        "seed": 3,
        "target": {"mode": "multiplier", "per_class": {0: 1.5, 1: 2.5}},
        "ops": ALL_ON,
        "chunk_size": 5,
        "workers": 1,
        "grid": {"per_class": 2, "copies": 2},
    }
    return Augment.model_validate({**base, **changes})


def only(op: str, enabled: bool = True) -> dict:
    """Every op of :data:`ALL_ON`, all off but ``op``."""
    return {name: {**spec, "enabled": enabled and name == op} for name, spec in ALL_ON.items()}


@pytest.fixture
def src(tmp_path: Path) -> ArrayStore:
    return make_store(tmp_path / "train")


def test_same_seed_same_output_whatever_the_chunking(src: ArrayStore, tmp_path: Path) -> None:
    a = augment(src, tmp_path / "a", params(chunk_size=5, workers=1))
    b = augment(src, tmp_path / "b", params(chunk_size=12, workers=2))
    c = augment(src, tmp_path / "c", params(seed=4))
    assert np.array_equal(a.read(slice(0, len(a))), b.read(slice(0, len(b))))
    assert a.names == b.names and a.slides == b.slides
    assert not np.array_equal(a.read(slice(0, len(a))), c.read(slice(0, len(c))))


def test_output_keeps_originals_and_names_copies(src: ArrayStore, tmp_path: Path) -> None:
    out = augment(src, tmp_path / "aug", params())
    originals = [i for i, n in enumerate(out.names) if "#aug" not in n]
    assert [out.names[i] for i in originals] == src.names
    assert np.array_equal(out.read(originals), src.read(slice(0, len(src))))
    for i, name in enumerate(out.names):
        j = src.names.index(name.split("#aug")[0])
        assert (out.labels[i], out.slides[i]) == (src.labels[j], src.slides[j])
    assert out.manifest["data_kind"] == "synthetic"
    assert out.params["image"] == src.params["image"]


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ({"mode": "multiplier", "per_class": {0: 1.5, 1: 2.5}}, {"0": 12, "1": 10}),
        ({"mode": "count", "per_class": {"0": 21, "1": 9}}, {"0": 21, "1": 9}),
    ],
)
def test_target_counts_are_met_using_originals_evenly(
    src: ArrayStore, tmp_path: Path, target: dict, expected: dict
) -> None:
    out = augment(src, tmp_path / "aug", params(target=target))
    assert out.manifest["class_counts"] == expected
    copies = copies_per_image(src.labels, AugmentTarget.model_validate(target), seed=3)
    for label in (0, 1):
        per_original = copies[src.labels == label]
        assert per_original.max() - per_original.min() <= 1


def test_target_below_originals_is_refused() -> None:
    with pytest.raises(AugmentError, match="only adds images"):
        copies_per_image(
            np.array(LABELS, np.uint8), AugmentTarget(mode="count", per_class={0: 5, 1: 9}), 0
        )
    with pytest.raises(AugmentError, match="no entry for class 1"):
        target = AugmentTarget(mode="multiplier", per_class={0: 2})
        copies_per_image(np.array(LABELS, np.uint8), target, 0)


def test_dihedral_transforms_are_eight_distinct_exact_pixel_permutations() -> None:
    img = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3)
    outs = [dihedral(img, k) for k in range(8)]
    for out in outs:
        pixels = sorted(map(tuple, out.reshape(-1, 3)))
        assert pixels == sorted(map(tuple, img.reshape(-1, 3)))
    assert len({out.tobytes() for out in outs}) == 8
    assert np.array_equal(outs[0], img)


def test_hed_jitter_with_zero_strength_is_identity() -> None:
    rgb = np.random.default_rng(0).uniform(0, 1, (16, 16, 3))  # includes out-of-gamut colours
    assert np.allclose(stain_jitter(rgb, np.ones(3), np.zeros(3)), rgb, atol=1e-9)
    zero = {"stain": {"scale": 0.0, "shift": 0.0}}
    img = tissue(np.random.default_rng(1))
    assert np.array_equal(augment_image(img, zero, np.random.default_rng(2)), img)


@pytest.mark.parametrize("op", list(AugmentOps.model_fields))
def test_each_op_changes_pixels_when_on_and_not_when_off(op: str) -> None:
    img = tissue(np.random.default_rng(5))
    on = parse_ops(only(op))
    off = parse_ops(only(op, enabled=False))
    assert list(on) == [op]
    assert off == {}
    assert not np.array_equal(augment_image(img, on, np.random.default_rng(9)), img)
    assert np.array_equal(augment_image(img, off, np.random.default_rng(9)), img)


def test_rgba_alpha_stays_opaque(tmp_path: Path) -> None:
    src = make_store(tmp_path / "rgba", channels=4)
    out = augment(src, tmp_path / "aug", params())
    images = out.read(slice(0, len(out)))
    assert images.shape[-1] == 4 and (images[..., 3] == 255).all()


def test_bad_ops_are_refused_with_the_params_key() -> None:
    with pytest.raises(ParamsError, match=r"augment.ops.blur is not a known key; valid: dihedral"):
        parse_ops({**ALL_ON, "blur": {"enabled": True}})
    with pytest.raises(ParamsError, match=r"augment.ops.rotate.degrees is missing"):
        parse_ops({**ALL_ON, "rotate": {"enabled": True}})
    with pytest.raises(ParamsError, match=r"augment.ops.zoom.factor must be greater than or equal"):
        parse_ops({**ALL_ON, "zoom": {"enabled": True, "factor": -0.1}})


def test_grid_shows_originals_next_to_copies(src: ArrayStore, tmp_path: Path) -> None:
    target = {"mode": "multiplier", "per_class": {0: 3, 1: 3}}
    out = augment(src, tmp_path / "aug", params(target=target))
    fig = grid_figure(out, per_class=2, copies=2)
    assert len(fig.axes) == 4 * 3
    assert sum(bool(ax.images) for ax in fig.axes) == 4 * 3


def test_grid_names_classes_and_operations_and_leaves_no_cell_empty(
    src: ArrayStore, tmp_path: Path
) -> None:
    # ×1.5 gives non-sclerotic originals at most 1 copy, ×2.5 sclerotic ones up to 2: every
    # row shows one copy, the most all shown originals have
    out = augment(src, tmp_path / "aug", params())
    fig = grid_figure(out, per_class=2, copies=4)
    assert all(ax.images for ax in fig.axes)
    non_sclerotic, sclerotic = fig.subfigs
    assert non_sclerotic._suptitle.get_text() == "non-sclerotic (class 0)"
    assert sclerotic._suptitle.get_text() == "sclerotic (class 1)"
    for block in (non_sclerotic, sclerotic):
        assert len(block.axes) == 2 * 2
        assert [ax.get_title() for ax in block.axes] == ["original", "copy 1", "", ""]
    assert non_sclerotic.axes[0].get_ylabel() in {"s0", "s1", "s2"}  # the slide
    assert fig._suptitle.get_text() == (
        "Training augmentation: dihedral, rotate ±15°, shear ±5°, zoom ±0.1, brightness ±0.05, "
        "contrast ±0.1, stain scale ±0.05 shift ±0.005"
    )


def test_dvc_augment_stage_depends_on_the_training_store_only() -> None:
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["augment"]
    data_deps = [d for d in stage["deps"] if d.startswith("${paths.")]
    assert data_deps == ["${paths.prepared}/train"]
    # no split but train, named in any form (a path part, not a substring: glomx/evaluation/...)
    assert not any({"val", "test"} & set(Path(d).parts) for d in stage["deps"])


def test_stages_run_end_to_end(
    tmp_path: Path, isolated_mlflow: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """augment then balance as DVC runs them: repository params, tiny prepared store."""
    repo_params = yaml.safe_load((REPO / "params.yaml").read_text())
    grid = {"per_class": 1, "copies": 2}
    (tmp_path / "params.yaml").write_text(
        yaml.safe_dump(
            {
                "paths": repo_params["paths"],
                "augment": {**repo_params["augment"], "grid": grid},
                "balance": repo_params["balance"],
            }
        )
    )
    make_store(tmp_path / repo_params["paths"]["prepared"] / "train")
    monkeypatch.chdir(tmp_path)
    for stage in ("augment", "balance"):
        runpy.run_path(str(REPO / "stages" / f"{stage}.py"), run_name="__main__")
    assert (tmp_path / "plots" / "augment" / "grid.png").stat().st_size > 0
    assert len(ArrayStore(tmp_path / "artifacts" / "balanced")) == 12 + 10
    assert (tmp_path / "metrics" / "balance.json").is_file()
    runs = mlflow.search_runs(experiment_names=["glomx"], output_format="list")
    assert {r.info.run_name for r in runs} == {"augment", "balance"}
