"""engine.preprocess and ``img1688 preprocess``: real files written with Pillow, real decoding."""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

import engine.imaging
from engine.commands import preprocess as command
from engine.preprocess import (
    REASONS,
    PreparedImage,
    PreprocessFailure,
    PreprocessOptions,
    prepare_image,
)

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


# ---------------------------------------------------------------- helpers


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """A photo-like RGB image: smooth colour fields, different for each seed."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
    return coarse.resize((width, height), Image.Resampling.BICUBIC)


def encode(img: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **params)
    return buffer.getvalue()


def prepared(
    source: Path | bytes, options: PreprocessOptions = PreprocessOptions()
) -> PreparedImage:
    result = prepare_image(source, options)
    assert isinstance(result, PreparedImage), result
    return result


def decoded(result: PreparedImage) -> Image.Image:
    img = Image.open(io.BytesIO(result.jpeg))
    img.load()
    return img


def near(pixel: tuple[int, ...], expected: tuple[int, ...], tolerance: int = 12) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, expected, strict=True))


def assert_gateway_ready(result: PreparedImage, options: PreprocessOptions) -> Image.Image:
    img = decoded(result)
    assert img.format == "JPEG"
    assert img.mode == "RGB"
    assert max(img.size) <= options.max_side
    assert len(result.jpeg) <= options.max_bytes
    assert (img.width, img.height) == (result.width, result.height)
    assert "exif" not in img.info
    return img


@pytest.fixture(scope="module")
def huge_jpeg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("huge") / "huge.jpg"
    photo(6000, 4000).save(path, quality=90)
    return path


# ---------------------------------------------------------------- sizes and the gateway's rules


def test_huge_jpeg_is_drafted_then_resized_to_800(huge_jpeg: Path) -> None:
    result = prepared(huge_jpeg)
    assert_gateway_ready(result, PreprocessOptions())
    assert (result.width, result.height) == (800, 533)
    assert result.steps[:2] == ("draft 1/4", "resize 800")  # 1/8 would give 750 < 800
    assert result.source_size == (6000, 4000)
    assert (result.source_format, result.source_mode) == ("JPEG", "RGB")
    assert result.sha256 == hashlib.sha256(huge_jpeg.read_bytes()).hexdigest()
    assert result.source_bytes == huge_jpeg.stat().st_size
    assert result.quality == 90
    assert result.base64().startswith("/9j/")  # base64 of the JPEG SOI marker


def test_noise_lowers_quality_then_size_to_fit_max_bytes() -> None:
    noise = np.random.default_rng(1).integers(0, 256, (900, 900, 3), dtype=np.uint8)
    options = PreprocessOptions(max_bytes=60_000)
    result = prepared(encode(Image.fromarray(noise), "PNG"), options)
    assert_gateway_ready(result, options)
    assert result.quality == options.min_quality
    assert f"quality {options.min_quality}" in result.steps
    assert any(step.startswith("fit ") for step in result.steps)


def test_quality_only_drops_as_far_as_needed() -> None:
    source = encode(photo(1200, 900, seed=2), "PNG")
    generous = prepared(source)
    options = PreprocessOptions(max_bytes=len(generous.jpeg) - 1)
    result = prepared(source, options)
    assert_gateway_ready(result, options)
    assert options.min_quality <= result.quality < options.quality
    assert not any(step.startswith("fit ") for step in result.steps)


def test_cannot_fit_an_absurd_byte_limit() -> None:
    noise = np.random.default_rng(3).integers(0, 256, (300, 300, 3), dtype=np.uint8)
    result = prepare_image(encode(Image.fromarray(noise), "PNG"), PreprocessOptions(max_bytes=200))
    assert isinstance(result, PreprocessFailure)
    assert result.reason == "cannot_fit"
    assert result.sha256 is not None


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "WEBP", "TIFF", "GIF"])
def test_small_images_are_never_upscaled(fmt: str) -> None:
    result = prepared(encode(photo(120, 80), fmt))
    assert (result.width, result.height) == (120, 80)
    assert not any(step.startswith(("resize", "draft")) for step in result.steps)
    assert_gateway_ready(result, PreprocessOptions())


def test_max_side_is_configurable(huge_jpeg: Path) -> None:
    options = PreprocessOptions(max_side=300)
    result = prepared(huge_jpeg, options)
    assert (result.width, result.height) == (300, 200)
    assert "draft 1/8" in result.steps
    assert_gateway_ready(result, options)


def test_animated_gif_gives_its_first_frame() -> None:
    frames = [Image.new("RGB", (64, 48), colour) for colour in (RED, BLUE, (0, 255, 0))]
    source = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)
    result = prepared(source)
    assert "first_frame" in result.steps
    assert near(decoded(result).getpixel((32, 24)), RED)


@pytest.mark.parametrize("mode", ["L", "1"])
def test_grayscale_and_bilevel_become_rgb(mode: str) -> None:
    img = Image.new(mode, (40, 40), 0)
    img.paste(255 if mode == "L" else 1, (20, 0, 40, 40))
    result = prepared(encode(img, "PNG"))
    out = assert_gateway_ready(result, PreprocessOptions())
    assert near(out.getpixel((5, 20)), (0, 0, 0))
    assert near(out.getpixel((35, 20)), WHITE)


# ---------------------------------------------------------------- transparency


def _rgba_png() -> bytes:
    img = Image.new("RGBA", (40, 40), (0, 0, 0, 0))  # transparent *black*: must not show
    img.paste((255, 0, 0, 255), (20, 0, 40, 40))
    return encode(img, "PNG")


def _la_png() -> bytes:
    img = Image.new("LA", (40, 40), (0, 0))
    img.paste((60, 255), (20, 0, 40, 40))
    return encode(img, "PNG")


def _palette_gif() -> bytes:
    img = Image.new("P", (40, 40), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    img.paste(1, (20, 0, 40, 40))
    return encode(img, "GIF", transparency=0)


def _rgb_png_with_trns() -> bytes:
    img = Image.new("RGB", (40, 40), (0, 0, 0))
    img.paste(RED, (20, 0, 40, 40))
    return encode(img, "PNG", transparency=(0, 0, 0))


def _half_alpha_webp() -> bytes:
    img = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
    img.paste((255, 0, 0, 255), (20, 0, 40, 40))
    return encode(img, "WEBP", lossless=True)


@pytest.mark.parametrize(
    ("build", "opaque"),
    [
        (_rgba_png, RED),
        (_la_png, (60, 60, 60)),
        (_palette_gif, RED),
        (_rgb_png_with_trns, RED),
        (_half_alpha_webp, RED),
    ],
)
def test_transparent_pixels_come_out_white(
    build: Callable[[], bytes], opaque: tuple[int, int, int]
) -> None:
    result = prepared(build())
    out = assert_gateway_ready(result, PreprocessOptions())
    assert "alpha->white" in result.steps
    assert near(out.getpixel((5, 20)), WHITE)
    assert near(out.getpixel((35, 20)), opaque)


def test_semi_transparent_pixels_blend_onto_white() -> None:
    result = prepared(encode(Image.new("RGBA", (16, 16), (0, 0, 0, 128)), "PNG"))
    assert near(decoded(result).getpixel((8, 8)), (127, 127, 127), tolerance=4)


def test_opaque_alpha_channel_is_dropped_silently() -> None:
    result = prepared(encode(Image.new("RGBA", (16, 16), (0, 0, 255, 255)), "PNG"))
    assert "alpha->white" not in result.steps
    assert near(decoded(result).getpixel((8, 8)), BLUE)


# ---------------------------------------------------------------- CMYK


def _cmyk_jpeg_without_adobe_marker(cmyk: tuple[int, int, int, int]) -> bytes:
    """A CMYK JPEG with plain (non-inverted) samples and no APP14 "Adobe" marker.

    libjpeg writes the marker and Pillow inverts on save, so save the inverted colour and cut
    the marker segment out.
    """
    inverted = tuple(255 - value for value in cmyk)
    data = encode(Image.new("CMYK", (32, 32), inverted), "JPEG", quality=95)
    start = data.index(b"\xff\xee")
    length = struct.unpack(">H", data[start + 2 : start + 4])[0]
    stripped = data[:start] + data[start + 2 + length :]
    assert "adobe" not in Image.open(io.BytesIO(stripped)).info
    return stripped


# sRGB's and Adobe RGB (1998)'s primaries as ICC profiles hold them: linear RGB -> XYZ (D50).
_SRGB_TO_XYZ = (
    (0.4360747, 0.3850649, 0.1430804),
    (0.2225045, 0.7168786, 0.0606169),
    (0.0139322, 0.0971045, 0.7141733),
)
_ADOBE_TO_XYZ = (
    (0.60974, 0.20528, 0.14919),
    (0.31111, 0.62567, 0.06322),
    (0.01947, 0.06087, 0.74457),
)
_ADOBE_GAMMA = 563 / 256  # 2.2 as a u8Fixed8, exactly what Adobe's profile stores


def _s15(value: float) -> bytes:
    return struct.pack(">i", round(value * 65536))


def _xyz(x: float, y: float, z: float) -> bytes:
    return b"XYZ " + bytes(4) + _s15(x) + _s15(y) + _s15(z)


def _lab16(rgb: tuple[int, int, int]) -> list[int]:
    """sRGB -> ICC v2 16-bit Lab (D50), the PCS encoding of a lut16 table."""
    linear = [
        c / 255 / 12.92 if c / 255 <= 0.04045 else ((c / 255 + 0.055) / 1.055) ** 2.4 for c in rgb
    ]
    x, y, z = (sum(m * c for m, c in zip(row, linear, strict=True)) for row in _SRGB_TO_XYZ)

    def f(t: float) -> float:
        return t ** (1 / 3) if t > (6 / 29) ** 3 else t / (3 * (6 / 29) ** 2) + 4 / 29

    fx, fy, fz = f(x / 0.9642), f(y), f(z / 0.8249)
    lab = (116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz))
    encoded = (lab[0] / 100 * 0xFF00, (lab[1] + 128) * 256, (lab[2] + 128) * 256)
    return [min(65535, max(0, round(v))) for v in encoded]


def cmyk_icc_profile(corner: Callable[[int, int, int, int], tuple[int, int, int]]) -> bytes:
    """A minimal ICC v2 CMYK output profile: one A2B0 lut16 with a 2-point grid per ink.

    ``corner(c, m, y, k)`` (each 0 or 1) gives the sRGB colour of each grid corner.
    """
    corners = [(c, m, y, k) for c in (0, 1) for m in (0, 1) for y in (0, 1) for k in (0, 1)]
    clut = b"".join(struct.pack(">3H", *_lab16(corner(*point))) for point in corners)
    identity = b"".join(_s15(1.0 if i % 4 == 0 else 0.0) for i in range(9))
    ramp = struct.pack(">2H", 0, 65535)
    lut = b"mft2" + bytes(4) + bytes([4, 3, 2, 0]) + identity + struct.pack(">HH", 2, 2)
    lut += ramp * 4 + clut + ramp * 3
    tags = [
        (b"desc", _desc(b"test CMYK")),
        (b"wtpt", _xyz(0.9642, 1.0, 0.8249)),
        (b"cprt", b"text" + bytes(4) + b"none\0"),
        (b"A2B0", lut),
    ]
    return _icc_profile(b"prtrCMYKLab ", tags)


def _icc_profile(kind: bytes, tags: list[tuple[bytes, bytes]]) -> bytes:
    """An ICC v2 profile: ``kind`` is the device class, colour space and PCS signatures."""
    offset = 128 + 4 + 12 * len(tags)
    table = body = b""
    for signature, data in tags:
        data += bytes(-len(data) % 4)
        table += signature + struct.pack(">II", offset + len(body), len(data))
        body += data
    header = struct.pack(">I", offset + len(body)) + bytes(4) + struct.pack(">I", 0x02100000)
    header += kind + bytes(12) + b"acsp" + bytes(28)
    header += _s15(0.9642) + _s15(1.0) + _s15(0.8249) + bytes(48)
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + body


def _desc(name: bytes) -> bytes:
    return b"desc" + bytes(4) + struct.pack(">I", len(name) + 1) + name + b"\0" + bytes(8 + 3 + 67)


def _press_red(c: int, m: int, y: int, k: int) -> tuple[int, int, int]:
    """Naive CMYK everywhere except a press-like red for the pure M+Y corner."""
    if (c, m, y, k) == (0, 1, 1, 0):
        return (210, 35, 45)
    return (
        round(255 * (1 - c) * (1 - k)),
        round(255 * (1 - m) * (1 - k)),
        round(255 * (1 - y) * (1 - k)),
    )


CMYK_RED = (0, 255, 255, 0)


def test_cmyk_red_stays_red_from_an_adobe_jpeg() -> None:
    source = encode(Image.new("CMYK", (32, 32), CMYK_RED), "JPEG", quality=95)
    assert "adobe" in Image.open(io.BytesIO(source)).info  # libjpeg marks it, samples inverted
    result = prepared(source)
    assert result.source_mode == "CMYK"
    assert "cmyk->rgb" in result.steps
    assert near(decoded(result).getpixel((16, 16)), RED)


def test_cmyk_red_stays_red_from_a_jpeg_without_adobe_marker() -> None:
    result = prepared(_cmyk_jpeg_without_adobe_marker(CMYK_RED))
    assert "cmyk_uninverted" in result.steps
    assert near(decoded(result).getpixel((16, 16)), RED)


def test_cmyk_red_stays_red_from_a_tiff() -> None:
    result = prepared(encode(Image.new("CMYK", (32, 32), CMYK_RED), "TIFF"))
    assert "cmyk_uninverted" not in result.steps
    assert near(decoded(result).getpixel((16, 16)), RED)


@pytest.mark.parametrize("container", ["JPEG", "TIFF"])
def test_cmyk_goes_through_its_embedded_icc_profile(container: str) -> None:
    icc = cmyk_icc_profile(_press_red)
    img = Image.new("CMYK", (32, 32), CMYK_RED)
    result = prepared(encode(img, container, icc_profile=icc))
    assert "cmyk_icc" in result.steps
    # The profile's red, not the naive (255, 0, 0): the ICC path was really taken.
    assert near(decoded(result).getpixel((16, 16)), (210, 35, 45), tolerance=8)


def test_a_broken_icc_profile_falls_back_to_the_naive_conversion() -> None:
    img = Image.new("CMYK", (32, 32), CMYK_RED)
    result = prepared(encode(img, "JPEG", icc_profile=b"not a profile" * 10))
    assert result.steps[-2:] == ("icc_invalid", "cmyk->rgb")
    assert near(decoded(result).getpixel((16, 16)), RED)


def _system_cmyk_profiles() -> list[Path]:
    found = []
    for folder in (Path("/usr/share/color/icc"), Path("/usr/local/share/color/icc")):
        for path in sorted(folder.rglob("*")) if folder.is_dir() else []:
            if path.suffix.lower() in (".icc", ".icm") and path.read_bytes()[16:20] == b"CMYK":
                found.append(path)
    return found


def test_cmyk_red_through_a_system_press_profile() -> None:
    profiles = _system_cmyk_profiles()
    if not profiles:
        pytest.skip("no CMYK ICC profile installed under /usr/share/color/icc")
    img = Image.new("CMYK", (32, 32), CMYK_RED)
    result = prepared(encode(img, "JPEG", icc_profile=profiles[0].read_bytes()))
    red, green, blue = decoded(result).getpixel((16, 16))
    assert "cmyk_icc" in result.steps
    assert red > 150 and green < 100 and blue < 100


# ---------------------------------------------------------------- deep samples


@pytest.mark.parametrize(("dtype", "fmt"), [("<u2", "PNG"), ("<u2", "TIFF"), (">u2", "TIFF")])
def test_16bit_mid_grey_is_scaled_not_clipped(dtype: str, fmt: str) -> None:
    img = Image.fromarray(np.full((24, 24), 32768, dtype=dtype))
    result = prepared(encode(img, fmt))
    assert result.source_mode.startswith("I;16")
    assert "16bit_scaled" in result.steps
    assert near(decoded(result).getpixel((12, 12)), (128, 128, 128), tolerance=1)


def test_32bit_integer_gradient_is_scaled() -> None:
    ramp = np.linspace(0, 2**31 - 1, 256).astype(np.int32)
    result = prepared(encode(Image.fromarray(np.tile(ramp, (16, 1))), "TIFF"))
    assert result.source_mode == "I"
    assert "32bit_scaled" in result.steps
    row = [decoded(result).getpixel((x, 8))[0] for x in (2, 128, 253)]
    assert row[0] < 10 and abs(row[1] - 128) <= 6 and row[2] > 245


def test_32bit_integer_holding_16bit_samples_is_scaled_as_16bit() -> None:
    img = Image.fromarray(np.full((24, 24), 32768, dtype=np.int32))
    result = prepared(encode(img, "TIFF"))
    assert "16bit_scaled" in result.steps
    assert near(decoded(result).getpixel((12, 12)), (128, 128, 128), tolerance=1)


def test_float_samples_are_scaled() -> None:
    img = Image.fromarray(np.full((24, 24), 0.5, dtype=np.float32))
    result = prepared(encode(img, "TIFF"))
    assert "float_scaled" in result.steps
    assert near(decoded(result).getpixel((12, 12)), (128, 128, 128), tolerance=1)


# ---------------------------------------------------------------- orientation


def _upright(
    width: int, height: int, background: tuple[int, int, int] = (128, 128, 128)
) -> Image.Image:
    """Grey (or ``background``) with a red block top-left and a blue block top-right: no
    symmetry survives."""
    img = Image.new("RGB", (width, height), background)
    block_w, block_h = width // 4, height // 4
    img.paste(RED, (0, 0, block_w, block_h))
    img.paste(BLUE, (width - block_w, 0, width, block_h))
    return img


# How to store an upright picture so that applying orientation N shows it upright again.
_STORE = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_comes_out_upright(orientation: int) -> None:
    upright = _upright(1800, 1200)
    transpose = _STORE[orientation]
    stored = upright if transpose is None else upright.transpose(transpose)
    exif = Image.Exif()
    exif[0x0112] = orientation
    result = prepared(encode(stored, "JPEG", quality=92, exif=exif.tobytes()))
    out = assert_gateway_ready(result, PreprocessOptions())
    assert (out.width, out.height) == (800, 533)
    assert "draft 1/2" in result.steps
    assert ("exif_transpose" in result.steps) == (orientation != 1)
    assert near(out.getpixel((40, 40)), RED, tolerance=30)
    assert near(out.getpixel((760, 40)), BLUE, tolerance=30)
    assert near(out.getpixel((400, 480)), (128, 128, 128), tolerance=30)


@pytest.mark.parametrize("orientation", [0, 9, 65535])
def test_an_invalid_orientation_counts_as_none(orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    result = prepared(encode(_upright(300, 200), "JPEG", exif=exif.tobytes()))
    assert "exif_transpose" not in result.steps
    assert (result.width, result.height) == (300, 200)
    assert near(decoded(result).getpixel((10, 10)), RED, tolerance=30)


def adobe_rgb_profile() -> bytes:
    """An ICC v2 display profile for Adobe RGB (1998): a wider gamut than sRGB, in greens."""
    gamma = b"curv" + bytes(4) + struct.pack(">IH", 1, round(_ADOBE_GAMMA * 256))
    columns = list(zip(*_ADOBE_TO_XYZ, strict=True))  # the XYZ of each primary
    tags = [
        (b"desc", _desc(b"test Adobe RGB (1998)")),
        (b"wtpt", _xyz(0.9642, 1.0, 0.8249)),
        (b"cprt", b"text" + bytes(4) + b"none\0"),
        (b"rXYZ", _xyz(*columns[0])),
        (b"gXYZ", _xyz(*columns[1])),
        (b"bXYZ", _xyz(*columns[2])),
        (b"rTRC", gamma),
        (b"gTRC", gamma),
        (b"bTRC", gamma),
    ]
    return _icc_profile(b"mntrRGB XYZ ", tags)


def adobe_to_srgb(rgb: tuple[int, int, int]) -> tuple[int, ...]:
    """What an Adobe RGB colour is in sRGB, by the two profiles' matrices and curves."""
    linear = (np.array(rgb) / 255) ** _ADOBE_GAMMA
    srgb = np.linalg.solve(np.array(_SRGB_TO_XYZ), np.array(_ADOBE_TO_XYZ) @ linear)
    assert srgb.min() >= 0 and srgb.max() <= 1, "out of the sRGB gamut: pick another colour"
    encoded = np.where(srgb <= 0.0031308, srgb * 12.92, 1.055 * srgb ** (1 / 2.4) - 0.055)
    return tuple(int(v) for v in np.round(encoded * 255))


# A green the naive reading (Adobe RGB values taken as sRGB) gets wrong by 54 in red.
ADOBE_GREEN = (90, 150, 110)


def phone_photo(fmt: str, orientation: int = 6) -> bytes:
    """What a phone writes: an upright 1200x900 picture stored turned, with its EXIF
    orientation and a wide-gamut (Adobe RGB) profile; the background is :data:`ADOBE_GREEN`."""
    upright = _upright(1200, 900, background=ADOBE_GREEN)
    transpose = _STORE[orientation]
    stored = upright if transpose is None else upright.transpose(transpose)
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(stored, fmt, quality=95, exif=exif.tobytes(), icc_profile=adobe_rgb_profile())


def assert_upright_in_srgb(img: Image.Image) -> None:
    """The picture of :func:`phone_photo`, shown upright at 800x600 and converted to sRGB."""
    assert img.size == (800, 600)
    assert near(img.getpixel((40, 40)), RED, tolerance=30)
    assert near(img.getpixel((760, 40)), BLUE, tolerance=30)
    expected = adobe_to_srgb(ADOBE_GREEN)
    assert abs(expected[0] - ADOBE_GREEN[0]) > 40  # the profile matters for this colour
    assert near(img.getpixel((400, 450)), expected, tolerance=6)


@pytest.mark.parametrize("fmt", ["AVIF", "HEIF"])
def test_phone_photos_come_out_upright_and_in_srgb(fmt: str) -> None:
    result = prepared(phone_photo(fmt))
    assert result.source_format == fmt
    assert "icc->srgb" in result.steps
    assert_upright_in_srgb(assert_gateway_ready(result, PreprocessOptions()))


@pytest.mark.parametrize("fmt", ["AVIF", "HEIF"])
def test_phone_photos_without_a_profile_are_taken_as_srgb(fmt: str) -> None:
    source = encode(_upright(300, 200, background=ADOBE_GREEN), fmt, quality=95)
    result = prepared(source)
    assert not any(step.startswith("icc") for step in result.steps)
    assert near(decoded(result).getpixel((150, 150)), ADOBE_GREEN, tolerance=6)


def test_avif_without_libavif_fails_only_its_photo_and_says_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A Pillow built without libavif: no AVIF plugin registered, features.check("avif") false.
    monkeypatch.setattr(Image, "ID", [name for name in Image.ID if name != "AVIF"])
    monkeypatch.setattr(engine.imaging, "AVIF_DECODER", False)
    result = prepare_image(phone_photo("AVIF"))
    assert isinstance(result, PreprocessFailure)
    assert result.reason == "unsupported_format"
    assert "libavif" in result.message
    assert prepared(phone_photo("HEIF")).source_format == "HEIF"


def test_other_decodable_formats_are_still_refused() -> None:
    for data in (encode(photo(32, 32), "ICO"), encode(photo(32, 32), "TGA")):
        result = prepare_image(data)
        assert isinstance(result, PreprocessFailure)
        assert result.reason == "unsupported_format"
        assert "AVIF and HEIC/HEIF are" in result.message


def test_orientation_applies_to_the_draft_of_a_huge_portrait(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "portrait.jpg"
    _upright(4000, 6000).transpose(Image.Transpose.ROTATE_90).save(path, exif=exif.tobytes())
    result = prepared(path)
    assert (result.width, result.height) == (533, 800)
    assert result.steps[:3] == ("draft 1/4", "resize 800", "exif_transpose")
    assert near(decoded(result).getpixel((20, 20)), RED, tolerance=30)


# ---------------------------------------------------------------- optional steps


def test_trim_border_crops_a_uniform_background() -> None:
    img = Image.new("RGB", (1600, 1200), WHITE)
    img.paste(RED, (600, 400, 1000, 800))  # a 400 px product in a large white frame
    source = encode(img, "PNG")
    plain = prepared(source)
    trimmed = prepared(source, PreprocessOptions(trim_border=True))
    assert "trim" not in plain.steps
    assert trimmed.steps[0] == "trim"
    assert 400 <= trimmed.width <= 420 and 400 <= trimmed.height <= 420  # 2 % margin kept
    out = decoded(trimmed)
    assert near(out.getpixel((out.width // 2, out.height // 2)), RED)
    assert near(out.getpixel((1, 1)), WHITE)


def test_trim_border_leaves_busy_edges_alone() -> None:
    result = prepared(encode(photo(400, 300, seed=5), "PNG"), PreprocessOptions(trim_border=True))
    assert "trim" not in result.steps
    assert (result.width, result.height) == (400, 300)


def test_autocontrast_stretches_a_flat_image() -> None:
    ramp = np.tile(np.linspace(100, 150, 200).astype(np.uint8), (50, 1))
    source = encode(Image.fromarray(ramp).convert("RGB"), "PNG")
    result = prepared(source, PreprocessOptions(autocontrast=True))
    assert "autocontrast" in result.steps
    low, high = decoded(result).convert("L").getextrema()
    assert low < 40 and high > 215
    assert prepared(source).steps == ()  # off by default


def test_fingerprint_has_what_changes_the_output_and_no_limits() -> None:
    base = PreprocessOptions()
    print_ = base.fingerprint()
    assert set(print_) == {
        "version",
        "max_side",
        "max_bytes",
        "quality",
        "min_quality",
        "trim_border",
        "autocontrast",
    }
    assert PreprocessOptions(timeout=1, max_pixels=10, max_input_bytes=10).fingerprint() == print_
    assert PreprocessOptions(trim_border=True).fingerprint() != print_
    json.dumps(print_)


@pytest.mark.parametrize(
    "bad",
    [{"max_side": 0}, {"quality": 101}, {"min_quality": 95}, {"max_bytes": 0}, {"timeout": 0}],
)
def test_options_refuse_nonsense(bad: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        PreprocessOptions(**bad)


# ---------------------------------------------------------------- hostile and broken files


def _png_claiming(width: int, height: int) -> bytes:
    """A valid PNG header for a huge image, with a few bytes of pixel data (a bomb's shape)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(bytes(4096))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    ("source", "options", "reason"),
    [
        (b"", PreprocessOptions(), "empty_file"),
        (b"Product list:\n1. red mug\n2. blue mug\n", PreprocessOptions(), "not_an_image"),
        (_png_claiming(100_000, 100_000), PreprocessOptions(), "too_many_pixels"),
        (_png_claiming(12_000, 12_000), PreprocessOptions(), "too_many_pixels"),  # Pillow warns
        (encode(photo(200, 200), "PNG"), PreprocessOptions(max_pixels=10_000), "too_many_pixels"),
        (encode(photo(200, 200), "PNG"), PreprocessOptions(max_input_bytes=1000), "too_large_file"),
        (
            b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\n",
            PreprocessOptions(),
            "unsupported_format",
        ),
        (encode(photo(32, 32), "ICO"), PreprocessOptions(), "unsupported_format"),
        (
            b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic",
            PreprocessOptions(),
            "not_an_image",
        ),
        (encode(photo(64, 64), "PNG")[:40], PreprocessOptions(), "truncated"),
    ],
    ids=[
        "empty",
        "text",
        "bomb-10G-pixels",
        "bomb-144M-pixels",
        "small-max-pixels",
        "small-max-input-bytes",
        "pdf",
        "ico",
        "heic-ftyp-box-only",
        "png-header-cut",
    ],
)
def test_bad_inputs_fail_with_a_specific_reason(
    source: bytes, options: PreprocessOptions, reason: str
) -> None:
    result = prepare_image(source, options)
    assert isinstance(result, PreprocessFailure)
    assert result.reason == reason, result.message
    assert result.reason in REASONS
    assert result.message and "\n" not in result.message and "Traceback" not in result.message
    assert not result.ok


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP", "AVIF", "HEIF"])
def test_truncated_files_are_reported_not_patched(fmt: str) -> None:
    data = encode(photo(500, 400, seed=7), fmt)
    result = prepare_image(data[: len(data) * 2 // 3])
    assert isinstance(result, PreprocessFailure)
    assert result.reason == "truncated", result.message
    assert result.sha256 == hashlib.sha256(data[: len(data) * 2 // 3]).hexdigest()


def test_files_on_disk_are_checked_before_reading(tmp_path: Path) -> None:
    big = tmp_path / "big.png"
    big.write_bytes(encode(photo(300, 300), "PNG"))
    too_large = prepare_image(big, PreprocessOptions(max_input_bytes=100))
    assert isinstance(too_large, PreprocessFailure)
    assert too_large.reason == "too_large_file"
    assert too_large.sha256 is None  # refused from stat(), never read

    empty = tmp_path / "empty.jpg"
    empty.touch()
    missing = prepare_image(tmp_path / "missing.jpg")
    folder = prepare_image(tmp_path)
    assert [r.reason for r in (prepare_image(empty), missing, folder)] == [  # type: ignore[union-attr]
        "empty_file",
        "unreadable",
        "unreadable",
    ]


def test_pillow_state_is_restored_after_each_image() -> None:
    before = Image.MAX_IMAGE_PIXELS
    prepare_image(encode(photo(200, 200), "PNG"), PreprocessOptions(max_pixels=10_000))
    prepare_image(encode(photo(200, 200), "PNG"), PreprocessOptions(max_pixels=50_000_000))
    assert before == Image.MAX_IMAGE_PIXELS
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_results_are_records_that_cross_process_boundaries(huge_jpeg: Path) -> None:
    import pickle

    ok = prepared(huge_jpeg)
    failure = prepare_image(b"nope")
    assert pickle.loads(pickle.dumps(ok)) == ok
    assert pickle.loads(pickle.dumps(failure)) == failure
    assert pickle.loads(pickle.dumps(prepare_image)) is prepare_image
    assert ok.ok and not failure.ok
    assert "jpeg" not in repr(ok)  # megabytes of bytes stay out of logs
    assert [stage for stage, _ in ok.timings] == ["read", "decode", "process", "encode"]


# ---------------------------------------------------------------- img1688 preprocess


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="img1688")
    command.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["preprocess", *argv])
    return int(args.func(args))


@pytest.fixture
def photo_dir(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    (root / "mugs").mkdir(parents=True)
    photo(1600, 1200).save(root / "mugs" / "red.jpg")
    photo(300, 200, seed=1).save(root / "mugs" / "red.png")  # same stem: must not clash
    photo(300, 200, seed=2).save(root / "mugs" / "notes.txt.bmp")
    (root / "broken.jpg").write_bytes(encode(photo(400, 300), "JPEG")[:2000])
    (root / "readme.txt").write_text("not a photo, not picked up by the walk")
    return root


def test_cli_reports_each_file_writes_jpegs_and_summarises(
    photo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert _cli([str(photo_dir), "--out", str(out), "--max-side", "500"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 5
    assert lines[0].startswith("FAIL") and "broken.jpg" in lines[0] and "truncated" in lines[0]
    assert "500x375" in lines[2] and "draft 1/2" in lines[2]
    assert lines[-1] == "3 ok, 1 failed (truncated 1)"
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    assert written == ["mugs", "mugs/notes.txt.jpg", "mugs/red.jpg", "mugs/red.png.jpg"]
    assert Image.open(out / "mugs" / "red.jpg").size == (500, 375)


def test_cli_json_lines_and_explicit_files(
    photo_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    readme = photo_dir / "readme.txt"
    assert (
        _cli([str(readme), str(photo_dir / "mugs" / "red.png"), "--json", "--quality", "70"]) == 0
    )
    captured = capsys.readouterr()
    records = [json.loads(line) for line in captured.out.splitlines()]
    assert [r["ok"] for r in records] == [False, True]
    assert records[0]["reason"] == "not_an_image" and records[0]["sha256"]
    assert records[1]["quality"] == 70 and records[1]["width"] == 300
    assert "1 ok, 1 failed (not_an_image 1)" in captured.err


def test_cli_usage_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli([str(tmp_path / "nowhere")]) == 2
    assert "no such file or directory" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        _cli([str(tmp_path), "--quality", "0"])
    assert exit_info.value.code == 2


def test_cli_finds_phone_photos_and_prepares_them_in_worker_processes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder, out = tmp_path / "camera-roll", tmp_path / "out"
    folder.mkdir()
    (folder / "IMG_0001.HEIC").write_bytes(phone_photo("HEIF"))
    (folder / "PXL_0002.avif").write_bytes(phone_photo("AVIF", orientation=8))
    assert _cli([str(folder), "--json", "--out", str(out)]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["path"].rsplit("/", 1)[1], r["source_format"]) for r in records] == [
        ("IMG_0001.HEIC", "HEIF"),
        ("PXL_0002.avif", "AVIF"),
    ]
    for record in records:
        assert "icc->srgb" in record["steps"]
        with Image.open(record["out"]) as img:
            assert_upright_in_srgb(img.convert("RGB"))
