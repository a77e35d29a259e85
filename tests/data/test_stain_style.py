"""Stain and scale augmentation for a new lab (docs/generalisation.md), on real patches: the
RandStainNA-style draw meets the style it drew, HED jitter at the candidate strengths stays in
range and undoes itself, and a fold trial's styles come from its own training slides only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from cv_layout import TEST_CV, cv_layout
from PIL import Image

from glomx.crossval import fold_indices, fold_trials, training_subset
from glomx.data.split import read_split_csv, slide_folds
from glomx.data.stain import (
    _OD,
    MIN_LAB_STD,
    TISSUE_OD,
    StyleDistribution,
    _channels_first,
    _rgb_to_lab,
)
from glomx.data.store import ArrayStore, StoreWriter
from glomx.pipeline.augment import stain_jitter

SITES = ("SAS", "SESCAM", "VUHSK")
# augment.ops.stain (scale, shift): light (the default until 2026-12-07), medium, strong (since)
HED = [(0.05, 0.005), (0.1, 0.01), (0.2, 0.02)]


@pytest.fixture(scope="module")
def patches(real_data: Path) -> np.ndarray:
    """Four evenly spaced real 224 px RGB crops per site."""
    picked = []
    for site in SITES:
        files = sorted(real_data.glob(f"*/{site}_*.png"))
        for i in np.linspace(0, len(files) - 1, 4).round().astype(int):
            picked.append(np.asarray(Image.open(files[i]).convert("RGB")))
    return np.stack(picked)


def _style(image: np.ndarray, tissue_of: np.ndarray) -> np.ndarray:
    """``image``'s LAB mean and std over the tissue pixels of ``tissue_of`` (the same pixels
    before and after a change of colour)."""
    tissue = _OD[_channels_first(tissue_of)].min(axis=0) >= TISSUE_OD
    lab = _rgb_to_lab(_channels_first(image))[:, tissue]
    return np.concatenate([lab.mean(axis=1), lab.std(axis=1)])


def test_a_drawn_style_is_met(patches: np.ndarray) -> None:
    """Moved onto a drawn style, an image's tissue LAB mean lands within 2 units and its LAB
    spread within 10 % of the draw (what rounding to uint8 and clipping to sRGB leave)."""
    style = StyleDistribution.fit(patches)
    assert all(s > 0 for s in style.std)
    rng = np.random.default_rng(0)
    for image in patches:
        normaliser = style.draw(rng, spread=1.0)
        got = _style(normaliser.transform(image[None])[0], image)
        want = np.array(normaliser.target["lab_mean"] + normaliser.target["lab_std"])
        assert np.abs(got[:3] - want[:3]).max() < 2.0, (got, want)
        assert np.abs(got[3:] / want[3:] - 1).max() < 0.10, (got, want)


def test_drawn_styles_follow_the_training_spread(patches: np.ndarray) -> None:
    style = StyleDistribution.fit(patches)
    rng = np.random.default_rng(1)
    draws = [style.draw(rng, spread=2.0).target for _ in range(4000)]
    means = np.array([d["lab_mean"] for d in draws])
    stds = np.array([d["lab_std"] for d in draws])
    assert np.allclose(means.mean(axis=0), style.mean[:3], atol=0.2 * max(style.std[:3]))
    assert np.allclose(means.std(axis=0), 2 * np.array(style.std[:3]), rtol=0.1)
    assert stds.min() >= MIN_LAB_STD


def test_too_little_tissue_is_refused() -> None:
    with pytest.raises(ValueError, match="show enough stained tissue"):
        StyleDistribution.fit(np.full((3, 64, 64, 3), 240, np.uint8))


@pytest.mark.parametrize("scale, shift", HED)
def test_hed_jitter_stays_in_range_and_undoes_itself(
    patches: np.ndarray, scale: float, shift: float
) -> None:
    """c' = c·a + b at every candidate strength keeps RGB in [0, 1]; c'' = (c' − b) / a brings
    back every pixel that c' did not clip (median error under 2 grey levels, 99th percentile
    under 8), and tissue is hardly ever clipped."""
    rng = np.random.default_rng(2)
    for image in patches:
        rgb = image / 255.0
        a = 1 + rng.uniform(-scale, scale, 3)
        b = rng.uniform(-shift, shift, 3)
        jittered = stain_jitter(rgb, a, b)
        assert jittered.min() >= 0 and jittered.max() <= 1 and np.isfinite(jittered).all()
        assert np.abs(jittered - rgb).max() > 0.01  # it did change the colours
        back = stain_jitter(jittered, 1 / a, -b / a)
        kept = ((jittered > 0) & (jittered < 1)).all(axis=-1)  # glass brightened is clipped
        error = np.abs(back - rgb)[kept] * 255
        tissue = _OD[image].min(axis=-1) >= TISSUE_OD
        assert kept[tissue].mean() > 0.95, kept[tissue].mean()
        assert np.median(error) < 2 and np.percentile(error, 99) < 8, np.percentile(error, 99)


def _upscaled(store: ArrayStore, path: Path, tinted: frozenset[str] = frozenset()) -> ArrayStore:
    """``store`` with every image 3× larger (enough pixels for a stain style), the green
    channel of ``tinted`` slides halved."""
    images = store.read(slice(0, len(store))).repeat(3, axis=1).repeat(3, axis=2)
    for i, slide in enumerate(store.slides):
        if slide in tinted:
            images[i, ..., 1] //= 2
    with StoreWriter(path, images.shape[1:], {}) as w:
        w.append(images, store.labels, store.names, store.slides)
        return w.close({"data_kind": "synthetic"})


def test_a_trial_draws_styles_from_its_own_training_slides_only(tmp_path: Path) -> None:
    """Recolouring the held-out fold's and the inner-validation slides' originals changes
    nothing in a trial's restyled training store; recolouring a training slide does."""
    paths = cv_layout(tmp_path)
    originals = ArrayStore(Path(paths["prepared"]) / "train")
    training = ArrayStore(paths["balanced"])
    folds = slide_folds(read_split_csv(Path(paths["prepared"]) / "split.csv"))
    on = TEST_CV.restyle.model_copy(update={"enabled": True, "probability": 1.0})
    cfg = TEST_CV.model_copy(update={"restyle": on})
    trial = fold_trials("lr", None, None, training, originals, folds, cfg, None, None)[0]
    rows = fold_indices(training, originals, folds, trial.fold, set(trial.inner))[0]
    larger = _upscaled(training, tmp_path / "training")

    def restyled_with(tinted: set[str], name: str) -> np.ndarray:
        store = _upscaled(originals, tmp_path / name / "originals", frozenset(tinted))
        out = training_subset(trial, larger, store, rows, tmp_path / name / "train")
        return out.read(slice(0, len(out)))

    plain = restyled_with(set(), "plain")
    assert (plain != larger.read(rows)).any()
    outside = {s for s, k in folds.items() if k == trial.fold} | set(trial.inner)
    assert np.array_equal(plain, restyled_with(outside, "outside"))
    inside = sorted({larger.slides[i] for i in rows if larger.slides[i] in folds} - outside)
    assert not np.array_equal(plain, restyled_with({inside[0]}, "inside"))
