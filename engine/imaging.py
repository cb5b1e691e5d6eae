"""The Pillow side of :mod:`engine.preprocess`: decode, colour, resize, orient and encode.

:func:`engine.preprocess.prepare_image` imports this module on its first image, in the process
that prepares it (a :mod:`engine.pool` worker, normally; its forkserver preloads it), so that the
command line and the engine's own process never load Pillow for nothing. Importing it registers
the HEIC/HEIF decoder (``pillow-heif``, libheif) with Pillow; AVIF is Pillow's own plugin when
Pillow is built with libavif (every wheel since 11.3), else AVIF photos fail as
``unsupported_format`` with a message that says why.
"""

from __future__ import annotations

import hashlib
import io
import math
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pillow_heif
from PIL import (
    Image,
    ImageChops,
    ImageCms,
    ImageFilter,
    ImageOps,
    UnidentifiedImageError,
    features,
)

from engine.colour import JPEG_FORMATS, SRGB, flatten, to_8bit
from engine.magic import BMFF_BRANDS, image_format
from engine.preprocess import (
    ACCEPTED_FORMATS,
    Prepared,
    PreparedImage,
    PreprocessFailure,
    PreprocessOptions,
)

# Thumbnails, depth maps and auxiliary images are never what we send: do not decode them.
pillow_heif.register_heif_opener(thumbnails=False, depth_images=False, aux_images=False)
AVIF_DECODER = features.check("avif")
"""Whether this Pillow decodes AVIF (built with libavif)."""

_DRAFT_SCALES = (8, 4, 2, 1)
_ORIENTATION_TAG = 0x0112
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_QUALITY_STEP = 10
_MIN_FIT_SIDE = 32
_TRIM_TOLERANCE = 24
_TRIM_MARGIN = 0.02
_AUTOCONTRAST_CUTOFF = 1.0

# Phones tag these photos with a wide-gamut ICC profile (Display P3): converted to sRGB, which
# the gateway assumes. Other formats' RGB profiles are not applied (yet): that would change what
# earlier runs sent for the same photo, and so needs a PIPELINE_VERSION bump of its own.
_ICC_CONVERTED_FORMATS = frozenset({"AVIF", "HEIF"})


@dataclass(frozen=True)
class _Source:
    """What the original file's header says."""

    format: str
    mode: str
    size: tuple[int, int]
    orientation: int
    """EXIF orientation, 1-8; 1 when absent or invalid."""
    icc: bytes | None
    """The embedded ICC profile, if any."""


class _Reject(Exception):
    """Internal: stops the pipeline with a failure reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass
class _Work:
    """Internal: mutable state of one preparation."""

    steps: list[str] = field(default_factory=list)
    timings: list[tuple[str, float]] = field(default_factory=list)
    mark: float = field(default_factory=time.perf_counter)

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.timings.append((stage, round((now - self.mark) * 1000, 3)))
        self.mark = now


def prepare(source: Path | bytes, options: PreprocessOptions) -> Prepared:
    """:func:`engine.preprocess.prepare_image`, which see."""
    started = time.perf_counter()
    work = _Work(mark=started)
    try:
        data = _read(source, options)
    except _Reject as reject:
        return PreprocessFailure(reject.reason, reject.message)
    digest = hashlib.sha256(data).hexdigest()
    work.lap("read")
    try:
        return _prepare(data, digest, options, work, started)
    except _Reject as reject:
        return PreprocessFailure(reject.reason, reject.message, digest)


def _read(source: Path | bytes, options: PreprocessOptions) -> bytes:
    limit = options.max_input_bytes
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        if len(data) > limit:
            raise _Reject("too_large_file", f"{len(data):,} bytes, over the {limit:,} byte limit")
    else:
        path = Path(source)
        try:
            info = path.stat()
            if not path.is_file():
                raise _Reject("unreadable", f"not a regular file: {path}")
            if info.st_size > limit:
                raise _Reject(
                    "too_large_file", f"{info.st_size:,} bytes, over the {limit:,} byte limit"
                )
            with path.open("rb") as handle:
                # Reading one byte past the limit catches a file that grew since stat().
                data = handle.read(limit + 1)
        except OSError as exc:
            raise _Reject("unreadable", f"cannot read {path}: {exc.strerror or exc}") from None
        if len(data) > limit:
            raise _Reject("too_large_file", f"over the {limit:,} byte limit")
    if not data:
        raise _Reject("empty_file", "the file is empty (0 bytes)")
    return data


@contextmanager
def _pillow_limits(max_pixels: int) -> Iterator[None]:
    """Apply our pixel limit to Pillow's bomb check and make its warning an error, for a while.

    ``Image.MAX_IMAGE_PIXELS`` is process-global, hence the restore. Other decoder warnings
    (corrupt EXIF, odd palettes) are silenced: they are not failures and would flood worker logs.
    """
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def _prepare(
    data: bytes, digest: str, options: PreprocessOptions, work: _Work, started: float
) -> PreparedImage:
    with _pillow_limits(options.max_pixels):
        img, source = _decode(data, options, work)
    work.lap("decode")

    try:
        img = to_8bit(img, source.format, work.steps)
    except ValueError as exc:
        raise _Reject("unsupported_format", str(exc)) from None
    img = flatten(img, work.steps)
    if options.trim_border:
        img = _trim(img, work.steps)
    if max(img.size) > options.max_side:
        img = _resize_long_side(img, options.max_side)
        work.steps.append(f"resize {options.max_side}")
    if source.icc and source.format in _ICC_CONVERTED_FORMATS and img.mode == "RGB":
        img = _rgb_to_srgb(img, source.icc, work.steps)
    if options.autocontrast:
        img = ImageOps.autocontrast(img, cutoff=_AUTOCONTRAST_CUTOFF, preserve_tone=True)
        work.steps.append("autocontrast")
    if source.orientation in _TRANSPOSE:
        img = img.transpose(_TRANSPOSE[source.orientation])
        work.steps.append("exif_transpose")
    if img.mode != "RGB":
        img = img.convert("RGB")
    work.lap("process")

    jpeg, img, quality = _encode_within(img, options, work.steps)
    work.lap("encode")
    return PreparedImage(
        jpeg=jpeg,
        width=img.width,
        height=img.height,
        sha256=digest,
        source_bytes=len(data),
        source_format=source.format,
        source_mode=source.mode,
        source_size=source.size,
        quality=quality,
        steps=tuple(work.steps),
        elapsed_ms=round((time.perf_counter() - started) * 1000, 3),
        timings=tuple(work.timings),
    )


def _decode(data: bytes, options: PreprocessOptions, work: _Work) -> tuple[Image.Image, _Source]:
    """Open, check, draft and load the first frame; return it with the header facts."""
    try:
        img = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _Reject(
            "too_many_pixels",
            f"the header claims more than {options.max_pixels:,} pixels (decompression bomb guard)",
        ) from None
    except UnidentifiedImageError:
        raise _unidentified(data) from None
    except Exception as exc:  # any plugin may choke on a hostile header: it is bad input
        raise _damaged(data, exc) from None

    source_format = img.format or "unknown"
    if source_format not in ACCEPTED_FORMATS:
        raise _Reject(
            "unsupported_format",
            f"{source_format} images are not accepted"
            " (JPEG, PNG, GIF, BMP, WebP, TIFF, AVIF and HEIC/HEIF are)",
        )
    source_mode, source_size, icc = img.mode, img.size, img.info.get("icc_profile")
    try:
        orientation = _orientation(img)
        if getattr(img, "is_animated", False):  # probing frame 1 leaves frame 0 current
            work.steps.append("first_frame")
        if source_format in JPEG_FORMATS:
            _draft(img, options.max_side, work.steps)
        img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _Reject(
            "too_many_pixels", f"a frame has more than {options.max_pixels:,} pixels"
        ) from None
    except Exception as exc:  # decoder errors on untrusted bytes are bad input, never a crash
        raise _damaged(data, exc, source_format) from None
    source = _Source(source_format, source_mode, source_size, orientation, icc or None)
    return img, source


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation (1-8); anything invalid or unreadable counts as 1 (upright)."""
    try:
        value = img.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:  # a corrupt EXIF block must not cost the image: treat it as absent
        return 1
    return value if isinstance(value, int) and value in range(1, 9) else 1


def _draft(img: Image.Image, max_side: int, steps: list[str]) -> None:
    """Ask libjpeg for the smallest DCT scale whose long side is still at least ``max_side``.

    The long side is the same before and after the EXIF rotation, so the stored size decides.
    """
    width, height = img.size
    long_side = max(width, height)
    scale = next((s for s in _DRAFT_SCALES if -(-long_side // s) >= max_side), 1)
    if scale == 1:
        return
    # Pillow picks the largest scale s with size // requested >= s on both axes; floor division
    # makes it pick exactly ``scale``.
    img.draft(img.mode, (max(1, width // scale), max(1, height // scale)))
    if img.size != (width, height):
        steps.append(f"draft 1/{round(width / img.width)}")


def _unidentified(data: bytes) -> _Reject:
    head = data[:16]
    if head.startswith(b"%PDF"):
        return _Reject("unsupported_format", "a PDF document, not an image")
    # Data that starts like a known format, yet which Pillow cannot identify, was cut short.
    known = image_format(data)
    if known == "AVIF" and not AVIF_DECODER:
        return _Reject(
            "unsupported_format",
            "AVIF needs Pillow built with libavif (every Pillow wheel since 11.3 is; this one is"
            " not)",
        )
    if known in BMFF_BRANDS.values() and not _bmff_cut_short(data):
        return _Reject("not_an_image", f"cannot decode the {known} data")
    if known:
        return _Reject("truncated", f"starts like {known} data but its header is incomplete")
    return _Reject("not_an_image", "not an image file Pillow can identify")


def _damaged(data: bytes, exc: Exception, source_format: str | None = None) -> _Reject:
    text = str(exc) or type(exc).__name__
    lowered = text.lower()
    kind = source_format or image_format(data) or "image"
    if (
        isinstance(exc, EOFError)
        or _riff_cut_short(data)
        or _bmff_cut_short(data)
        or any(
            word in lowered for word in ("truncated", "broken data stream", "end of file", "eof")
        )
    ):
        return _Reject("truncated", f"the {kind} data is cut short ({text})")
    return _Reject("not_an_image", f"cannot decode the {kind} data ({text})")


def _riff_cut_short(data: bytes) -> bool:
    # libwebp only says "could not create decoder object"; the RIFF header tells the real size.
    return data[:4] == b"RIFF" and int.from_bytes(data[4:8], "little") + 8 > len(data)


def _bmff_cut_short(data: bytes) -> bool:
    """Whether an ISO base media file (HEIF, AVIF) ends inside one of its top-level boxes.

    libheif and libavif report a cut-short file in many words, or not at all; the box sizes
    (32-bit, or 64-bit after a size of 1; 0 runs to the end) tell it exactly.
    """
    if data[4:8] != b"ftyp":
        return False
    offset = 0
    while offset + 8 <= len(data):
        size = int.from_bytes(data[offset : offset + 4], "big")
        if size == 1:
            if offset + 16 > len(data):
                return True
            size = int.from_bytes(data[offset + 8 : offset + 16], "big")
        elif size == 0:
            return False
        if size < 8:
            return False  # not a box: damaged, not short
        offset += size
    return offset != len(data)


def _rgb_to_srgb(img: Image.Image, icc: bytes, steps: list[str]) -> Image.Image:
    """Convert RGB pixels through their embedded ICC profile to sRGB (perceptual intent).

    A profile that cannot be read, or that is not an RGB one, leaves the pixels as they are.
    """
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        if profile.profile.xcolor_space.strip() != "RGB":
            steps.append("icc_not_rgb")
            return img
        srgb = ImageCms.profileToProfile(img, profile, SRGB, outputMode="RGB")
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        steps.append("icc_invalid")
        return img
    assert srgb is not None  # profileToProfile returns None only with inPlace=True
    steps.append("icc->srgb")
    return srgb


def _trim(img: Image.Image, steps: list[str]) -> Image.Image:
    """Crop a uniform background (the colour all four corners share) around the subject."""
    width, height = img.size
    corners = [img.getpixel(xy) for xy in ((0, 0), (width - 1, 0), (0, height - 1))]
    corners.append(img.getpixel((width - 1, height - 1)))
    # getpixel gives None only for an image with no pixel access; a decoded one has it.
    bands = [c if isinstance(c, tuple) else (c,) for c in corners if c is not None]
    if any(
        abs(a - b) > _TRIM_TOLERANCE
        for corner in bands[1:]
        for a, b in zip(bands[0], corner, strict=True)
    ):
        return img
    background = Image.new(img.mode, img.size, corners[0])
    diff = ImageChops.difference(img, background)
    if diff.mode == "RGB":
        red, green, blue = diff.split()
        diff = ImageChops.lighter(ImageChops.lighter(red, green), blue)
    mask = diff.point(lambda value: 255 if value > _TRIM_TOLERANCE else 0)
    # An erosion drops isolated specks (dust, JPEG noise) that would keep the box at full size.
    box = mask.filter(ImageFilter.MinFilter(3)).getbbox()
    if box is None:
        return img
    left, top, right, bottom = box
    pad_x = math.ceil((right - left) * _TRIM_MARGIN)
    pad_y = math.ceil((bottom - top) * _TRIM_MARGIN)
    box = (
        max(0, left - pad_x),
        max(0, top - pad_y),
        min(width, right + pad_x),
        min(height, bottom + pad_y),
    )
    if box == (0, 0, width, height):
        return img
    steps.append("trim")
    return img.crop(box)


def _resize_long_side(img: Image.Image, long_side: int) -> Image.Image:
    width, height = img.size
    factor = long_side / max(width, height)
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    # reducing_gap lets Pillow box-reduce huge non-JPEG images first; 3.0 is visually lossless.
    return img.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def _encode(img: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", quality=quality, optimize=True)
    return buffer.getvalue()


def _encode_within(
    img: Image.Image, options: PreprocessOptions, steps: list[str]
) -> tuple[bytes, Image.Image, int]:
    """Encode, lowering quality and then size until the JPEG fits ``max_bytes``."""
    quality = options.quality
    jpeg = _encode(img, quality)
    while len(jpeg) > options.max_bytes and quality > options.min_quality:
        quality = max(options.min_quality, quality - _QUALITY_STEP)
        jpeg = _encode(img, quality)
    if quality != options.quality:
        steps.append(f"quality {quality}")
    base, fitted = img, img
    while len(jpeg) > options.max_bytes:
        long_side = max(fitted.size)
        if long_side <= _MIN_FIT_SIDE:
            raise _Reject(
                "cannot_fit",
                f"cannot fit {options.max_bytes:,} bytes even at quality {quality} and "
                f"{long_side} px ({len(jpeg):,} bytes)",
            )
        # Bytes grow roughly with area; aim a little below and always shrink by 10-50 %.
        factor = min(0.9, max(0.5, 0.95 * math.sqrt(options.max_bytes / len(jpeg))))
        fitted = _resize_long_side(base, max(_MIN_FIT_SIDE, int(long_side * factor)))
        jpeg = _encode(fitted, quality)
    if fitted is not base:
        steps.append(f"fit {max(fitted.size)}")
    return jpeg, fitted, quality
