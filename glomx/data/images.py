"""Decode one image file into uint8 RGB(A) and homogenise it to a square of fixed side.

The prepare stage (in worker processes), predict and serving all go through :func:`decode`
and :func:`homogenise` (or :func:`load_image`, which is the two in a row), so a model sees
exactly the pixels it was trained on.

Decisions:

- Output is uint8 ``(H, W, 3)`` or ``(H, W, 4)``. 16-bit colour sources are scaled by their
  top byte (``v >> 8``: 65535 → 255, 32768 → 128), never clipped; float images are rejected.
- Greyscale sources (PIL modes ``1``, ``L``, ``LA``, ``I``, ``I;16*``: 1-, 8- and 16-bit grey
  PNG/TIFF/JPEG) are rejected. Every model reads the PAS stain's colour, so replicating one
  grey channel into RGB would give a confident probability for an image unlike anything it
  was trained on: a silent wrong answer.
- With ``channels=3`` a partly transparent image is composited onto **white** (the colour of
  glass and of the default pad fill); a fully opaque alpha (the challenge files) is dropped.
  With ``channels=4`` alpha is kept as stored, and opaque alpha is added to sources without.
- EXIF orientation is applied (a rotated JPEG decodes the way viewers show it).
- Sizes are checked from the header **before** pixels are decoded (``max_pixels``); PIL's own
  decompression-bomb error and warning are turned into :class:`ImageError` as well, so the
  effective limit is the smaller of ``max_pixels`` and ``PIL.Image.MAX_IMAGE_PIXELS``.
- Pixels are always loaded eagerly; truncated files fail. A PNG whose compressed data ends
  cleanly before the last row (PIL fills the missing rows with black and reports success) is
  caught: a plain 8-bit RGB or RGBA PNG (the challenge's kind, without chunks PIL would act
  on) is decoded by libspng, which refuses it itself, in half PIL's time; any other file by
  PIL, a PNG's image data then inflated once more and counted against the header.
  When something in the process has set ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES``, decoding is
  refused outright rather than silently accepting cut-short files. No global PIL state is
  mutated.
- Returned arrays may be read-only (views of PIL's buffers): copy before writing into them.
- All resampling is PIL bilinear with support scaled to the reduction (antialiased), the same
  filter :func:`glomx.data.adapt.adapt` uses.
"""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyspng
from PIL import Image, ImageFile, ImageOps

from glomx.errors import GlomxError

DEFAULT_MAX_PIXELS = 40_000_000
FORMATS = ("PNG", "JPEG", "TIFF", "BMP", "WEBP")
METHODS = ("resize", "pad", "center_crop", "crop_min")
FILLS = {"white": 255, "black": 0}
RESAMPLE = Image.Resampling.BILINEAR
_GREY = ("1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# chunks that change no pixel PIL decodes (physical size, time, colour-space hints)
_PLAIN_PNG_CHUNKS = {b"IHDR", b"IDAT", b"IEND", b"pHYs", b"tIME", b"sRGB", b"gAMA", b"cHRM"}
_IHDR_END = len(_PNG_SIGNATURE) + 8 + 13  # the signature, then IHDR's length, type and data
_PNG_SAMPLES = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # samples per pixel by PNG colour type
# Adam7 interlace passes: first column, first row, column step, row step
_ADAM7 = (
    (0, 0, 8, 8),
    (4, 0, 8, 8),
    (0, 4, 4, 8),
    (2, 0, 4, 4),
    (0, 2, 2, 4),
    (1, 0, 2, 2),
    (0, 1, 1, 2),
)
_INFLATE_STEP = 1 << 20  # bytes inflated at a time when checking a PNG


class ImageError(GlomxError, ValueError):
    """An image that cannot be decoded. ``str()`` is ``"<name>: <problem>"``; ``problem`` alone
    (what is wrong and the fix) suits a report that lists the name in a column of its own."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"{name}: {problem}")
        self.name = name
        self.problem = problem

    def __reduce__(self) -> tuple[type[ImageError], tuple[str, str]]:
        return ImageError, (self.name, self.problem)


def _label(source: Path | str | bytes, name: str | None) -> str:
    if name is not None:
        return name
    return "<image bytes>" if isinstance(source, bytes | bytearray) else str(source)


def _pixels(im: Image.Image, channels: int, label: str) -> np.ndarray:
    """A loaded PIL image of any supported mode → uint8 ``(H, W, channels)``."""
    if im.mode in _GREY:
        raise ImageError(
            label,
            f"greyscale image (PIL mode {im.mode}): the models read PAS stain colour, so it "
            "has no valid prediction; use the colour (RGB or RGBA) export of the patch",
        )
    if im.mode == "F":
        raise ImageError(
            label,
            "floating-point images are not supported; re-export the image as 8- or 16-bit PNG/TIFF",
        )
    bands = im.getbands()
    if "A" not in bands and "a" not in bands and "transparency" not in im.info:
        target = "RGB" if channels == 3 else "RGBA"
        return np.asarray(im if im.mode == target else im.convert(target))
    rgba = im if im.mode == "RGBA" else im.convert("RGBA")
    return _channels_of(np.asarray(rgba), channels)


def _channels_of(pixels: np.ndarray, channels: int) -> np.ndarray:
    """uint8 ``(H, W, 3|4)`` → ``channels``: an opaque alpha added or dropped, a partly
    transparent image composited onto white."""
    if pixels.shape[-1] == channels:
        return pixels
    if channels == 4:
        return np.dstack([pixels, np.full(pixels.shape[:2], 255, np.uint8)])
    if pixels[..., 3].min() == 255:
        return np.ascontiguousarray(pixels[..., :3])
    wide = pixels.astype(np.uint16)
    rgb, alpha = wide[..., :3], wide[..., 3:]
    return ((rgb * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)


def _png_chunks(data: bytes) -> list[bytes] | None:
    """The chunk types of PNG ``data`` (its signature checked) in order, or None when they are
    not a well-formed sequence of chunks (their headers walked only, nothing inflated)."""
    kinds, offset = [], len(_PNG_SIGNATURE)
    while offset + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, offset)
        kinds.append(kind)
        offset += 12 + length
        if kind == b"IEND":
            return kinds
    return None


def _plain_png_bytes(source: Path | bytes, max_pixels: int) -> bytes | None:
    """``source``'s bytes when its header is an 8-bit RGB or RGBA PNG's within the pixel
    limits and its size what such a PNG can weigh; else None, having read only the header."""
    if isinstance(source, bytes):
        head = source[:_IHDR_END]
    else:
        with open(source, "rb") as f:
            head = f.read(_IHDR_END)
    if len(head) < _IHDR_END or not head.startswith(_PNG_SIGNATURE + b"\0\0\0\rIHDR"):
        return None
    width, height, depth, colour = struct.unpack_from(">IIBB", head, len(_PNG_SIGNATURE) + 8)
    pixels = width * height
    limit = min(max_pixels, Image.MAX_IMAGE_PIXELS or max_pixels)  # PIL's bomb limit too
    if depth != 8 or colour not in (2, 6) or not 0 < pixels <= limit:
        return None
    size = len(source) if isinstance(source, bytes) else source.stat().st_size
    if size > 2 * pixels * _PNG_SAMPLES[colour] + (1 << 16):  # not what a PNG of it weighs
        return None
    return source if isinstance(source, bytes) else source.read_bytes()


def _spng(source: Path | bytes, channels: int, max_pixels: int) -> np.ndarray | None:
    """Pixels of a plain 8-bit RGB or RGBA PNG, the challenge's kind, decoded by libspng
    (``pyspng``): twice as fast as PIL, and it refuses a stream that ends before the last row
    itself, so no second inflate is needed. None for any other file (other modes, chunks PIL
    would act on: transparency, EXIF or XMP orientation, a palette; more bytes than such an
    image can take) and for one libspng refuses: those take PIL's path and its checks, which
    name the fault. Only the header is read before the size is known to be within limits."""
    try:
        data = _plain_png_bytes(source, max_pixels)
    except OSError:  # unreadable: PIL's path says so
        return None
    if data is None:
        return None
    kinds = _png_chunks(data)
    if kinds is None or not set(kinds) <= _PLAIN_PNG_CHUNKS:
        return None
    try:
        decoded = pyspng.load(data)
    except (RuntimeError, ValueError):
        return None
    return _channels_of(decoded, channels)


def _png_data_size(width: int, height: int, depth: int, colour: int, interlace: int) -> int:
    """Bytes a complete PNG's image data inflates to: per scanline of each (interlace) pass,
    one filter byte and the packed samples."""
    bits = depth * _PNG_SAMPLES[colour]
    total = 0
    for x0, y0, dx, dy in _ADAM7 if interlace else ((0, 0, 1, 1),):
        columns, rows = -(-(width - x0) // dx), -(-(height - y0) // dy)
        if columns > 0 and rows > 0:
            total += rows * (1 + (columns * bits + 7) // 8)
    return total


def _check_png_complete(source: Path | str | bytes, label: str) -> None:
    """Raise :class:`ImageError` when a PNG's image data inflates to fewer bytes than its header
    declares: a file whose compressed stream ends cleanly before the last row, which PIL
    decodes without error, filling the missing rows with black."""
    inflate, produced, expected = zlib.decompressobj(), 0, 0
    with io.BytesIO(source) if isinstance(source, bytes | bytearray) else open(source, "rb") as raw:
        raw.seek(len(_PNG_SIGNATURE))
        while True:
            head = raw.read(8)
            if len(head) < 8 or head[4:] == b"IEND":
                break
            length, kind = struct.unpack(">I4s", head)
            if kind == b"IHDR":  # always the first chunk (PIL checked)
                width, height, depth, colour, _, _, interlace = struct.unpack(
                    ">IIBBBBB", raw.read(13)
                )
                expected, length = _png_data_size(width, height, depth, colour, interlace), 0
            elif kind == b"IDAT":
                data, length = raw.read(length), 0
                while data and not inflate.eof and produced < expected:
                    produced += len(inflate.decompress(data, _INFLATE_STEP))
                    data = inflate.unconsumed_tail
                if produced >= expected:
                    return
            raw.seek(length + 4, io.SEEK_CUR)  # the rest of the chunk, then its CRC
    raise ImageError(
        label,
        f"corrupt or truncated image (pixel data ends after {produced} of {expected} bytes; "
        "the missing rows would decode as black); re-export or re-download the file, "
        "or remove it",
    )


def decode(
    source: Path | str | bytes,
    channels: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    name: str | None = None,
) -> np.ndarray:
    """Decode a file path or encoded bytes into uint8 ``(H, W, channels)``, channels 3 or 4.

    ``name`` is used in error messages (defaults to the path). Raises :class:`ImageError` for a
    missing, unreadable, truncated, empty or too large image.
    """
    if channels not in (3, 4):
        raise ValueError(f"channels must be 3 or 4, got {channels}")
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set in this process, so PIL would fill "
            "truncated images with black instead of failing; glomx refuses to decode under it. "
            "Find the code that sets it and remove that line."
        )
    label = _label(source, name)
    if isinstance(source, bytes | bytearray):
        stream: io.BytesIO | Path = io.BytesIO(source)
    else:
        stream = Path(source)
        if not stream.is_file():
            what = "is a directory, not an image" if stream.is_dir() else "does not exist"
            raise ImageError(label, f"file {what}; check the path or restore the file")
    plain = bytes(source) if isinstance(source, bytes | bytearray) else Path(source)
    fast = _spng(plain, channels, max_pixels)
    if fast is not None:
        return fast
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(stream, formats=FORMATS) as im:
                width, height = im.size
                if width * height == 0:
                    raise ImageError(
                        label, f"image is empty ({width}x{height} px); replace or remove the file"
                    )
                if width * height > max_pixels:
                    raise ImageError(
                        label,
                        f"{width}x{height} px exceeds the limit of {max_pixels} pixels "
                        "(decompression-bomb guard); downscale the image or raise max_pixels",
                    )
                im.load()
                if im.format == "PNG":
                    _check_png_complete(source, label)
                ImageOps.exif_transpose(im, in_place=True)
                return _pixels(im, channels, label)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageError(
            label, f"too large to decode safely ({err}); downscale the image or remove it"
        ) from err
    except Image.UnidentifiedImageError as err:
        raise ImageError(
            label,
            f"not a readable image (supported: {', '.join(FORMATS)}); "
            "replace it with a valid PNG/JPEG/TIFF or remove it",
        ) from err
    except (OSError, ValueError, SyntaxError, EOFError, struct.error, zlib.error) as err:
        raise ImageError(
            label,
            f"corrupt or truncated image ({err}); re-export or re-download the file, or remove it",
        ) from err


def _resize(img: np.ndarray, size: int) -> np.ndarray:
    """Square ``size``×``size`` resize (aspect not kept); no-op when already that shape."""
    if img.shape[:2] == (size, size):
        return img
    return np.asarray(Image.fromarray(img).resize((size, size), RESAMPLE))


def _pad_to(img: np.ndarray, height: int, width: int, fill: int) -> np.ndarray:
    """Centre ``img`` on a ``height``×``width`` canvas of ``fill`` (alpha fill 255)."""
    h, w, c = img.shape
    if (h, w) == (height, width):
        return img
    canvas = np.full((height, width, c), fill, dtype=np.uint8)
    if c == 4:
        canvas[..., 3] = 255
    top, left = (height - h) // 2, (width - w) // 2
    canvas[top : top + h, left : left + w] = img
    return canvas


def _crop_centre(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """The central ``height``×``width`` window (each no larger than the image's side)."""
    h, w = img.shape[:2]
    top, left = (h - height) // 2, (w - width) // 2
    return img[top : top + height, left : left + width]


def homogenise(img: np.ndarray, method: str, size: int, fill: str = "white") -> np.ndarray:
    """Bring a uint8 ``(H, W, C)`` image to ``(size, size, C)`` by one of :data:`METHODS`.

    - ``resize``: scale straight to ``size``×``size``; a non-square image is distorted.
    - ``pad``: centre on a square of side ``max(H, W)`` filled with ``fill`` (white/black;
      alpha 255), then scale to ``size``. Nothing is cut off and the aspect is kept.
    - ``center_crop``: the central ``size``×``size`` window at native resolution (no
      scaling, so magnification is kept); a side shorter than ``size`` is padded with ``fill``.
    - ``crop_min``: the central square of side ``min(H, W)``, then scaled to ``size``; the
      margins of the longer side are cut off.

    Centring puts the extra pixel of an odd difference on the bottom/right.
    """
    if img.ndim != 3 or img.dtype != np.uint8 or img.shape[-1] not in (3, 4):
        raise ValueError(f"expected uint8 (H, W, 3|4) image, got {img.dtype} {img.shape}")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if fill not in FILLS:
        raise ValueError(f"unknown fill {fill!r}; choose one of {', '.join(FILLS)}")
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    h, w = img.shape[:2]
    if method == "resize":
        out = _resize(img, size)
    elif method == "pad":
        side = max(h, w)
        out = _resize(_pad_to(img, side, side, FILLS[fill]), size)
    elif method == "center_crop":
        cropped = _crop_centre(img, min(h, size), min(w, size))
        out = _pad_to(cropped, size, size, FILLS[fill])
    else:
        side = min(h, w)
        out = _resize(_crop_centre(img, side, side), size)
    return np.ascontiguousarray(out)


def image_size(source: bytes) -> tuple[int, int] | None:
    """Width and height of encoded image bytes from the header alone, no pixel decoded; None
    when the header cannot be read (:func:`decode` then says why)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(source), formats=FORMATS) as im:
                return im.size
    except (Image.DecompressionBombError, OSError, ValueError, SyntaxError, struct.error):
        return None


@dataclass(frozen=True)
class Preprocessing:
    """How a raw image file becomes a prepared array: prepare's image params, which a saved
    model carries so that predict and serve homogenise new files exactly as training did."""

    size: int
    channels: int
    method: str
    fill: str


def load_image(
    source: Path | str | bytes,
    pre: Preprocessing,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    name: str | None = None,
) -> np.ndarray:
    """Decode and homogenise one image exactly as the prepare stage does."""
    img = decode(source, pre.channels, max_pixels, name=name)
    return homogenise(img, pre.method, pre.size, pre.fill)
