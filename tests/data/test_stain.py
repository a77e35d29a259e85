"""Stain normalisation on real patches of three sites, and on images without tissue."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage.color import rgb2lab

from glomx.data.adapt import adapt
from glomx.data.stain import (
    FIT_SAMPLE,
    METHODS,
    StainNormalizer,
    _channels_first,
    _lab_to_rgb,
    _rgb_to_lab,
    fit_sample,
    transform_each,
)
from glomx.data.store import ArrayStore, StoreWriter

SITES = ("SAS", "SESCAM", "VUHSK")
NORMALISING = ("macenko", "reinhard")


@pytest.fixture(scope="module")
def patches(real_data: Path) -> dict[str, np.ndarray]:
    """Six evenly spaced real 224 px RGB crops per site."""
    by_site = {}
    for site in SITES:
        files = sorted(real_data.glob(f"*/{site}_*.png"))
        picks = np.linspace(0, len(files) - 1, 6).round().astype(int)
        by_site[site] = np.stack([np.asarray(Image.open(files[i]).convert("RGB")) for i in picks])
    return by_site


@pytest.fixture(scope="module")
def fitted(patches: dict[str, np.ndarray]) -> dict[str, StainNormalizer]:
    """Each method fitted on the third site, VUHSK; SAS and SESCAM are normalised onto it."""
    return {method: StainNormalizer.fit(method, patches["VUHSK"]) for method in METHODS}


def _mean_od(images: np.ndarray) -> np.ndarray:
    return -np.log((images.reshape(-1, 3).astype(np.float64) + 1) / 240).mean(axis=0)


@pytest.mark.parametrize("method", NORMALISING)
def test_two_sites_come_closer_in_colour(
    method: str, patches: dict[str, np.ndarray], fitted: dict[str, StainNormalizer]
) -> None:
    sas, sescam = patches["SAS"], patches["SESCAM"]
    before = np.linalg.norm(_mean_od(sas) - _mean_od(sescam))
    normalizer = fitted[method]
    after = np.linalg.norm(
        _mean_od(normalizer.transform(sas)) - _mean_od(normalizer.transform(sescam))
    )
    assert before > 0.5  # SESCAM's stain is far darker: the test has something to close
    assert after < 0.5 * before, (method, before, after)


def test_transforming_onto_several_references_at_once_gives_the_same_bytes(
    patches: dict[str, np.ndarray], fitted: dict[str, StainNormalizer]
) -> None:
    """A bag's folds each fitted their own reference: an image's own statistics are estimated
    once for all of them, and nothing else changes."""
    images = np.concatenate([patches["SAS"], patches["SESCAM"], _no_tissue()["white"]])
    normalizers = [
        fitted["macenko"],
        StainNormalizer.fit("macenko", patches["SAS"]),
        fitted["reinhard"],
        fitted["none"],
    ]
    together = transform_each(normalizers, images)
    for normalizer, out in zip(normalizers, together, strict=True):
        assert np.array_equal(out, normalizer.transform(images)), normalizer.method
    assert not np.array_equal(together[0], together[1])  # two references, two results
    assert together[3] is images  # none: the images themselves, as transform returns them


def test_macenko_estimates_torchstains_stains_from_the_same_tissue(
    patches: dict[str, np.ndarray],
) -> None:
    from torchstain.numpy.normalizers import NumpyMacenkoNormalizer

    for image in (*patches["SAS"][:2], *patches["SESCAM"][:2]):
        ours = StainNormalizer.fit("macenko", image[None]).target
        tissue = (-np.log((image.astype(float) + 1) / 240)).min(axis=-1) >= 0.15
        reference = NumpyMacenkoNormalizer()
        reference.fit(image[tissue][None])
        np.testing.assert_allclose(ours["stain_vectors"], reference.HERef.T, atol=1e-5)
        np.testing.assert_allclose(ours["max_concentrations"], reference.maxCRef, rtol=1e-4)


def test_macenko_onto_an_images_own_stains_changes_it_little(
    patches: dict[str, np.ndarray], fitted: dict[str, StainNormalizer]
) -> None:
    dark = patches["SESCAM"][[0, 2, 3]]  # mean OD 0.9-1.3; VUHSK's crops 0.2-0.4
    for image in dark:
        own = StainNormalizer.fit("macenko", image[None]).transform(image[None])[0]
        onto_vuhsk = fitted["macenko"].transform(image[None])[0]
        assert np.abs(own.astype(int) - image).mean() < 4  # only the OD off the stain plane
        assert np.abs(onto_vuhsk.astype(int) - image).mean() > 30


def test_lab_matches_skimage_and_round_trips_exactly(patches: dict[str, np.ndarray]) -> None:
    rgb = _channels_first(patches["SAS"].reshape(1, -1, 1, 3)[0])
    lab = _rgb_to_lab(rgb)
    np.testing.assert_allclose(lab.T, rgb2lab(rgb.T[None])[0], atol=1e-3)
    assert (np.rint(_lab_to_rgb(lab)) == rgb).all()


@pytest.mark.parametrize("method", METHODS)
def test_dict_round_trip_through_json(
    method: str, patches: dict[str, np.ndarray], fitted: dict[str, StainNormalizer]
) -> None:
    normalizer = fitted[method]
    restored = StainNormalizer.from_dict(json.loads(json.dumps(normalizer.to_dict())))
    assert restored == normalizer
    assert (restored.transform(patches["SAS"]) == normalizer.transform(patches["SAS"])).all()


def test_none_is_identity(
    patches: dict[str, np.ndarray], fitted: dict[str, StainNormalizer]
) -> None:
    assert fitted["none"] == StainNormalizer("none")
    assert fitted["none"].to_dict() == {"method": "none", "target": {}}
    assert fitted["none"].transform(patches["SAS"]) is patches["SAS"]


def test_macenko_reference_lists_haematoxylin_first(fitted: dict[str, StainNormalizer]) -> None:
    (h_red, *_), (e_red, *_) = fitted["macenko"].target["stain_vectors"]
    assert h_red > e_red
    np.testing.assert_allclose(np.linalg.norm(fitted["macenko"].target["stain_vectors"], axis=1), 1)


@pytest.mark.parametrize("method", NORMALISING)
def test_fit_and_transform_are_deterministic_and_per_image(
    method: str, patches: dict[str, np.ndarray]
) -> None:
    images = np.concatenate([patches["SAS"], patches["SESCAM"]])
    first, second = StainNormalizer.fit(method, images), StainNormalizer.fit(method, images)
    assert first.to_dict() == second.to_dict()
    batch = first.transform(images)
    assert (batch == first.transform(images)).all()
    assert (batch[3] == first.transform(images[3:4])[0]).all()  # batch-independent


def test_fit_sample_spreads_at_most_the_fit_sample_over_every_item() -> None:
    assert fit_sample(5).tolist() == [0, 1, 2, 3, 4]
    many = fit_sample(1000)
    assert len(many) == FIT_SAMPLE and many[0] == 0 and many[-1] == 999
    assert np.all(np.diff(many) >= 3)


def test_fit_store_fits_on_the_sample_as_the_model_sees_it(
    patches: dict[str, np.ndarray], tmp_path: Path
) -> None:
    images = np.concatenate([patches[site] for site in SITES] * 20)  # 360 > FIT_SAMPLE
    with StoreWriter(tmp_path / "train", images.shape[1:], {}) as writer:
        names = [f"img{i}" for i in range(len(images))]
        writer.append(images, np.zeros(len(images), np.uint8), names, ["slide"] * len(images))
        store: ArrayStore = writer.close({"data_kind": "real"})
    expected = StainNormalizer.fit("macenko", adapt(images[fit_sample(360)], 112, 3))
    assert StainNormalizer.fit_store("macenko", store, 112, 3).to_dict() == expected.to_dict()
    assert StainNormalizer.fit_store("none", store, 112, 3).method == "none"


@pytest.mark.parametrize("method", NORMALISING)
def test_rgba_keeps_alpha_and_shape(
    method: str, patches: dict[str, np.ndarray], fitted: dict[str, StainNormalizer]
) -> None:
    rgb = patches["SESCAM"][:2]
    alpha = np.random.default_rng(0).integers(0, 256, (*rgb.shape[:3], 1), dtype=np.uint8)
    rgba = np.concatenate([rgb, alpha], axis=-1)
    out = fitted[method].transform(rgba)
    assert out.dtype == np.uint8 and out.shape == rgba.shape
    assert (out[..., 3] == rgba[..., 3]).all()
    assert (out[..., :3] == fitted[method].transform(rgb)).all()
    assert (rgba[..., :3] == rgb).all()  # the input is not modified


def _no_tissue() -> dict[str, np.ndarray]:
    ramp = np.linspace(0, 255, 224 * 224 * 3).astype(np.uint8).reshape(1, 224, 224, 3)
    return {
        "white": np.full((2, 224, 224, 3), 255, np.uint8),
        "glass grey": np.full((1, 224, 224, 3), 240, np.uint8),
        "black": np.zeros((1, 224, 224, 3), np.uint8),
        "pink": np.full((1, 224, 224, 3), (200, 100, 150), np.uint8),
        "purple rgba": np.full((1, 64, 64, 4), (90, 40, 110, 255), np.uint8),
        "grey ramp": ramp,  # dark pixels of one hue only
        "tiny": np.full((1, 2, 2, 3), (150, 60, 140), np.uint8),
    }


@pytest.mark.parametrize("method", NORMALISING)
@pytest.mark.parametrize("name", list(_no_tissue()))
def test_images_without_identifiable_stain_pass_through_silently(
    method: str, name: str, fitted: dict[str, StainNormalizer]
) -> None:
    images = _no_tissue()[name]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = fitted[method].transform(images)
    assert out.dtype == np.uint8 and out.shape == images.shape
    assert (out == images).all()


@pytest.mark.parametrize("method", NORMALISING)
def test_too_few_tissue_pixels_pass_through(
    method: str, patches: dict[str, np.ndarray], fitted: dict[str, StainNormalizer]
) -> None:
    tiny = np.ascontiguousarray(patches["SESCAM"][:, 100:124, 100:124])  # 576 tissue pixels
    assert (fitted[method].transform(tiny) == tiny).all()
    larger = np.ascontiguousarray(patches["SESCAM"][:, 90:134, 90:134])  # 1936 pixels
    assert (fitted[method].transform(larger) != larger).mean() > 0.5


@pytest.mark.parametrize("method", NORMALISING)
def test_glass_around_tissue_does_not_change_its_normalisation(
    method: str, patches: dict[str, np.ndarray], fitted: dict[str, StainNormalizer]
) -> None:
    piece = np.ascontiguousarray(patches["SESCAM"][:1, 80:140, 80:140])  # 3600 px of tissue
    on_glass = np.full((1, 600, 600, 3), 255, np.uint8)  # tissue is 1 % of the pixels
    on_glass[:, 300:360, 300:360] = piece
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = fitted[method].transform(on_glass)
    assert (out[:, 300:360, 300:360] == fitted[method].transform(piece)).all()
    assert (out[:, 300:360, 300:360] != piece).mean() > 0.5


@pytest.mark.parametrize("method", NORMALISING)
def test_glass_and_white_padding_stay_white_beside_tissue(
    method: str, patches: dict[str, np.ndarray], fitted: dict[str, StainNormalizer]
) -> None:
    padded = np.pad(
        patches["SESCAM"][:2], ((0, 0), (16, 16), (16, 16), (0, 0)), constant_values=255
    )
    padded[:, :8, :8] = 240  # scanner background grey
    out = fitted[method].transform(padded)
    assert (out[:, :16] == 255)[:, :, 8:].all() and (out[:, -16:] == 255).all()
    assert (out[:, :8, :8] == 240).all()
    assert (out[:, 16:-16, 16:-16] != padded[:, 16:-16, 16:-16]).mean() > 0.5


@pytest.mark.parametrize("method", NORMALISING)
def test_fit_refuses_images_without_tissue(method: str) -> None:
    with pytest.raises(ValueError, match="tissue"):
        StainNormalizer.fit(method, np.full((3, 32, 32, 3), 255, np.uint8))


def test_bad_arguments_are_refused(fitted: dict[str, StainNormalizer]) -> None:
    image = np.zeros((1, 8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="unknown stain normalisation method 'vahadane'"):
        StainNormalizer.fit("vahadane", image)
    with pytest.raises(ValueError, match="unknown stain normalisation method"):
        StainNormalizer("Macenko")
    with pytest.raises(ValueError, match="uint8"):
        fitted["macenko"].transform(image.astype(np.float32))
    with pytest.raises(ValueError, match="uint8"):
        fitted["none"].transform(image.tolist())
    with pytest.raises(ValueError, match=r"images\[None\]"):
        fitted["reinhard"].transform(image[0])
    with pytest.raises(ValueError, match=r"3\|4"):
        StainNormalizer.fit("macenko", np.zeros((1, 8, 8, 2), np.uint8))
    with pytest.raises(ValueError, match="no images"):
        StainNormalizer.fit("reinhard", np.zeros((0, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match=r"StainNormalizer\.fit"):
        StainNormalizer("macenko")  # a target is required


def test_malformed_dicts_are_refused(fitted: dict[str, StainNormalizer]) -> None:
    good = fitted["reinhard"].to_dict()
    for bad in (
        {"target": good["target"]},
        {**good, "extra": 1},
        {"method": "reinhard", "target": {"lab_mean": good["target"]["lab_mean"]}},
        {"method": "reinhard", "target": {**good["target"], "lab_std": [1.0, 0.0, 2.0]}},
        {"method": "reinhard", "target": {**good["target"], "lab_mean": [1.0, float("nan"), 2.0]}},
        {"method": "reinhard", "target": {**good["target"], "lab_mean": ["a", "b", "c"]}},
        {"method": "macenko", "target": good["target"]},
        {"method": "none", "target": good["target"]},
        {"method": "none", "target": []},
        ["none"],
    ):
        with pytest.raises(ValueError, match="stain"):
            StainNormalizer.from_dict(bad)
