"""decode / homogenise / load_image on tiny generated images of every supported kind."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from glomx.data.images import (
    METHODS,
    ImageError,
    Preprocessing,
    _pixels,
    _spng,
    decode,
    homogenise,
    load_image,
)


def _rgb(h: int = 20, w: int = 30, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _encode(im: Image.Image, fmt: str = "PNG", **kwargs: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _raw_png(
    width: int, height: int, depth: int, colour: int, rows: bytes, interlace: int = 0
) -> bytes:
    """A hand-built PNG (PIL cannot write every bit depth/colour type we must read)."""
    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, interlace)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(rows))
        + _png_chunk(b"IEND", b"")
    )


# --- decode: formats and modes -------------------------------------------------------------


def test_rgba_opaque_drops_alpha_or_keeps_it(tmp_path: Path) -> None:
    rgb = _rgb()
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    path = tmp_path / "S-1_PAS_1of1_abc.png"
    Image.fromarray(rgba).save(path)
    out3 = decode(path, 3)
    out4 = decode(path, 4)
    assert out3.dtype == np.uint8 and out3.shape == (20, 30, 3)
    np.testing.assert_array_equal(out3, rgb)
    np.testing.assert_array_equal(out4, rgba)


def test_translucent_alpha_is_composited_onto_white() -> None:
    rgba = np.zeros((2, 2, 4), np.uint8)  # black pixels
    rgba[..., 3] = [[0, 255], [128, 255]]
    out = decode(_encode(Image.fromarray(rgba)), 3)
    assert out[0, 0].tolist() == [255, 255, 255]  # fully transparent → white
    assert out[0, 1].tolist() == [0, 0, 0]
    assert out[1, 0].tolist() == [127, 127, 127]  # half transparent black on white
    np.testing.assert_array_equal(decode(_encode(Image.fromarray(rgba)), 4), rgba)


def test_rgb_gains_opaque_alpha() -> None:
    rgb = _rgb()
    out = decode(_encode(Image.fromarray(rgb)), 4)
    np.testing.assert_array_equal(out[..., :3], rgb)
    assert (out[..., 3] == 255).all()


@pytest.mark.parametrize("mode", ["L", "LA", "1"])
def test_greyscale_is_refused_with_the_way_out(mode: str) -> None:
    grey = np.array([[0, 100], [200, 255]], np.uint8)
    with pytest.raises(ImageError, match=rf"greyscale image \(PIL mode {mode}\).*RGB or RGBA"):
        decode(_encode(Image.fromarray(grey).convert(mode)), 3)


def test_palette_with_and_without_transparency() -> None:
    im = Image.new("P", (2, 1))
    im.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    im.putpixel((0, 0), 0)
    im.putpixel((1, 0), 1)
    plain = decode(_encode(im), 3)
    assert plain[0].tolist() == [[255, 0, 0], [0, 0, 255]]
    transparent = decode(_encode(im, transparency=1), 3)
    assert transparent[0].tolist() == [[255, 0, 0], [255, 255, 255]]


def test_sixteen_bit_grey_is_refused_in_png_and_tiff() -> None:
    values = np.array([[0, 255, 32768, 65535]], dtype=">u2")
    with pytest.raises(ImageError, match="greyscale image"):
        decode(_raw_png(4, 1, 16, 0, b"\x00" + values.tobytes()), 3)
    with pytest.raises(ImageError, match="greyscale image"):
        decode(_encode(Image.fromarray(np.array([[32768, 65535]], np.uint16)), "TIFF"), 3)
    with pytest.raises(ImageError, match=r"greyscale image \(PIL mode I\)"):
        decode(_encode(Image.fromarray(np.array([[-1, 70000]], np.int32)), "TIFF"), 3)


def test_sixteen_bit_rgb_is_scaled_not_clipped() -> None:
    pixel = np.array([[[65535, 32768, 256]]], dtype=">u2")
    out = decode(_raw_png(1, 1, 16, 2, b"\x00" + pixel.tobytes()), 3)
    assert out[0, 0].tolist() == [255, 128, 1]


def test_jpeg_and_tiff_decode() -> None:
    flat = np.full((16, 16, 3), (200, 60, 150), np.uint8)
    out = decode(_encode(Image.fromarray(flat), "JPEG", quality=95), 3)
    assert out.shape == (16, 16, 3)
    assert np.abs(out.astype(int) - flat).max() <= 3
    np.testing.assert_array_equal(decode(_encode(Image.fromarray(flat), "TIFF"), 3), flat)


def test_exif_orientation_is_applied() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    landscape = Image.fromarray(np.full((10, 20, 3), 128, np.uint8))
    assert decode(_encode(landscape, "JPEG", exif=exif.tobytes()), 3).shape == (20, 10, 3)


def test_str_path_and_name_in_errors(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    Image.fromarray(_rgb()).save(path)
    assert decode(str(path), 3).shape == (20, 30, 3)
    with pytest.raises(ImageError, match=r"patient-7\.png"):
        decode(b"junk", 3, name="patient-7.png")


# --- decode: rejections --------------------------------------------------------------------


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "gone.png"
    with pytest.raises(ImageError, match=r"gone\.png.*does not exist"):
        decode(path, 3)
    with pytest.raises(ImageError, match="directory"):
        decode(tmp_path, 3)


def test_not_an_image(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("name,ground truth\n")
    with pytest.raises(ImageError, match=r"notes\.png.*not a readable image"):
        decode(path, 3)


def test_truncated_png_fails_on_load(tmp_path: Path) -> None:
    data = _encode(Image.fromarray(_rgb(64, 64)), compress_level=0)
    path = tmp_path / "cut.png"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match=r"cut\.png.*(corrupt|truncated)"):
        decode(path, 3)


def test_corrupt_png_data(tmp_path: Path) -> None:
    data = bytearray(_encode(Image.fromarray(_rgb(64, 64))))
    start = data.index(b"IDAT") + 8
    data[start : start + 200] = bytes(200)
    path = tmp_path / "bad.png"
    path.write_bytes(bytes(data))
    with pytest.raises(ImageError, match=r"bad\.png"):
        decode(path, 3)


def test_png_cut_short_is_refused_though_pil_accepts_it(
    cut_short_png: bytes, tmp_path: Path
) -> None:
    with Image.open(io.BytesIO(cut_short_png)) as im:  # the hole: PIL alone says nothing
        pixels = np.asarray(im.convert("RGB"))
    assert pixels[:10].any() and not pixels[10:].any()
    path = tmp_path / "cut.png"
    path.write_bytes(cut_short_png)
    for source in (path, cut_short_png):
        with pytest.raises(ImageError) as err:
            decode(source, 3, name="cut.png")
        assert str(err.value).startswith("cut.png: corrupt or truncated image")
        assert "ends after 1930 of 12352 bytes" in err.value.problem  # 10 of 64 rows of 193 B
        assert "cut.png" not in err.value.problem  # the name once, for reports that list it


def _adam7_rows(pixels: np.ndarray) -> bytes:
    """The scanlines of an interlaced PNG of ``pixels``: the seven Adam7 sub-images in turn."""
    passes = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
              (0, 1, 1, 2))  # fmt: skip
    sub_images = (pixels[y0::dy, x0::dx] for x0, y0, dx, dy in passes)
    return b"".join(b"\0" + row.tobytes() for sub in sub_images for row in sub if row.size)


def test_interlaced_png_is_complete_or_refused() -> None:
    pixels = _rgb(11, 13, seed=9)
    rows = _adam7_rows(pixels)
    np.testing.assert_array_equal(decode(_raw_png(13, 11, 8, 2, rows, interlace=1), 3), pixels)
    short = rows[: -(1 + 13 * 3)]  # the last pass without its last row: a clean early end
    with pytest.raises(ImageError, match="pixel data ends after"):
        decode(_raw_png(13, 11, 8, 2, short, interlace=1), 3)


def test_pil_load_truncated_images_flag_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES is set"):
        decode(_encode(Image.fromarray(_rgb())), 3)


def test_huge_image_is_refused_before_decoding(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    Image.fromarray(_rgb(40, 50)).save(path)
    with pytest.raises(ImageError, match=r"big\.png.*50x40.*max_pixels"):
        decode(path, 3, max_pixels=1999)
    assert decode(path, 3, max_pixels=2000).shape == (40, 50, 3)


@pytest.mark.parametrize("side", [10_000, 30_000])  # above PIL's warning / error limit
def test_pil_decompression_bomb_is_refused(side: int) -> None:
    # a header claiming a huge image and no pixel data; our own limit set out of the way
    data = _raw_png(side, side, 8, 2, b"")
    with pytest.raises(ImageError, match=r"bomb\.png: too large"):
        decode(data, 3, max_pixels=10**10, name="bomb.png")


def test_zero_size_image_is_refused() -> None:
    with pytest.raises(ImageError, match=r"empty\.png"):
        decode(_raw_png(0, 5, 8, 2, b""), 3, name="empty.png")


def test_bad_channels() -> None:
    with pytest.raises(ValueError, match="channels"):
        decode(b"", 1)


# --- homogenise ----------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("shape", [(20, 30, 3), (30, 20, 4), (50, 50, 3), (8, 12, 3)])
def test_every_method_gives_the_square(method: str, shape: tuple[int, int, int]) -> None:
    img = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    out = homogenise(img, method, 16)
    assert out.shape == (16, 16, shape[2]) and out.dtype == np.uint8


@pytest.mark.parametrize(("fill", "value"), [("white", 255), ("black", 0)])
def test_pad_keeps_pixels_and_fills(fill: str, value: int) -> None:
    img = np.random.default_rng(2).integers(1, 255, (10, 16, 4), dtype=np.uint8)
    out = homogenise(img, "pad", 16, fill)  # side = 16: no resize needed
    np.testing.assert_array_equal(out[3:13], img)
    assert (out[:3, :, :3] == value).all() and (out[13:, :, :3] == value).all()
    assert (out[:3, :, 3] == 255).all()  # padded alpha is opaque


def test_pad_then_resize_keeps_aspect() -> None:
    img = np.zeros((20, 40, 3), np.uint8)  # black landscape strip
    out = homogenise(img, "pad", 20, "white")
    assert (out[:4] == 255).all() and (out[-4:] == 255).all()  # white bands top and bottom
    assert (out[6:14] == 0).all()


def test_center_crop_is_the_native_centre() -> None:
    img = np.random.default_rng(3).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    out = homogenise(img, "center_crop", 16)
    np.testing.assert_array_equal(out, img[7:23, 12:28])


def test_center_crop_pads_short_sides() -> None:
    img = np.zeros((10, 40, 3), np.uint8)
    out = homogenise(img, "center_crop", 16, "white")
    np.testing.assert_array_equal(out[3:13], img[:, 12:28])
    assert (out[:3] == 255).all() and (out[13:] == 255).all()


def test_crop_min_keeps_the_centre_square() -> None:
    img = np.random.default_rng(4).integers(0, 256, (20, 32, 3), dtype=np.uint8)
    np.testing.assert_array_equal(homogenise(img, "crop_min", 20), img[:, 6:26])
    tall = np.zeros((40, 20, 3), np.uint8)
    tall[10:30] = 200  # the central square is uniformly 200, the cut margins are black
    assert (homogenise(tall, "crop_min", 10) == 200).all()


def test_resize_distorts_to_the_square() -> None:
    img = np.zeros((10, 40, 3), np.uint8)
    img[:, 20:] = 255  # right half white
    out = homogenise(img, "resize", 20)
    assert (out[:, :9] == 0).all() and (out[:, 11:] == 255).all()


def test_homogenise_rejects_bad_arguments() -> None:
    img = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(ValueError, match="method"):
        homogenise(img, "stretch", 4)
    with pytest.raises(ValueError, match="fill"):
        homogenise(img, "pad", 4, "grey")
    with pytest.raises(ValueError, match="uint8"):
        homogenise(img.astype(np.float32), "pad", 4)


def test_load_image_is_decode_then_homogenise(tmp_path: Path) -> None:
    rgba = np.dstack([_rgb(24, 40), np.full((24, 40), 255, np.uint8)])
    path = tmp_path / "x.png"
    Image.fromarray(rgba).save(path)
    pre = Preprocessing(size=16, channels=3, method="pad", fill="black")
    expected = homogenise(decode(path, 3), "pad", 16, "black")
    np.testing.assert_array_equal(load_image(path, pre), expected)
    np.testing.assert_array_equal(load_image(path.read_bytes(), pre), expected)


def _through_pil(data: bytes, channels: int) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return _pixels(im, channels, "x")


def _exif_png(rgb: np.ndarray) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    return _encode(Image.fromarray(rgb), exif=exif.tobytes())


def test_plain_pngs_take_libspngs_path_and_decode_as_pil_does(real_data: Path) -> None:
    """The challenge's kind of PNG (8-bit RGB or RGBA, no chunk PIL acts on) is decoded by
    libspng, pixel for pixel what PIL gives, transparency and channels handled alike."""
    translucent = np.dstack([_rgb(9, 7), np.arange(63, dtype=np.uint8).reshape(9, 7) * 4])
    opaque = np.dstack([_rgb(9, 7, seed=1), np.full((9, 7), 255, np.uint8)])
    real = sorted(real_data.glob("*/*.png"))[:4]
    pngs = [_encode(Image.fromarray(a)) for a in (_rgb(), translucent, opaque)]
    pngs += [p.read_bytes() for p in real]
    pngs.append(_encode(Image.fromarray(_rgb(33, 17)), optimize=True))  # other filters
    for data in pngs:
        for channels in (3, 4):
            fast = _spng(data, channels, 10**8)
            assert fast is not None
            np.testing.assert_array_equal(fast, _through_pil(data, channels))
            np.testing.assert_array_equal(decode(data, channels), fast)
    assert _spng(real[0], 3, 10**8) is not None  # a path, read whole only once within limits


def test_pngs_pil_acts_on_take_pils_path(cut_short_png: bytes) -> None:
    """Transparency by a tRNS chunk, EXIF orientation, other depths and modes, a stream cut
    short, an image over the pixel limit: libspng's path declines them and PIL's decides."""
    im = Image.fromarray(_rgb(4, 6))
    declined = {
        "tRNS": _encode(im, transparency=(0, 0, 0)),
        "eXIf": _exif_png(_rgb(4, 6)),
        "palette": _encode(im.convert("P")),
        "16 bit": _raw_png(2, 1, 16, 2, b"\0" + bytes(12)),
        "cut short": cut_short_png,
        "not a PNG": _encode(im, "BMP"),
    }
    for what, data in declined.items():
        assert _spng(data, 3, 10**8) is None, what
    assert _spng(_encode(im), 3, 23) is None  # 24 pixels over a limit of 23
    assert decode(declined["eXIf"], 3).shape == (6, 4, 3)  # rotated, as PIL's path does


def test_real_patches_decode_and_pad(real_data: Path) -> None:
    paths = sorted((real_data / "globally_sclerotic_glomeruli").glob("*.png"))[:3]
    pre = Preprocessing(size=64, channels=4, method="pad", fill="white")
    for path in paths:
        raw = decode(path, 3)
        assert raw.shape == (224, 224, 3) and raw.std() > 10  # tissue, not a blank
        out = load_image(path, pre)
        assert out.shape == (64, 64, 4) and (out[..., 3] == 255).all()
