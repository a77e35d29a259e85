"""Synthetic PAS-stained glomerulus patches in the challenge layout, for demos and tests.

``make_dataset`` writes ``public.csv`` (``name,ground truth``), the two class folders of RGBA
PNGs (alpha 255, sides within ``size_range``, not all square) named like the challenge
(``S-2006-005094_PAS_1of2_<24 hex>.png``) and a ``SYNTHETIC.json`` marker that
:func:`data_kind` reads, so synthetic results are always labelled as such.

Drawing is a small stain model: per-pixel PAS (magenta) and haematoxylin (blue-purple)
concentrations become RGB through Beer-Lambert absorption, ``255 * exp(-OD)``. Both classes
have a Bowman's capsule ring around a tuft on tubular background tissue, with random position,
shape and size:

- non-sclerotic (0): lobulated tuft of pink-magenta mesangium riddled with open capillary
  loops (many small pale lumina) and many nuclei;
- globally sclerotic (1): dense, homogeneous, glassy tuft with faint lamellae, a few slit-like
  clefts, few nuclei, often retracted from a thickened, lamellated capsule.

Some non-sclerotic tufts have few open loops and some sclerotic ones keep a few, so the
classes overlap a little, as they do in real data.

Stain vectors, intensity and counterstain vary per slide and per patch with the same
distribution for both classes; tissue density is chosen so that mean colour overlaps between
the classes, which differ mainly in texture (lumina, nuclei, homogeneity).

Every patch is drawn from its own generator seeded with ``(seed, index)``, so the files are
byte-identical for a seed whatever the number of worker processes.
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from glomx.errors import UsageError

GENERATOR_VERSION = 1
MARKER = "SYNTHETIC.json"
CSV_NAME = "public.csv"
CLASS_DIRS = {1: "globally_sclerotic_glomeruli", 0: "non_globally_sclerotic_glomeruli"}
CHALLENGE_POSITIVE_FRACTION = 1054 / 5758
CHALLENGE_N = 5758
CHALLENGE_SLIDES = 215
CHALLENGE_SIZE_RANGE = (256, 915)

# optical density per unit concentration (R, G, B); per-slide jitter is added to these
_PAS = np.array([0.30, 1.30, 0.50], np.float32)
_PAS_PURPLE = np.array([0.35, 0.05, -0.10], np.float32)  # direction of the slide hue shift
_HEM = np.array([1.00, 1.15, 0.50], np.float32)


class SynthError(UsageError):
    """A dataset size, size range, class fraction or slide count that cannot be drawn: refused
    before any patch is drawn, so ``glomx synth`` exits 2."""


class SynthFolderError(UsageError, FileExistsError):
    """The output folder is a file, or holds something other than a synthetic dataset: an
    output ``glomx synth`` must not replace (exit 2)."""


@dataclass(frozen=True)
class Stain:
    """One slide's staining: stain vectors, overall intensity and diffuse counterstain."""

    pas: tuple[float, float, float]
    hem: tuple[float, float, float]
    gain: float
    counterstain: float


@dataclass(frozen=True)
class Shape:
    """How patch sizes and slides are drawn. The defaults are the demo set's: sides uniform in
    the size range, gamma-distributed slide sizes, slide ids without a site."""

    size_median: float | None = None  # median side in px (log-normal); None: uniform
    size_sigma: float = 0.0  # log-normal spread of the side
    aspect: float = 1.0  # median height / width
    slide_sigma: float | None = None  # log-normal spread of patches per slide; None: gamma(2)
    sites: tuple[str, ...] = ()  # slide-id prefixes (hospitals), for prepare's site balancing


# The challenge set: sides 256-915 px with a median of about 530 x 540 (height x width); 215
# slides holding 1 to several hundred patches each. Sites are synthetic (prefix ``SYN``), so a
# result on them is never mistaken for one on a real hospital's slides.
CHALLENGE = Shape(
    size_median=535.0,
    size_sigma=0.22,
    aspect=530 / 540,
    slide_sigma=1.5,
    sites=("SYNA", "SYNB", "SYNC"),
)
_SITE_SHARES = (0.45, 0.35, 0.2)  # sites' shares of the slides, cycled when there are more


@dataclass(frozen=True)
class Patch:
    """Everything a worker needs to draw and write one patch."""

    seed: int
    index: int
    path: Path
    label: int
    height: int
    width: int
    stain: Stain


def data_kind(data_dir: Path) -> str:
    """``"synthetic"`` if ``data_dir`` holds the synthetic marker, else ``"real"``."""
    return "synthetic" if (Path(data_dir) / MARKER).is_file() else "real"


# --- drawing ---------------------------------------------------------------------------------


def _upsample(grid: np.ndarray, n_out: int, axis: int) -> np.ndarray:
    """Cubic B-spline interpolation of ``grid`` onto ``n_out`` samples along ``axis``."""
    n_grid = grid.shape[axis]
    t = np.linspace(1.0, n_grid - 2.0, n_out)
    base = np.minimum(np.floor(t).astype(np.int64), n_grid - 3)
    f = (t - base).astype(np.float32)
    taps = ((1 - f) ** 3, 3 * f**3 - 6 * f**2 + 4, -3 * f**3 + 3 * f**2 + 3 * f + 1, f**3)
    shape = (-1, 1) if axis == 0 else (1, -1)
    terms = (tap.reshape(shape) * grid.take(base + k - 1, axis=axis) for k, tap in enumerate(taps))
    return sum(terms) * np.float32(1 / 6)


def _noise(rng: np.random.Generator, height: int, width: int, cells: float) -> np.ndarray:
    """Smooth float32 noise of unit variance, ``cells`` blobs across the shorter side.

    A Gaussian grid interpolated separably by cubic B-splines (pure numpy, no BLAS threads).
    """
    scale = cells / min(height, width)
    gy, gx = max(1, round(height * scale)) + 3, max(1, round(width * scale)) + 3
    grid = rng.standard_normal((gy, gx), dtype=np.float32)
    field = _upsample(_upsample(grid, height, axis=0), width, axis=1)
    return field * np.float32(1.0 / max(float(field.std()), 1e-6))


def _ellipses(
    shape: tuple[int, int],
    ys: np.ndarray,
    xs: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    angle: np.ndarray,
) -> np.ndarray:
    """Coverage in [0, 1] of antialiased ellipses (semi-axes ``a``, ``b`` px, rotation ``angle``).

    All ellipses are rasterised at once on a shared offset grid (on a canvas padded so no
    bounds checks are needed); overlaps add up and clip at 1.
    """
    height, width = shape
    if len(ys) == 0:
        return np.zeros(shape, np.float32)
    r = int(np.ceil(max(a.max(), b.max()))) + 1
    padded_w = width + 2 * r
    off = np.arange(-r, r + 1, dtype=np.float32)
    oy, ox = (g.ravel() for g in np.meshgrid(off, off, indexing="ij"))
    cos, sin = np.cos(angle)[:, None], np.sin(angle)[:, None]
    u = (ox * cos + oy * sin) / a[:, None]
    v = (oy * cos - ox * sin) / b[:, None]
    q = np.sqrt(u * u + v * v)
    soft = np.clip((1.0 - q) * b[:, None] + 0.5, 0.0, 1.0)  # ~1 px antialiased edge
    centre = (np.rint(ys).astype(np.int64) + r) * padded_w + np.rint(xs).astype(np.int64) + r
    flat = centre[:, None] + (oy.astype(np.int64) * padded_w + ox.astype(np.int64))[None, :]
    cover = np.bincount(flat.ravel(), soft.ravel(), minlength=(height + 2 * r) * padded_w)
    cover = cover.reshape(height + 2 * r, padded_w)[r : r + height, r : r + width]
    return np.minimum(cover, 1.0).astype(np.float32)


def _points(rng: np.random.Generator, region: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``n`` uniform random (y, x) points inside the boolean ``region``."""
    height, width = region.shape
    if n <= 0:
        return np.empty(0), np.empty(0)
    ys = rng.uniform(0, height - 1, 4 * n + 16)
    xs = rng.uniform(0, width - 1, 4 * n + 16)
    inside = region[np.rint(ys).astype(int), np.rint(xs).astype(int)]
    return ys[inside][:n], xs[inside][:n]


def _scatter(
    rng: np.random.Generator,
    region: np.ndarray,
    coverage: float,
    radius: tuple[float, float],
    elongation: tuple[float, float],
) -> tuple[np.ndarray, ...]:
    """Centres, semi-axes and angles of random ellipses covering ~``coverage`` of ``region``."""
    mean_area = np.pi * np.mean(radius) ** 2 * np.mean(elongation)
    n = round(float(coverage * region.sum()) / max(float(mean_area), 1.0))
    ys, xs = _points(rng, region, n)
    a = np.maximum(rng.uniform(*radius, len(ys)), 0.6).astype(np.float32)
    b = np.maximum(a * rng.uniform(*elongation, len(ys)), 0.6).astype(np.float32)
    return ys, xs, a, b, rng.uniform(0, np.pi, len(ys)).astype(np.float32)


def _blobs(
    rng: np.random.Generator,
    region: np.ndarray,
    coverage: float,
    radius: tuple[float, float],
    elongation: tuple[float, float],
) -> np.ndarray:
    """Coverage map of random ellipses inside ``region`` (radii in px)."""
    return _ellipses(region.shape, *_scatter(rng, region, coverage, radius, elongation))


def _harmonics(
    rng: np.random.Generator, phi: np.ndarray, orders: tuple[int, int], amplitude: float
) -> np.ndarray:
    """A random smooth periodic function of the angle ``phi`` (three harmonics)."""
    out = np.zeros(phi.shape, np.float32)
    for k in rng.choice(np.arange(orders[0], orders[1] + 1), 3, replace=False):
        amp = np.float32(amplitude * rng.uniform(0.3, 1.0))
        out += amp * np.cos(phi * np.float32(k) + np.float32(rng.uniform(0, 2 * np.pi)))
    return out


def _polar(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalised radius (1 = capsule) and angle of a jittered, rotated, irregular ellipse."""
    f32 = np.float32
    cy = height / 2 + rng.normal(0, 0.035) * height
    cx = width / 2 + rng.normal(0, 0.035) * width
    ay, ax = height * rng.uniform(0.39, 0.47), width * rng.uniform(0.39, 0.47)
    theta = rng.uniform(-0.25, 0.25)
    cos, sin = f32(np.cos(theta)), f32(np.sin(theta))
    dy = (np.arange(height, dtype=f32) - f32(cy))[:, None]
    dx = (np.arange(width, dtype=f32) - f32(cx))[None, :]
    u = (dx * cos + dy * sin) * f32(1 / ax)
    v = (dy * cos - dx * sin) * f32(1 / ay)
    phi = np.arctan2(v, u)
    return np.sqrt(u * u + v * v) * (1 + _harmonics(rng, phi, (2, 4), 0.03)), phi


def _background(
    rng: np.random.Generator, pas: np.ndarray, outside: np.ndarray, fine: np.ndarray
) -> np.ndarray:
    """Paint tubules (epithelium, brush border, lumen) and interstitium; returns epithelium."""
    tubules = _noise(rng, pas.shape[0], pas.shape[1], rng.uniform(5, 7))
    epithelium = outside & (tubules > -0.7)
    pas[outside] = 0.06  # interstitium
    pas[epithelium] = rng.uniform(0.3, 0.5) * (1 + 0.15 * fine[epithelium])
    pas[outside & (np.abs(tubules + 0.7) < 0.06)] = 0.7  # tubular basement membrane
    pas[outside & (tubules > 1.1)] = 0.8  # brush border
    pas[outside & (tubules > 1.3)] = 0.08  # tubular lumen
    return epithelium & (tubules <= 1.1)


def _capillary_loops(
    rng: np.random.Generator, pas: np.ndarray, tuft: np.ndarray, coverage: float, side: int
) -> None:
    """Open capillary lumina (pale) inside PAS-positive basement-membrane walls."""
    ys, xs, a, b, angle = _scatter(rng, tuft, coverage, (0.009 * side, 0.02 * side), (0.3, 0.9))
    wall = max(1.0, 0.003 * side)
    for grow, value in ((wall, rng.uniform(1.2, 1.6)), (0.0, rng.uniform(0.06, 0.14))):
        loops = _ellipses(pas.shape, ys, xs, a + grow, b + grow, angle) * tuft
        pas += (np.float32(value) - pas) * loops


def _open_tuft(
    rng: np.random.Generator, pas: np.ndarray, tuft: np.ndarray, fine: np.ndarray, side: int
) -> tuple[float, float]:
    """Lobulated mesangium with many open capillary loops (fewer where partly collapsed).

    Returns the nuclear coverage and the diffuse haematoxylin of the tuft (none).
    """
    pas[tuft] = rng.uniform(0.85, 1.25) * (1 + 0.2 * fine[tuft])
    _capillary_loops(rng, pas, tuft, rng.uniform(0.1, 0.32), side)
    return rng.uniform(0.06, 0.14), 0.0


def _sclerotic_tuft(
    rng: np.random.Generator,
    pas: np.ndarray,
    tuft: np.ndarray,
    rho: np.ndarray,
    fine: np.ndarray,
    side: int,
) -> tuple[float, float]:
    """Dense, glassy, faintly lamellar tuft with a few slits and, in some, residual loops.

    Returns the nuclear coverage and the diffuse haematoxylin of the tuft.
    """
    glassy = _noise(rng, pas.shape[0], pas.shape[1], 3)[tuft]
    streaks = np.cos(rho[tuft] * np.float32(rng.uniform(25, 45)) + 2 * fine[tuft])
    pas[tuft] = rng.uniform(0.6, 0.95) * (1 + 0.06 * glassy + 0.05 * streaks)
    slits = _blobs(rng, tuft, rng.uniform(0, 0.03), (0.02 * side, 0.05 * side), (0.08, 0.2))
    pas += (np.float32(0.25) - pas) * slits * tuft
    if rng.random() < 0.3:
        _capillary_loops(rng, pas, tuft, rng.uniform(0.01, 0.06), side)
    return rng.uniform(0.005, 0.03), rng.uniform(0.0, 0.1)


def draw_patch(
    rng: np.random.Generator, height: int, width: int, label: int, stain: Stain
) -> np.ndarray:
    """One synthetic PAS patch as uint8 ``(height, width, 4)`` RGBA with opaque alpha."""
    f32 = np.float32
    sclerotic = label == 1
    side = min(height, width)
    rho, phi = _polar(rng, height, width)
    fine = _noise(rng, height, width, side / 8)  # cell-scale mottling

    capsule_w = rng.uniform(0.03, 0.07) if sclerotic else rng.uniform(0.012, 0.025)
    tuft_r = rng.uniform(0.74, 0.97) if sclerotic else rng.uniform(0.84, 0.96)
    lobes = _harmonics(rng, phi, (2, 4), 0.02) if sclerotic else _harmonics(rng, phi, (4, 9), 0.05)
    tuft = rho + lobes < tuft_r
    ring = np.abs(rho - 1) < capsule_w
    # Bowman's space: nearly empty, or filled with pale fibrous tissue when sclerotic
    space = rng.uniform(0.04, 0.35) if sclerotic and rng.random() < 0.5 else rng.uniform(0.03, 0.06)
    pas = np.full((height, width), space, f32) * (1 + f32(0.15) * fine)
    epithelium = _background(rng, pas, rho >= 1 + capsule_w, fine)

    # Bowman's capsule: basement membrane ring, lamellated and thicker when sclerotic
    if sclerotic:
        lamellae = 0.75 + 0.25 * np.cos((rho[ring] - 1) * f32(3 * np.pi / capsule_w))
        pas[ring] = rng.uniform(0.8, 1.1) * lamellae
    else:
        pas[ring] = rng.uniform(1.0, 1.4)

    if sclerotic:
        tuft_nuclei, tuft_hem = _sclerotic_tuft(rng, pas, tuft, rho, fine, side)
    else:
        tuft_nuclei, tuft_hem = _open_tuft(rng, pas, tuft, fine, side)

    nucleus = (0.006 * side, 0.010 * side)
    nuclei = _blobs(rng, tuft, tuft_nuclei, nucleus, (0.6, 1.0))
    nuclei += _blobs(rng, ring, 0.06, nucleus, (0.4, 0.7))  # parietal epithelium
    nuclei += _blobs(rng, epithelium, rng.uniform(0.04, 0.08), nucleus, (0.6, 1.0))
    np.minimum(nuclei, 1, out=nuclei)
    pas += nuclei * f32(0.2)
    hem = nuclei * f32(rng.uniform(1.1, 1.5)) + f32(stain.counterstain) * (pas > 0.2)
    hem += f32(tuft_hem) * tuft
    return _to_rgba(rng, pas, hem, stain)


def _to_rgba(
    rng: np.random.Generator, pas: np.ndarray, hem: np.ndarray, stain: Stain
) -> np.ndarray:
    """Beer-Lambert: concentrations → ``255 * exp(-OD)`` per channel, with slight grain."""
    f32 = np.float32
    gain = f32(stain.gain * rng.uniform(0.85, 1.15))
    grain = rng.standard_normal(pas.shape, dtype=f32) * f32(0.03 * gain) + gain
    # per-patch departures from the slide's stain (section thickness, local staining)
    pas_vec = np.array(stain.pas) * rng.uniform(0.88, 1.12, 3) + _PAS_PURPLE * rng.normal(0, 0.2)
    hem_vec = np.array(stain.hem) * rng.uniform(0.8, 1.2, 3)
    rgba = np.empty((*pas.shape, 4), np.uint8)
    for c in range(3):
        od = (pas * f32(max(pas_vec[c], 0.02)) + hem * f32(hem_vec[c])) * grain
        rgba[..., c] = np.minimum(f32(255) * np.exp(-od) + f32(0.5), f32(255))
    rgba[..., 3] = 255
    return rgba


def _write_patch(patch: Patch) -> None:
    """Draw one patch with its own ``(seed, index)`` generator and write it as a PNG."""
    rng = np.random.default_rng([patch.seed, patch.index])
    rgba = draw_patch(rng, patch.height, patch.width, patch.label, patch.stain)
    Image.fromarray(rgba, "RGBA").save(patch.path, compress_level=1)


# --- planning --------------------------------------------------------------------------------


def _rgb(values: np.ndarray) -> tuple[float, float, float]:
    red, green, blue = (float(x) for x in values)
    return red, green, blue


def _slide_stains(rng: np.random.Generator, n: int) -> list[Stain]:
    stains = []
    for _ in range(n):
        pas = _PAS * rng.uniform(0.9, 1.1, 3) + _PAS_PURPLE * rng.uniform(-0.5, 0.9)
        hem = _HEM * rng.uniform(0.85, 1.15, 3)
        stains.append(
            Stain(
                pas=_rgb(np.maximum(pas, 0.02)),
                hem=_rgb(hem),
                gain=float(np.exp(rng.normal(0, 0.22))),
                counterstain=float(rng.uniform(0.0, 0.18)),
            )
        )
    return stains


def _slide_ids(rng: np.random.Generator, n: int, sites: tuple[str, ...] = ()) -> list[str]:
    """``n`` distinct challenge-style slide ids (``S-2006-005094``), prefixed ``<site>_`` when
    ``sites`` are given (drawn with unequal shares, as hospitals contribute unequally)."""
    ids: set[str] = set()
    while len(ids) < n:
        ids.add(f"S-{rng.integers(2006, 2021)}-{rng.integers(1, 10**6):06d}")
    if not sites:
        return sorted(ids)
    shares = np.resize(np.array(_SITE_SHARES), len(sites))
    site = rng.choice(len(sites), size=n, p=shares / shares.sum())
    return sorted(f"{sites[s]}_{slide}" for s, slide in zip(site, sorted(ids), strict=True))


def _assign_slides(
    rng: np.random.Generator, labels: np.ndarray, n_slides: int, slide_sigma: float | None = None
) -> np.ndarray:
    """Slide per patch: every slide gets negatives, 70 % of slides (at least 3) positives.

    Slides differ in size (gamma, or log-normal with ``slide_sigma``: a few slides hold
    hundreds of patches, many a handful) and in their share of sclerotic glomeruli, as real
    slides do.
    """
    if slide_sigma is None:
        size = rng.gamma(2.0, size=n_slides)
    else:
        size = rng.lognormal(0.0, slide_sigma, size=n_slides)
    propensity = rng.beta(1.5, 4.0, size=n_slides)
    positive_slides = rng.permutation(n_slides)[: max(min(3, n_slides), round(0.7 * n_slides))]
    slides = np.empty(len(labels), np.int64)
    for label, pool, weight in (
        (0, np.arange(n_slides), size * (1 - propensity)),
        (1, positive_slides, (size * propensity)[positive_slides]),
    ):
        idx = np.flatnonzero(labels == label)
        first = rng.permutation(pool)[: min(len(idx), len(pool))]  # each slide once first
        rest = rng.choice(pool, size=len(idx) - len(first), p=weight / weight.sum())
        slides[rng.permutation(idx)] = np.concatenate([first, rest])
    return slides


def _sizes(
    rng: np.random.Generator, n: int, size_range: tuple[int, int], shape: Shape
) -> np.ndarray:
    """``(n, 2)`` heights and widths, clipped to the range: sides uniform in it, or log-normal
    about ``shape.size_median``; 70 % slightly oblong about ``shape.aspect``."""
    lo, hi = size_range
    if shape.size_median is None:
        side = rng.uniform(lo, hi, n)
    else:
        side = shape.size_median * np.exp(rng.normal(0, shape.size_sigma, n))
    square = rng.random(n) < 0.3
    aspect = shape.aspect * np.where(square, 1.0, np.exp(rng.normal(0, 0.1, n)))
    sides = np.stack([side * np.sqrt(aspect), side / np.sqrt(aspect)], axis=1)
    return np.clip(np.rint(sides), lo, hi).astype(np.int64)


def _prepare_out(out: Path) -> None:
    """Create ``out``; an earlier synthetic dataset there is replaced, anything else refused."""
    if out.exists() and not out.is_dir():
        raise SynthFolderError(f"{out} is a file; choose a folder for the synthetic dataset")
    if out.exists() and any(out.iterdir()):
        if data_kind(out) != "synthetic":
            raise SynthFolderError(
                f"{out} exists and is not a synthetic dataset (no {MARKER}); choose an empty "
                "or new folder: glomx synth replaces only a synthetic dataset it wrote"
            )
        for folder in CLASS_DIRS.values():
            shutil.rmtree(out / folder, ignore_errors=True)
        (out / CSV_NAME).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    for folder in CLASS_DIRS.values():
        (out / folder).mkdir()


def plan_dataset(
    out: Path,
    n: int,
    seed: int = 0,
    size_range: tuple[int, int] = (256, 915),
    positive_fraction: float = CHALLENGE_POSITIVE_FRACTION,
    n_slides: int | None = None,
    shape: Shape = Shape(),
) -> tuple[dict[str, Any], list[Patch]]:
    """The summary and every patch (name, label, slide, size) of a dataset, drawing nothing:
    its shape can be checked at full size in milliseconds.

    ``n_slides`` defaults to ``max(6, n // 40)``.
    """
    lo, hi = size_range
    if n < 2:
        raise SynthError(f"n must be at least 2 (one per class), got {n}")
    if not 16 <= lo <= hi:
        raise SynthError(f"size_range must satisfy 16 <= min <= max, got {size_range}")
    if not 0 < positive_fraction < 1:
        raise SynthError(f"positive_fraction must be in (0, 1), got {positive_fraction}")
    if n_slides is not None and n_slides < 1:
        raise SynthError(f"n_slides must be positive, got {n_slides}")
    n_slides = min(n, max(6, n // 40) if n_slides is None else n_slides)

    rng = np.random.default_rng(seed)
    n_pos = int(np.clip(round(n * positive_fraction), 1, n - 1))
    labels = rng.permutation(np.r_[np.ones(n_pos, np.int64), np.zeros(n - n_pos, np.int64)])
    slide_ids = _slide_ids(rng, n_slides, shape.sites)
    stains = _slide_stains(rng, n_slides)
    sections = rng.integers(1, 5, n_slides)
    slides = _assign_slides(rng, labels, n_slides, shape.slide_sigma)
    summary: dict[str, Any] = {
        "synthetic": True,
        "generator": "glomx.data.synth",
        "version": GENERATOR_VERSION,
        "seed": seed,
        "n": n,
        "size_range": [lo, hi],
        "positive_fraction": positive_fraction,
        "class_0": n - n_pos,
        "class_1": n_pos,
        "slides": n_slides,
        "slides_with_class_1": len(np.unique(slides[labels == 1])),
    }

    sizes = _sizes(rng, n, size_range, shape)
    sections_k = rng.integers(1, sections[slides] + 1)
    patches = []
    for i, (label, slide) in enumerate(zip(labels.tolist(), slides.tolist(), strict=True)):
        digest = hashlib.blake2b(f"glomx-synth:{seed}:{i}".encode(), digest_size=12).hexdigest()
        name = f"{slide_ids[slide]}_PAS_{sections_k[i]}of{sections[slide]}_{digest}.png"
        height, width = sizes[i].tolist()
        path = Path(out) / CLASS_DIRS[label] / name
        patches.append(Patch(seed, i, path, label, height, width, stains[slide]))
    return summary, patches


def make_dataset(
    out: Path,
    n: int,
    seed: int = 0,
    size_range: tuple[int, int] = (256, 915),
    positive_fraction: float = CHALLENGE_POSITIVE_FRACTION,
    n_slides: int | None = None,
    workers: int = 2,
    shape: Shape = Shape(),
) -> dict[str, Any]:
    """Write ``n`` synthetic patches in the challenge layout under ``out``; returns a summary.

    The marker is written first, so even an interrupted run is recognisable as synthetic;
    ``public.csv`` is written last.
    """
    out = Path(out)
    summary, patches = plan_dataset(out, n, seed, size_range, positive_fraction, n_slides, shape)
    return _write_dataset(out, summary, patches, workers)


def challenge_plan(
    out: Path, scale: float = 1.0, seed: int = 0
) -> tuple[dict[str, Any], list[Patch]]:
    """:func:`plan_dataset` of the challenge-shaped set, or of a fraction ``scale`` of it with
    the same shape (class ratio, sizes, patches per slide; at least 12 slides)."""
    if not 0 < scale <= 1:
        raise SynthError(f"scale must be in (0, 1], got {scale}")
    n = max(2, round(CHALLENGE_N * scale))
    n_slides = max(12, round(CHALLENGE_SLIDES * scale))
    summary, patches = plan_dataset(
        out, n, seed, CHALLENGE_SIZE_RANGE, CHALLENGE_POSITIVE_FRACTION, n_slides, CHALLENGE
    )
    return {**summary, "like": "challenge", "scale": scale}, patches


def make_challenge_like(
    out: Path, scale: float = 1.0, seed: int = 0, workers: int = 2
) -> dict[str, Any]:
    """Write the challenge-shaped set (5,758 RGBA patches, 4,704 : 1,054, 215 slides of three
    synthetic sites) or a fraction ``scale`` of it under ``out``; returns its summary."""
    out = Path(out)
    summary, patches = challenge_plan(out, scale, seed)
    return _write_dataset(out, summary, patches, workers)


def _write_dataset(
    out: Path, summary: dict[str, Any], patches: list[Patch], workers: int
) -> dict[str, Any]:
    """Marker first, the PNGs (in ``workers`` processes), ``public.csv`` last."""
    _prepare_out(out)
    (out / MARKER).write_text(json.dumps(summary, indent=2) + "\n")
    if workers <= 1:
        for patch in patches:
            _write_patch(patch)
    else:
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(_write_patch, patches, chunksize=8))

    with (out / CSV_NAME).open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["name", "ground truth"])
        writer.writerows(sorted((patch.path.name, patch.label) for patch in patches))
    return summary
