"""Turn any photo into a JPEG the image-search gateway accepts.

The gateway wants an RGB JPEG without transparency, at most ``max_side`` pixels on the long side
and at most ``max_bytes`` bytes. :func:`prepare_image` gets there from whatever a folder holds:

1. read: the file size is checked before reading (``too_large_file``, ``empty_file``); the
   SHA-256 of the original bytes identifies the image in every record;
2. open: only the header is parsed; more than ``max_pixels`` pixels is refused before any pixel
   is decoded (``too_many_pixels``); only JPEG/MPO, PNG, GIF, BMP, WebP, TIFF, and the phones'
   AVIF and HEIC/HEIF are accepted (:data:`ACCEPTED_FORMATS`);
3. decode small: JPEGs are decoded at 1/2, 1/4 or 1/8 scale by libjpeg (``draft``), the smallest
   scale that keeps the long side at least ``max_side``; multi-frame files give their first frame;
4. colour: 16/32-bit and float samples are scaled (not clipped) to 8 bits; CMYK goes through its
   embedded ICC profile when it has one; transparency is composited onto white;
5. optional ``trim_border`` (crop a uniform background) and ``autocontrast``;
6. resize with LANCZOS (never upscale); an AVIF or HEIC photo's embedded ICC profile (phones
   write Display P3) is converted to sRGB; then the EXIF orientation is applied on the small
   image (HEIC photos come out of libheif already turned by their own rotation boxes);
7. encode: JPEG at ``quality``, lowered step by step down to ``min_quality`` and then shrunk step
   by step until the bytes fit (``cannot_fit`` if even a tiny image does not).

The function is pure and picklable: it runs as is in a ``ProcessPoolExecutor`` (see
:mod:`engine.pool`, which also enforces ``timeout``). Bad input never raises: it returns a
:class:`PreprocessFailure` whose ``reason`` is one of :data:`REASONS`.

This module holds the contract (options, results, reasons) and imports nothing heavy, so that
job files and the command line can use it cheaply; the Pillow work is :mod:`engine.imaging`,
loaded on the first image.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from pathlib import Path

PIPELINE_VERSION = 1
"""Bumped whenever the same options would produce different output; part of the fingerprint."""

ACCEPTED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "GIF", "BMP", "WEBP", "TIFF", "AVIF", "HEIF"})
"""Pillow format names we decode. MPO is what phones write as JPEG: a JPEG with extra frames;
HEIF is HEIC too (the HEVC-coded kind iPhones write)."""

PHOTO_EXTENSIONS = (
    "jpg",
    "jpeg",
    "png",
    "gif",
    "bmp",
    "webp",
    "tif",
    "tiff",
    "avif",
    "heic",
    "heif",
)
"""File extensions of :data:`ACCEPTED_FORMATS`: what a job looks for by default."""

REASONS = frozenset(
    {
        "not_an_image",
        "truncated",
        "too_many_pixels",
        "unsupported_format",
        "too_large_file",
        "empty_file",
        "unreadable",
        "timeout",
        "worker_crashed",
        "cannot_fit",
    }
)
"""Every :attr:`PreprocessFailure.reason`; stable enough to store and group by."""


@dataclass(frozen=True)
class PreprocessOptions:
    """How to prepare an image.

    Attributes:
        max_side: longest side of the output, in pixels.
        max_bytes: largest output JPEG, in bytes.
        quality: JPEG quality tried first.
        min_quality: lowest quality tried before shrinking the image to fit ``max_bytes``.
        trim_border: crop a uniform background around the product so it fills the frame.
        autocontrast: stretch the histogram mildly (1 % cut-off, hue preserved).
        max_pixels: refuse images whose header claims more pixels (decompression bombs).
        max_input_bytes: refuse larger input files without reading them.
        timeout: seconds per image, enforced by :class:`engine.pool.PreprocessPool`.
    """

    max_side: int = 800
    max_bytes: int = 2_000_000
    quality: int = 90
    min_quality: int = 50
    trim_border: bool = False
    autocontrast: bool = False
    max_pixels: int = 120_000_000
    max_input_bytes: int = 100 * 1024 * 1024
    timeout: float = 60.0

    def __post_init__(self) -> None:
        if self.max_side < 1:
            raise ValueError(f"max_side must be at least 1, got {self.max_side}")
        if self.max_bytes < 1:
            raise ValueError(f"max_bytes must be at least 1, got {self.max_bytes}")
        if not 1 <= self.min_quality <= self.quality <= 100:
            raise ValueError(
                f"need 1 <= min_quality <= quality <= 100, got {self.min_quality}, {self.quality}"
            )
        if self.max_pixels < 1 or self.max_input_bytes < 1:
            raise ValueError("max_pixels and max_input_bytes must be at least 1")
        if self.timeout <= 0:
            raise ValueError(f"timeout must be positive, got {self.timeout}")

    def fingerprint(self) -> dict[str, object]:
        """The options that change the output, plus :data:`PIPELINE_VERSION`.

        Limits (``max_pixels``, ``max_input_bytes``, ``timeout``) only decide *whether* an image is
        prepared, not how it looks, so they are left out: a resumed run may change them freely.
        """
        return {
            "version": PIPELINE_VERSION,
            "max_side": self.max_side,
            "max_bytes": self.max_bytes,
            "quality": self.quality,
            "min_quality": self.min_quality,
            "trim_border": self.trim_border,
            "autocontrast": self.autocontrast,
        }


@dataclass(frozen=True)
class PreparedImage:
    """A JPEG ready for the gateway, and what was done to get it.

    Attributes:
        jpeg: the encoded RGB JPEG (no EXIF, no ICC profile: sRGB is assumed).
        width, height: its size, upright.
        sha256: hex SHA-256 of the *original* file bytes.
        source_bytes: size of the original file.
        source_format, source_mode, source_size: as Pillow read the original header.
        quality: the JPEG quality finally used.
        steps: what was applied, in order (``"draft 1/4"``, ``"exif_transpose"``,
            ``"alpha->white"``, ``"cmyk_icc"``, ``"icc->srgb"``, ``"16bit_scaled"``,
            ``"resize 800"``, ``"quality 80"``, ``"fit 640"``, ``"trim"`` ...).
        elapsed_ms: wall time of the whole preparation.
        timings: ``(stage, ms)`` pairs for ``read``, ``decode``, ``process`` and ``encode``.
    """

    jpeg: bytes = field(repr=False)
    width: int
    height: int
    sha256: str
    source_bytes: int
    source_format: str | None
    source_mode: str | None
    source_size: tuple[int, int]
    quality: int
    steps: tuple[str, ...]
    elapsed_ms: float
    timings: tuple[tuple[str, float], ...] = ()

    @property
    def ok(self) -> bool:
        """Always ``True``: tells a prepared image from a :class:`PreprocessFailure`."""
        return True

    def base64(self) -> str:
        """The JPEG as base64 text, without a ``data:`` prefix, as the gateway takes it."""
        return base64.b64encode(self.jpeg).decode("ascii")


@dataclass(frozen=True)
class PreprocessFailure:
    """Why an image cannot be sent.

    Attributes:
        reason: one of :data:`REASONS`.
        message: one line for a human, never a traceback.
        sha256: hex SHA-256 of the original bytes, when they could be read.
    """

    reason: str
    message: str
    sha256: str | None = None

    @property
    def ok(self) -> bool:
        """Always ``False``."""
        return False


Prepared = PreparedImage | PreprocessFailure


def prepare_image(
    source: Path | bytes, options: PreprocessOptions = PreprocessOptions()
) -> Prepared:
    """Prepare one image (a file path or its bytes) for the gateway. Never raises for bad input.

    Not thread-safe: it sets Pillow's process-wide ``Image.MAX_IMAGE_PIXELS`` while it decodes
    (restored afterwards). Run it in worker processes, not threads.
    """
    from engine.imaging import prepare  # Pillow and its plugins, loaded on the first image

    return prepare(source, options)
