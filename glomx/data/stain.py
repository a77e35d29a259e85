"""Stain normalisation of H&E / PAS patches: ``none``, ``macenko`` or ``reinhard``.

A :class:`StainNormalizer` is fitted once on training images (a reference colour, recorded
as JSON in the model's metadata) and maps every later image onto that reference, so
training, evaluation, ``glomx predict`` and serving see the same colours.

- ``macenko`` (Macenko et al., ISBI 2009): optical density ``OD = -ln((I + 1) / 240)``; the
  two stain vectors are the 1st and 99th percentile angles of the tissue ODs in the plane of
  their two leading principal axes (the one with the larger red OD first: haematoxylin);
  concentrations by least squares, scaled so that each stain's 99th percentile matches the
  reference, recomposed with the reference stain vectors. The algorithm and constants of
  ``torchstain``'s numpy backend, except that the 99th percentiles are taken over tissue
  pixels, not all pixels (with all pixels they depend on how much glass a patch shows: by
  up to 33 % on the shared crops); the tests check that both estimate the same stains and
  concentrations from the same tissue pixels.
- ``reinhard`` (Reinhard et al., 2001): per channel of CIE LAB (sRGB, D65), the tissue
  pixels' mean and standard deviation are moved onto the reference's.

The fitted reference is the per-component median of per-image estimates over a
deterministic sample of at most :data:`FIT_SAMPLE` training images (evenly spaced indices):
a typical training image, robust to a few odd slides.

Tissue and background. A pixel is *tissue* when its OD is at least :data:`TISSUE_OD` (0.15,
Macenko's threshold) in all three channels; the scanner background here is about 240 grey,
OD ≈ 0. The statistics of an image come from its tissue pixels only. An image is copied
unchanged (the correct normalisation of background) when they are not identifiable: fewer
than :data:`MIN_TISSUE_PIXELS` tissue pixels (blank glass, tiny images: percentiles of fewer
samples are noise); for ``macenko`` a tissue OD spread along the second principal axis below
:data:`MIN_STAIN_SPREAD` (a single stain colour, so no second stain direction exists; the
772 shared crops lie at 0.066–0.19 OD, uint8 noise of ±4 grey levels gives 0.014); for
``reinhard`` a tissue LAB standard deviation below :data:`MIN_LAB_STD` (1 ΔE, a
just-noticeable difference) in some channel. All-white and single-colour images are such
images; nothing is ever divided by zero, so no NaN or inf can arise. Within a normalised
image, a pixel takes the map in proportion to its largest channel OD up to
:data:`TISSUE_OD`: white glass and white padding (OD ≤ 0) stay exactly as they are. Without
that, both maps (fitted on tissue) tint them: on the shared crops Reinhard turned pure white
into as much as (244, 229, 238), Macenko into (252, 253, 247), differently per site, a
colour cue a model could learn. Alpha (a fourth channel) is copied unchanged and does not
enter the statistics.

Why not ``torchstain`` 1.4.1's numpy backend itself (a dev dependency, the tests' reference):
its Macenko raises ``LinAlgError`` on a white image and silently returns wrong colours for a
single-colour one ((200, 100, 150) → (54, 20, 68)); its Reinhard returns black for both;
both take statistics over all pixels, glass included, work in float64, more slowly (below),
and truncate instead of rounding. Here: the Macenko above in float32, channels first, OD by
lookup table, with the guards above; CIE LAB in float32 (matches ``skimage.color`` to 2e-4,
exact uint8 round trip) without ``skimage``'s out-of-gamut warnings.

Speed, 64 shared 224 px RGB crops, one thread, CPU time per core (medians of 5–9 runs in
each of three sessions; the 2-core machine was shared with training jobs at load 6–11):
``macenko`` transform 127–147 images/s, fit 157–235; ``reinhard`` transform 78–105, fit
145–211; torchstain's numpy normalisers under the same conditions 53–60 (Macenko) and 45–63
(Reinhard). Memory: the uint8 output batch plus a few float32 copies of one image.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from glomx.data.adapt import adapt
from glomx.data.store import ArrayStore

METHODS = ("none", "macenko", "reinhard")
FIT_SAMPLE = 256
IO = 240.0
TISSUE_OD = 0.15
MIN_TISSUE_PIXELS = 1000
MIN_STAIN_SPREAD = 0.03
MIN_LAB_STD = 1.0
ANGLE_PERCENTILE = 1.0
MAX_C_PERCENTILE = 99.0

_OD = -np.log((np.arange(256, dtype=np.float64) + 1) / IO).astype(np.float32)
_WHITEST_OD = math.log(IO / 255)
_TARGET_KEYS: dict[str, dict[str, tuple[int, ...]]] = {
    "none": {},
    "macenko": {"stain_vectors": (2, 3), "max_concentrations": (2,)},
    "reinhard": {"lab_mean": (3,), "lab_std": (3,)},
}

# sRGB (IEC 61966-2-1) and CIE LAB with the D65 white, the constants of skimage.color.
_SRGB_TO_XYZ = np.array(
    [[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]]
)
_WHITE = np.array([0.95047, 1.0, 1.08883])
_DELTA = 6 / 29
_LINEAR_KNEE = 0.0031308
_LINEAR = np.where(
    np.arange(256) / 255 > 0.04045,
    ((np.arange(256) / 255 + 0.055) / 1.055) ** 2.4,
    np.arange(256) / 255 / 12.92,
).astype(np.float32)
_RGB_TO_XYZN = (_SRGB_TO_XYZ / _WHITE[:, None]).astype(np.float32)
_XYZN_TO_RGB = np.linalg.inv(_SRGB_TO_XYZ / _WHITE[:, None]).astype(np.float32)

# Pixels are handled channels first, ``(3, P)``: every reduction then runs over contiguous rows.


def _rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """``(3, P)`` uint8 sRGB → ``(3, P)`` float32 CIE LAB."""
    xyz = _RGB_TO_XYZN @ _LINEAR[rgb]
    f = np.where(xyz > _DELTA**3, np.cbrt(xyz), xyz / (3 * _DELTA**2) + 4 / 29)
    return np.stack([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def _lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """``(3, P)`` float32 CIE LAB → ``(3, P)`` float32 sRGB on the 0..255 scale, unclipped."""
    fy = (lab[0] + 16) / 116
    f = np.stack([fy + lab[1] / 500, fy, fy - lab[2] / 200])
    linear = _XYZN_TO_RGB @ np.where(f > _DELTA, f**3, 3 * _DELTA**2 * (f - 4 / 29))
    encoded = np.where(
        linear > _LINEAR_KNEE,
        1.055 * np.maximum(linear, _LINEAR_KNEE) ** (1 / 2.4) - 0.055,
        12.92 * linear,
    )
    return 255 * encoded


def _tissue(od: np.ndarray) -> np.ndarray:
    """Mask ``(P,)`` of the pixels whose OD reaches :data:`TISSUE_OD` in every channel."""
    return od.min(axis=0) >= TISSUE_OD


def _macenko_estimate(od: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Stain vectors ``(2, 3)``, 99th-percentile concentrations ``(2,)`` and concentrations
    ``(2, P)`` of one image's ``(3, P)`` ODs, or None when its tissue does not identify two
    stains."""
    mask = _tissue(od)
    tissue = np.compress(mask, od, axis=1)
    if tissue.shape[1] < MIN_TISSUE_PIXELS:
        return None
    centred = tissue - tissue.mean(axis=1, keepdims=True)
    eigenvalues, eigenvectors = np.linalg.eigh((centred @ centred.T).astype(np.float64))
    if math.sqrt(max(eigenvalues[1], 0.0) / (tissue.shape[1] - 1)) < MIN_STAIN_SPREAD:
        return None
    plane = eigenvectors[:, 1:3].astype(np.float32)
    projected = plane.T @ tissue
    angles = np.arctan2(projected[1], projected[0])
    low, high = np.percentile(angles, [ANGLE_PERCENTILE, 100 - ANGLE_PERCENTILE])
    v_low = plane @ np.array([math.cos(low), math.sin(low)], np.float32)
    v_high = plane @ np.array([math.cos(high), math.sin(high)], np.float32)
    stains = np.stack([v_low, v_high] if v_low[0] > v_high[0] else [v_high, v_low])
    concentrations = np.linalg.pinv(stains).T @ od  # least squares
    max_c = np.percentile(np.compress(mask, concentrations, axis=1), MAX_C_PERCENTILE, axis=1)
    if not (max_c > 0).all():
        return None
    return stains, max_c, concentrations


def _reinhard_estimate(od: np.ndarray, lab: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Tissue LAB mean and std ``(3,)`` each of one image's ``(3, P)`` ODs and LAB, or None
    when they are not identifiable."""
    tissue = np.compress(_tissue(od), lab, axis=1)
    if tissue.shape[1] < MIN_TISSUE_PIXELS:
        return None
    mean, std = tissue.mean(axis=1), tissue.std(axis=1)
    if (std < MIN_LAB_STD).any():
        return None
    return mean, std


def fit_sample(n: int) -> np.ndarray:
    """Indices of at most :data:`FIT_SAMPLE` evenly spaced items out of ``n``."""
    return np.unique(np.linspace(0, n - 1, min(n, FIT_SAMPLE)).astype(int))


def _channels_first(image: np.ndarray) -> np.ndarray:
    """``(H, W, C)`` uint8 → its RGB as contiguous ``(3, H * W)``."""
    return np.ascontiguousarray(np.asarray(image)[..., :3].reshape(-1, 3).T)


def _check_images(images: Any, what: str) -> None:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        kind = images.dtype if isinstance(images, np.ndarray) else type(images).__name__
        raise ValueError(f"{what}: expected a uint8 numpy array (N, H, W, 3|4), got {kind}")
    if images.ndim != 4 or images.shape[-1] not in (3, 4):
        hint = " (one image? pass images[None])" if images.ndim == 3 else ""
        raise ValueError(f"{what}: expected shape (N, H, W, 3|4), got {images.shape}{hint}")


def _check_method(method: Any) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown stain normalisation method {method!r}: use one of {METHODS}")


@dataclass(frozen=True)
class StainNormalizer:
    """A fitted stain reference; :meth:`transform` maps batches onto it."""

    method: str  # none | macenko | reinhard
    target: dict[str, list] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_method(self.method)
        expected = _TARGET_KEYS[self.method]
        if not isinstance(self.target, dict) or set(self.target) != set(expected):
            raise ValueError(
                f"stain target for {self.method!r} must have keys {sorted(expected)}, got "
                f"{self.target!r}: fit it with StainNormalizer.fit({self.method!r}, images)"
            )
        for key, shape in expected.items():
            try:
                value = np.asarray(self.target[key], dtype=np.float64)
            except (TypeError, ValueError):
                value = np.full((0,), np.nan)
            if value.shape != shape or not np.isfinite(value).all():
                raise ValueError(
                    f"stain target {key!r} must be {shape} finite numbers, got {self.target[key]!r}"
                )
            if key in ("max_concentrations", "lab_std") and not (value > 0).all():
                raise ValueError(f"stain target {key!r} must be positive, got {value.tolist()}")

    @classmethod
    def fit(cls, method: str, images: np.ndarray) -> StainNormalizer:
        """Fit the reference: the median of per-image estimates over at most
        :data:`FIT_SAMPLE` evenly spaced images of uint8 ``(N, H, W, 3|4)`` ``images``."""
        _check_method(method)
        _check_images(images, f"StainNormalizer.fit({method!r})")
        if method == "none":
            return cls("none")
        if len(images) == 0:
            raise ValueError(f"StainNormalizer.fit({method!r}): no images to fit on")
        sample = fit_sample(len(images))
        estimates = []
        for i in sample:
            rgb = _channels_first(images[i])
            estimate = (
                _macenko_estimate(_OD[rgb])
                if method == "macenko"
                else _reinhard_estimate(_OD[rgb], _rgb_to_lab(rgb))
            )
            if estimate is not None:
                estimates.append(estimate[:2])
        if not estimates:
            raise ValueError(
                f"StainNormalizer.fit({method!r}): none of the {len(sample)} sampled images has "
                f"at least {MIN_TISSUE_PIXELS} tissue pixels with varied colour: fit on "
                "training images that show stained tissue"
            )
        first, second = (np.median(np.stack(part), axis=0) for part in zip(*estimates, strict=True))
        if method == "macenko":
            first = first / np.linalg.norm(first, axis=1, keepdims=True)
            return cls(
                method, {"stain_vectors": first.tolist(), "max_concentrations": second.tolist()}
            )
        return cls(method, {"lab_mean": first.tolist(), "lab_std": second.tolist()})

    @classmethod
    def fit_store(cls, method: str, store: ArrayStore, size: int, channels: int) -> StainNormalizer:
        """:meth:`fit` on an even sample of ``store``'s images, adapted to ``size`` and
        ``channels`` as the model sees them (only the sample is read)."""
        if method == "none":
            return cls("none")
        return cls.fit(method, adapt(store.read(fit_sample(len(store))), size, channels))

    def transform(self, images: np.ndarray) -> np.ndarray:
        """uint8 ``(N, H, W, C)`` → uint8 same shape, alpha untouched; images whose tissue
        does not identify the stain statistics are copied unchanged. ``none`` returns
        ``images`` itself."""
        return transform_each([self], images)[0]

    def _mapped(self, rgb: np.ndarray, source: _Source) -> np.ndarray | None:
        """One image's ``(3, P)`` colours on this reference (float, unclipped), from its own
        statistics ``source``; None when they are not identifiable."""
        if self.method == "macenko":
            if source.stains is None:
                return None
            _, max_c, concentrations = source.stains
            scale = np.asarray(self.target["max_concentrations"], np.float32) / max_c
            reference = np.asarray(self.target["stain_vectors"], np.float32)
            od = reference.T @ (concentrations * scale[:, None])
            return IO * np.exp(-np.maximum(od, _WHITEST_OD))  # never above 255, never inf
        if source.lab is None:
            return None
        lab, mean, std = source.lab
        scale = np.asarray(self.target["lab_std"], np.float32) / std
        target_mean = np.asarray(self.target["lab_mean"], np.float32)
        return _lab_to_rgb((lab - mean[:, None]) * scale[:, None] + target_mean[:, None])

    def to_dict(self) -> dict:
        """JSON-serialisable ``{"method": ..., "target": {...}}`` for model metadata."""
        return {
            "method": self.method,
            "target": {k: np.asarray(v, float).tolist() for k, v in self.target.items()},
        }

    @classmethod
    def from_dict(cls, d: dict) -> StainNormalizer:
        """Inverse of :meth:`to_dict`; a malformed dict raises ValueError."""
        if not isinstance(d, dict) or set(d) - {"method", "target"} or "method" not in d:
            raise ValueError(
                f"stain normaliser dict must be {{'method': ..., 'target': {{...}}}}, got {d!r}"
            )
        return cls(d["method"], d.get("target", {}))


class _Source:
    """One image's own statistics, estimated once however many references it is mapped onto
    (a bag's folds each fitted their own reference, onto which the same patch is mapped)."""

    def __init__(self, rgb: np.ndarray, od: np.ndarray, methods: set[str]) -> None:
        self.stains = _macenko_estimate(od) if "macenko" in methods else None
        self.lab: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # LAB, mean, std
        if "reinhard" in methods:
            lab = _rgb_to_lab(rgb)
            estimate = _reinhard_estimate(od, lab)
            self.lab = None if estimate is None else (lab, *estimate)


def transform_each(normalizers: Sequence[StainNormalizer], images: np.ndarray) -> list[np.ndarray]:
    """``[n.transform(images) for n in normalizers]``, the same bytes, with each image's own
    stain statistics estimated once rather than once per normaliser (about half of a
    transform's time)."""
    _check_images(images, "StainNormalizer.transform")
    outs = [images if n.method == "none" else images.copy() for n in normalizers]
    active = [(n, out) for n, out in zip(normalizers, outs, strict=True) if n.method != "none"]
    if not active:
        return outs
    methods = {n.method for n, _ in active}
    for i, image in enumerate(images):
        rgb = _channels_first(image)
        od = _OD[rgb]
        source = _Source(rgb, od, methods)
        weight: np.ndarray | None = None
        for normalizer, out in active:
            normalised = normalizer._mapped(rgb, source)
            if normalised is None:
                continue
            if weight is None:
                weight = np.clip(od.max(axis=0) / TISSUE_OD, 0, 1)
            blended = rgb + weight * (normalised - rgb)
            out[i, ..., :3] = np.rint(np.clip(blended, 0, 255)).T.reshape((*image.shape[:2], 3))
    return outs


@dataclass(frozen=True)
class StyleDistribution:
    """The spread of stain styles over training images, for RandStainNA-style augmentation
    (Shen et al., MICCAI 2022): a style is an image's tissue LAB mean and standard deviation
    (Reinhard's statistics, 6 numbers), and a virtual style draws each of the 6 from a normal
    distribution with the training images' mean and standard deviation of it.

    It is fitted inside each cross-validation trial on that trial's own training originals,
    never in the augment stage: the augmented store serves every fold and every left-out
    hospital, so styles fitted there would carry held-out slides' colours into training.
    """

    mean: tuple[float, ...]  # (6,): LAB mean of L, a, b, then LAB std of L, a, b
    std: tuple[float, ...]  # (6,)

    @classmethod
    def fit(cls, images: np.ndarray) -> StyleDistribution:
        """From the styles of at most :data:`FIT_SAMPLE` evenly spaced ``images`` (uint8
        ``(N, H, W, 3|4)``); images without enough tissue do not count."""
        _check_images(images, "StyleDistribution.fit")
        styles = []
        for i in fit_sample(len(images)):
            rgb = _channels_first(images[i])
            estimate = _reinhard_estimate(_OD[rgb], _rgb_to_lab(rgb))
            if estimate is not None:
                styles.append(np.concatenate(estimate))
        if len(styles) < 2:
            raise ValueError(
                f"StyleDistribution.fit: {len(styles)} of {len(images)} images show enough "
                f"stained tissue (≥ {MIN_TISSUE_PIXELS} tissue pixels); fit on training images"
            )
        stacked = np.stack(styles).astype(np.float64)
        return cls(tuple(stacked.mean(axis=0).tolist()), tuple(stacked.std(axis=0).tolist()))

    def draw(self, rng: np.random.Generator, spread: float = 1.0) -> StainNormalizer:
        """A Reinhard normaliser onto one virtual style: each statistic drawn from its normal
        distribution, widened × ``spread``; LAB spreads stay ≥ :data:`MIN_LAB_STD`."""
        values = rng.normal(np.asarray(self.mean), spread * np.asarray(self.std))
        values[3:] = np.maximum(values[3:], MIN_LAB_STD)
        return StainNormalizer(
            "reinhard", {"lab_mean": values[:3].tolist(), "lab_std": values[3:].tolist()}
        )

    def restyler(
        self, probability: float, spread: float, seed: tuple[int, ...]
    ) -> Callable[[int, np.ndarray], np.ndarray]:
        """A chunk transform for :func:`glomx.data.store.write_subset`: each image, with
        ``probability``, moved onto a style of its own draw, which depends on ``seed`` and the
        image's row only."""

        def transform(start: int, images: np.ndarray) -> np.ndarray:
            out = images.copy()
            for j in range(len(images)):
                rng = np.random.default_rng([*seed, start + j])
                if rng.random() < probability:
                    out[j] = self.draw(rng, spread).transform(images[j : j + 1])[0]
            return out

        return transform
