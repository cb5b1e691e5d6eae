"""Visual evidence: does an offer's main image show the query's product, or the very same photo?

Every image is reduced once to a :class:`Fingerprint` (6.3 KB at most, cacheable, versioned);
:func:`compare` weighs two of them, and :class:`PhotoClusters` gives the offers that show one
photograph one ``cluster_id`` over a run. Everything is numpy over small grids: deterministic,
and pure (no Pillow setting or other process-wide state is touched), so threads and worker
processes may call it freely.

**The fingerprint.** The image is decoded small (libjpeg's DCT scaling), turned upright (EXIF)
and made RGB (transparency on white, 16-bit scaled, CMYK through its profile). Kept: luma on a
64-cell grid (long side) and chroma on a 32-cell one, for the same-photo search; two 64-bit
DCT perceptual hashes (whole, central 70%) and a colour histogram of the whole frame, for
prefilters; and, of the foreground (the pixels unlike the colours that recur along the
frame's sides), a colour histogram, an edge-orientation histogram and the outline, for
product likeness.

**Same photo** means one image shows part or all of the other's pixels, resized, re-encoded,
perhaps watermarked. Images whose whole-frame colours differ (cosine under 0.6) cannot be;
otherwise each is placed inside the other by normalised cross-correlation of luma: sizes from
100% down to 50% of the other's width and height in 10% steps, every offset, on half-size
grids (all sizes in one batch of FFTs); the best placement is refined on the full grids (scale
within 5% in 2% steps, not bound to whole cells; offsets within 3 cells). Where it correlates
at least 0.6 the overlap is checked pixel by pixel: a content pixel (one that strays from its
image's median colour) is wrong when the two differ by more than 20 levels of luma plus chroma
beyond the range of its 3x3 neighbourhood (a placement a cell off costs nothing), after
removing a constant shift; wrong pixels are counted outside the corner or edge region holding
the most of them (a shop's logo or banner). At most 9% wrong is the same photo. Two crops of
one photo need not contain each other: when that fails and the frames' colours are alike
(cosine 0.75), the middle 60% of each is placed in the other (down to 30% of its sides) and
their whole overlap checked the same way. A perceptual hash alone fails on crops; the
placement and the pixel check are what decide.

**visual_score and verdict.** A same photo scores 0.9 + 0.1 x (1 - wrong share / 9%), in
[0.9, 1]. Anything else scores the likeness of the products, below 0.9: a weighted sum of
:func:`product_features` (foreground colour cosine, orientation cosine allowing a 15 degree
tilt, elongation difference, outline correlation allowing a 45 degree turn) through a
logistic squash. The verdict is a function of the score alone (:func:`verdict_for`):
``same_photo`` from 0.9, ``same_product`` from 0.65, ``similar`` from 0.4, else ``different``.

**Calibration** (``python -m bench evidence``, its calibration split: 224 reseller copies of
the 28 catalogue photos, seed 1, and 112 generated buyer photos, 4 per product, each against
every catalogue photo). Same photo: the wrong share is at most 0.062 for the 224 same-photo
pairs and at least 0.144 for the 6,048 others; 9% lies between. Product likeness: the weights
(8.48, 12.65, -1.43, 4.09) are a logistic regression of "same product" on the features, over
the buyer photos' pairs and the copies' pairs with the other catalogue photos (offers are
mostly studio shots); the same-product cut (21.74 on the weighted sum, mapped to 0.65) is the
one with the best F1 (0.843); the similar cut (18.94, mapped to 0.4) keeps 98% of the
same-product pairs "similar" or better, so ``similar`` means "could be it: look".

**Measured** on the evaluation split (copies from seed 2, the sample set's 35 buyer photos):
``same_photo`` precision 1.000 and recall 1.000 over 224 copies x 28 photos (6,272 pairs:
crops, resizes, JPEG/WEBP/PNG, watermarks, combined). "same_product or same_photo" on the
buyer photos: precision 0.97, recall 0.89 (31 of 35; 3 more are ``similar``), and the true
product ranks first for 33 of 35; 16 of the copies' 6,048 pairs with other catalogue photos
are called ``same_product`` (11 of them another product of the same kind). Why not more: a
buyer photo is another photograph (angle, surface, light, colour cast), so only the product's
own colours and shape are left to compare, read off an estimated foreground; products of one
kind share a silhouette and differ by colour or pattern only, and thin products (an umbrella)
or busy surfaces spoil the foreground. Not the same photo, by design: mirrored or recoloured
copies, turns beyond a few degrees, crops keeping less than half of each side. Clusters of
194 offers (8 copies of each of 20 photos, 34 single photos, answers of 20): adjusted Rand
index 0.93, purity 1.00, completeness 0.93; the splits are copies that joined a second
cluster of their photo, opened by a crop sharing too little with the first one's
representative (clusters never merge: ids once given stand).
"""

from __future__ import annotations

import io
import math
import re
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageOps

from engine.colour import flatten, to_8bit

__all__ = [
    "FINGERPRINT_VERSION",
    "SAME_PRODUCT_THRESHOLD",
    "SIMILAR_THRESHOLD",
    "Comparison",
    "EvidenceImageError",
    "Fingerprint",
    "PhotoClusters",
    "Verdict",
    "compare",
    "fingerprint",
    "product_features",
    "verdict_for",
]

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
_Box = tuple[float, float, float, float]  # left, top, right, bottom

FINGERPRINT_VERSION = 1
"""The features' version, the first bytes of :meth:`Fingerprint.to_bytes`: bumped whenever
:func:`fingerprint` would compute different features, so caches keyed on it never mix them."""

Verdict = Literal["same_photo", "same_product", "similar", "different"]

# --- decoding -------------------------------------------------------------------------------------
_MAX_PIXELS = 64_000_000  # refused before decoding: a thumbnail needs no more
_DECODE_SIDE = 256  # JPEGs are decoded by libjpeg at the smallest scale keeping this much

# --- the features ---------------------------------------------------------------------------------
_GRID = 64  # long side of the luma grid; chroma is kept at half that, as JPEG does
_HIST_BINS = (12, 2, 2, 4)  # hue x saturation x value bins of colours, and grey levels
_HIST_SIZE = _HIST_BINS[0] * _HIST_BINS[1] * _HIST_BINS[2] + _HIST_BINS[3]
_MIN_SATURATION = 0.2  # below it (or darker than _MIN_VALUE) a pixel counts as grey
_MIN_VALUE = 0.15
_ORIENT_BINS = 12  # edge orientations over 180 degrees
_SECTORS = 16  # directions in which the outline's extent is measured
_OUTLINE_SCALE = 3.0  # extents (per mean radius) are stored / 3, clipped
_ELONGATION_SCALE = 4.0  # elongations are stored / 4, clipped
_OBJECT_SIDE = 64  # the object is cut out of the decoded image at this long side
_BACKGROUND_LUMA = 0.3  # luma's weight against chroma when telling background colours apart
_BORDER_SAMPLES = 48  # colours sampled along each side of the frame
_HASH_SIDE = 32  # pHash: DCT of a 32x32 luma grid, its 8x8 lowest frequencies
_HASH_CENTRE = 0.7  # the second hash covers the central 70% of each side

# --- the same-photo search ------------------------------------------------------------------------
_SCENE_FLOOR = 0.6  # scene histograms less alike (cosine) cannot be one photo: no search
_WHOLE: _Box = (0.0, 0.0, 1.0, 1.0)
_MIN_SHARE = 0.5  # one image may be a crop keeping at least half of the other's width and height
# Two crops of one photo: the middle of either (60% of each side) is searched in the other at
# sizes down to 30% of its sides, when their colours overall (scene cosine) are this alike.
_MIDDLE: _Box = (0.2, 0.2, 0.8, 0.8)
_MIDDLE_MIN_SHARE = 0.3
_MIDDLE_SCENE = 0.75
_COARSE_STEP = 0.9  # scale ratio between search steps on the half-size grid
_COARSE_NCC = 0.45  # a coarse placement correlating less is not worth refining
_REFINE = (0.95, 0.97, 0.99, 1.01, 1.03, 1.05)  # scales refined around it on the full grid
_SLACK = 3  # grid cells of offset tried around a coarse placement
_MIN_TEMPLATE = 4  # cells: smaller templates carry no evidence
_CONTENT_LUMA = 20.0  # how far a pixel's luma (or chroma) must stray from the image's median
_CONTENT_CHROMA = 15.0  # to count as content rather than background
_PIXEL_ERROR = 20.0  # larger disagreements (luma plus chroma levels) are a mismatch
_MIN_CONTENT = 0.03  # a placement with less content than this share of its area decides nothing
# Mismatches are counted outside the worst of these corner regions (width, height shares): a
# watermark or shop logo sits in a corner or along an edge and must not outvote the photo.
_EXCLUSIONS = ((0.6, 0.3), (0.3, 0.6), (0.45, 0.45))
_MAX_MISMATCH = 0.09  # share of the content pixels that may disagree in a same photo
_MIN_NCC = 0.6  # and the normalised cross-correlation of the placement must reach this

# --- scores and verdicts --------------------------------------------------------------------------
_SAME_PHOTO_FLOOR = 0.9  # same photos score in [0.9, 1]; everything else below 0.9
SAME_PRODUCT_THRESHOLD = 0.65
"""``visual_score`` from which a pair that is not the same photo is ``same_product``."""
SIMILAR_THRESHOLD = 0.4
"""``visual_score`` from which a pair is ``similar`` (and below which ``different``)."""
# Product likeness: weights of product_features() and the two cuts on their weighted sum
# (similar, same product); fitted on the calibration split, see the module docstring.
_LIKENESS_WEIGHTS = (8.48, 12.65, -1.43, 4.09)
_LIKENESS_CUTS = (18.94, 21.74)

# --- clusters -------------------------------------------------------------------------------------
_PREFILTER_TOP = 5  # full comparisons per image: the clusters most alike in colour ...
_HASH_RADIUS = 10  # ... plus every cluster whose perceptual hashes are this close
_SHA256 = re.compile(r"[0-9a-f]{64}")
_CLUSTER_ID = re.compile(r"c[0-9a-f]{12}")


class EvidenceImageError(ValueError):
    """Bytes that do not decode as an image; ``reason`` is a stable short code
    (``not_an_image``, ``too_many_pixels``), the message says why."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


# --- the fingerprint ------------------------------------------------------------------------------

_MAGIC = b"IFP"
_HEADER = struct.Struct("<3sBIIBBBBQQ")


@dataclass(frozen=True)
class Fingerprint:
    """Everything :func:`compare` needs about one image, computed once by :func:`fingerprint`.

    Small (at most 6.4 KB, a square image) and cacheable: :meth:`to_bytes` and
    :meth:`from_bytes` round-trip exactly. Every field is an int or immutable bytes, so
    fingerprints compare and hash by value.

    Attributes:
        width, height: the decoded, upright image's size in pixels.
        grid: (width, height) of the luma grid, 64 cells on the long side.
        luma: the luma grid, row-major uint8.
        chroma_grid: (width, height) of the chroma grids, half the luma grid's.
        chroma: the Cb grid then the Cr grid, row-major uint8.
        hashes: 64-bit DCT perceptual hashes of the whole image and of its central 70%.
        colour: colour histogram of the foreground (the product), Hellinger, uint8 (x 255).
        scene: colour histogram of the whole image, likewise.
        orient: edge orientation histogram of the foreground, likewise.
        shape: the foreground's outline (its extent in 16 directions from its centroid, per
            its mean radius, / 3 x 255), then its elongation (log of its second moments'
            ratio, / 4 x 255).
    """

    width: int
    height: int
    grid: tuple[int, int]
    luma: bytes
    chroma_grid: tuple[int, int]
    chroma: bytes
    hashes: tuple[int, int]
    colour: bytes
    scene: bytes
    orient: bytes
    shape: bytes

    def __post_init__(self) -> None:
        (gw, gh), (cw, ch) = self.grid, self.chroma_grid
        if not (0 < self.width < 2**32 and 0 < self.height < 2**32):
            raise ValueError(f"image size {self.width}x{self.height} out of range")
        if not (0 < gw <= _GRID and 0 < gh <= _GRID and 0 < cw <= gw and 0 < ch <= gh):
            raise ValueError(f"grid {self.grid} or chroma grid {self.chroma_grid} out of range")
        if len(self.hashes) != 2 or not all(0 <= h < 2**64 for h in self.hashes):
            raise ValueError("hashes must be two unsigned 64-bit integers")
        for name, expected in zip(_BLOBS, _blob_lengths(self.grid, self.chroma_grid), strict=True):
            actual = len(getattr(self, name))
            if actual != expected:
                raise ValueError(f"{name} holds {actual} bytes, not {expected}")

    def to_bytes(self) -> bytes:
        """The versioned binary form: a header (magic ``IFP``, :data:`FINGERPRINT_VERSION`,
        sizes, hashes), then the byte fields in order."""
        header = _HEADER.pack(
            _MAGIC, FINGERPRINT_VERSION, self.width, self.height, *self.grid, *self.chroma_grid,
            *self.hashes,
        )  # fmt: skip
        return header + b"".join(getattr(self, name) for name in _BLOBS)

    @classmethod
    def from_bytes(cls, data: bytes) -> Fingerprint:
        """Read :meth:`to_bytes`'s form back. Raises :class:`ValueError` on any other bytes,
        another version's included (recompute the fingerprint then)."""
        if len(data) < _HEADER.size:
            raise ValueError(f"{len(data)} bytes are too short for a fingerprint")
        magic, version, width, height, gw, gh, cw, ch, whole, centre = _HEADER.unpack_from(data)
        if magic != _MAGIC:
            raise ValueError("not a fingerprint (bad magic)")
        if version != FINGERPRINT_VERSION:
            raise ValueError(f"fingerprint version {version}, expected {FINGERPRINT_VERSION}")
        lengths = _blob_lengths((gw, gh), (cw, ch))
        expected = _HEADER.size + sum(lengths)
        if len(data) != expected:
            raise ValueError(f"a fingerprint of {len(data)} bytes; its header says {expected}")
        blobs, offset = {}, _HEADER.size
        for name, length in zip(_BLOBS, lengths, strict=True):
            blobs[name] = bytes(data[offset : offset + length])
            offset += length
        return cls(
            width=width,
            height=height,
            grid=(gw, gh),
            chroma_grid=(cw, ch),
            hashes=(whole, centre),
            **blobs,
        )


_BLOBS = ("luma", "chroma", "colour", "scene", "orient", "shape")


def _blob_lengths(grid: tuple[int, int], chroma_grid: tuple[int, int]) -> tuple[int, ...]:
    """The byte lengths of the :data:`_BLOBS` fields for these grid sizes."""
    (gw, gh), (cw, ch) = grid, chroma_grid
    return (gw * gh, 2 * cw * ch, _HIST_SIZE, _HIST_SIZE, _ORIENT_BINS, _SECTORS + 1)


@lru_cache(maxsize=128)
def _arrays(fp: Fingerprint) -> _Arrays:
    """``fp``'s features as float arrays (about 170 KB), kept for the most recently used
    fingerprints only: a run's clusters keep their small fingerprints, not these."""
    return _Arrays.of(fp)


@dataclass(frozen=True)
class _Arrays:
    """A fingerprint's features as float arrays, ready for the search."""

    luma: _Plane
    coarse: _Plane  # the luma grid at half size
    chroma: F32  # (h, w, 2), upsampled to the luma grid
    colour: F32
    scene: F32
    orient: F32
    outline: F32
    elongation: float

    @classmethod
    def of(cls, fp: Fingerprint) -> _Arrays:
        (gw, gh), (cw, ch) = fp.grid, fp.chroma_grid
        luma = np.frombuffer(fp.luma, dtype=np.uint8).reshape(gh, gw).astype(np.float32)
        planes = np.frombuffer(fp.chroma, dtype=np.uint8).reshape(2, ch, cw).astype(np.float32)
        chroma = np.stack([_resample(p, (0.0, 0.0, cw, ch), (gw, gh)) for p in planes], axis=2)
        coarse = _resample(luma, (0.0, 0.0, gw, gh), (max(1, gw // 2), max(1, gh // 2)))
        return cls(
            _Plane.of(luma),
            _Plane.of(coarse),
            chroma,
            _unit(fp.colour),
            _unit(fp.scene),
            _unit(fp.orient),
            np.frombuffer(fp.shape[:_SECTORS], dtype=np.uint8) * np.float32(_OUTLINE_SCALE / 255),
            fp.shape[_SECTORS] * _ELONGATION_SCALE / 255,
        )


@dataclass(frozen=True)
class _Plane:
    """A luma grid with its summed-area tables (of values and of squares), so that the sum
    and variance under any window cost four lookups, and its spectrum."""

    values: F32
    sums: F64
    squares: F64
    spectrum: npt.NDArray[np.complex128]  # its 2-D real FFT, for correlations

    @classmethod
    def of(cls, values: F32) -> _Plane:
        h, w = values.shape
        sums = np.zeros((h + 1, w + 1))
        sums[1:, 1:] = values.cumsum(axis=0).cumsum(axis=1)
        squares = np.zeros((h + 1, w + 1))
        squares[1:, 1:] = (values.astype(np.float64) ** 2).cumsum(axis=0).cumsum(axis=1)
        return cls(values, sums, squares, np.fft.rfft2(values.astype(np.float64)))

    @property
    def shape(self) -> tuple[int, int]:
        h, w = self.values.shape
        return h, w

    def window_spread(self, top: int, left: int, rows: int, cols: int, h: int, w: int) -> F64:
        """For each h x w window whose top-left corner lies within ``rows`` x ``cols`` cells
        of (``top``, ``left``): the root of its values' summed squared deviations from their
        mean, what a cross-correlation with a unit template is divided by."""
        sums = _window_sums(self.sums, top, left, rows, cols, h, w)
        squares = _window_sums(self.squares, top, left, rows, cols, h, w)
        return np.sqrt(np.maximum(squares - sums * sums / (h * w), 1e-6))


def _window_sums(table: F64, top: int, left: int, rows: int, cols: int, h: int, w: int) -> F64:
    """Sums of h x w windows from a summed-area table (corners within rows x cols of top, left)."""
    y1, x1 = top + rows, left + cols
    return np.asarray(
        table[top + h : y1 + h, left + w : x1 + w]
        - table[top:y1, left + w : x1 + w]
        - table[top + h : y1 + h, left:x1]
        + table[top:y1, left:x1]
    )


def _unit(quantised: bytes) -> F32:
    vector = np.frombuffer(quantised, dtype=np.uint8).astype(np.float32)
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm else vector


def _quantise(unit_vector: F64) -> bytes:
    return bytes(np.round(np.clip(unit_vector, 0.0, 1.0) * 255).astype(np.uint8))


# --- computing a fingerprint ----------------------------------------------------------------------


def fingerprint(data: bytes) -> Fingerprint:
    """Decode ``data`` (any format Pillow reads; the EXIF orientation applied; any mode made RGB,
    transparency laid on white) and compute its :class:`Fingerprint`.

    Deterministic: the same bytes give the same fingerprint. Pure: safe in threads and worker
    processes (no Pillow setting is touched). Raises :class:`EvidenceImageError` when the bytes
    are not a decodable image or have more than 64 million pixels.
    """
    rgb = _decode(data)
    w, h = rgb.size
    grid = (max(1, round(w * _GRID / max(w, h))), max(1, round(h * _GRID / max(w, h))))
    chroma_grid = (max(1, grid[0] // 2), max(1, grid[1] // 2))
    small = rgb.resize(grid, Image.Resampling.BOX)
    ycc = small.convert("YCbCr")
    luma, cb, cr = ycc.split()
    chroma = b"".join(
        plane.resize(chroma_grid, Image.Resampling.BOX).tobytes() for plane in (cb, cr)
    )
    luma_grid = np.asarray(luma, dtype=np.float32)
    mask = _foreground(np.asarray(ycc, dtype=np.float32))
    hsv = np.asarray(small.convert("HSV"), dtype=np.float64) / 255.0
    grey, inside = _cut_out(rgb, mask)
    return Fingerprint(
        width=w,
        height=h,
        grid=grid,
        luma=luma.tobytes(),
        chroma_grid=chroma_grid,
        chroma=chroma,
        hashes=(_phash(luma_grid), _phash(_centre(luma_grid, _HASH_CENTRE))),
        colour=_quantise(_colour_histogram(hsv[mask])),
        scene=_quantise(_colour_histogram(hsv.reshape(-1, 3))),
        orient=_quantise(_orientation_histogram(grey, inside)),
        shape=_shape(inside),
    )


def _decode(data: bytes) -> Image.Image:
    """The upright RGB image, decoded small where the format allows."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > _MAX_PIXELS:
                raise EvidenceImageError(
                    "too_many_pixels",
                    f"{img.width}x{img.height} is more than {_MAX_PIXELS:,} pixels",
                )
            img.draft(None, (_DECODE_SIDE, _DECODE_SIDE))  # JPEG only: DCT-scaled decoding
            img.load()
            return _to_rgb(ImageOps.exif_transpose(img), img.format)
    except EvidenceImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise EvidenceImageError("too_many_pixels", str(exc)) from None
    except Exception as exc:  # any decoder may choke on hostile bytes: that is bad input
        raise EvidenceImageError(
            "not_an_image", f"not a decodable image: {type(exc).__name__}: {exc}"
        ) from None


def _to_rgb(img: Image.Image, source_format: str | None) -> Image.Image:
    """RGB as a person would see it, as preprocessing makes it (:mod:`engine.colour`)."""
    return flatten(to_8bit(img, source_format)).convert("RGB")


def _foreground(ycc: F32) -> npt.NDArray[np.bool_]:
    """Where the product is: the pixels unlike every background colour of the frame.

    Background colours are colours sampled along the frame's four sides that recur on another
    side (the surface the product stands on surrounds it; a colour on one side only is the
    product touching the frame). Luma counts little, so vignettes, gradients and soft shadows
    stay background. Falls back to the whole frame when the split is implausible.
    """
    h, w, _ = ycc.shape
    features = ycc * np.array([_BACKGROUND_LUMA, 1.0, 1.0], dtype=np.float32)
    band = max(1, round(min(h, w) * 0.05))
    sides = (
        features[:band].reshape(-1, 3),
        features[-band:].reshape(-1, 3),
        features[:, :band].reshape(-1, 3),
        features[:, -band:].reshape(-1, 3),
    )
    picks = [s[np.linspace(0, len(s) - 1, min(len(s), _BORDER_SAMPLES)).astype(int)] for s in sides]
    samples = np.concatenate(picks)
    side = np.concatenate([np.full(len(p), k) for k, p in enumerate(picks)])
    distances = np.linalg.norm(samples[:, None] - samples[None], axis=2)
    across = np.where(side[:, None] != side[None], distances, np.inf).min(axis=1)
    # The surface's own spread (noise, texture) sets how far a background pixel may stray.
    radius = max(8.0, 3.0 * float(np.median(across)))
    surface = samples[across < radius]
    everything = np.ones((h, w), dtype=bool)
    if len(surface) < 8:
        return everything
    # Near-identical surface colours (a plain backdrop gives hundreds) are merged into the mean
    # of their cell, a quarter of the radius wide: far fewer distances to take, each off by at
    # most the cell's diagonal, 0.43 of the radius.
    cells, members = np.unique(np.floor(surface / (radius / 4)), axis=0, return_inverse=True)
    counts = np.bincount(members.ravel(), minlength=len(cells))[:, None]
    centres = np.zeros((len(cells), 3))
    np.add.at(centres, members.ravel(), surface)
    centres /= counts
    pixels = features.reshape(-1, 3)
    nearest = np.full(len(pixels), np.inf, dtype=np.float32)
    for centre in centres.astype(np.float32):
        nearest = np.minimum(nearest, ((pixels - centre) ** 2).sum(axis=1))
    mask = _majority(nearest.reshape(h, w) > radius**2)
    share = float(mask.mean())
    return mask if 0.005 <= share <= 0.97 else everything


def _majority(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """3x3 majority vote: drops specks of noise, fills pinholes."""
    padded = np.pad(mask.astype(np.int8), 1, mode="edge")
    h, w = mask.shape
    votes = sum(padded[i : i + h, j : j + w].astype(np.int32) for i in range(3) for j in range(3))
    return np.asarray(votes >= 5)


def _soft_bins(
    x: F64, bins: int, *, wrap: bool
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], F64]:
    """Linear soft binning of ``x`` in [0, 1]: lower bin, upper bin, the upper bin's weight."""
    position = x * bins - 0.5
    low = np.floor(position).astype(np.int64)
    weight = position - low
    if wrap:
        return low % bins, (low + 1) % bins, weight
    return np.clip(low, 0, bins - 1), np.clip(low + 1, 0, bins - 1), weight


def _colour_histogram(hsv: F64) -> F64:
    """Soft hue x saturation x value histogram of coloured pixels, plus grey levels; unit
    length after a square root (Hellinger), so a cosine compares two of them."""
    hue_bins, sat_bins, val_bins, grey_bins = _HIST_BINS
    hue, sat, val = hsv[:, 0], hsv[:, 1], hsv[:, 2]
    coloured = (sat > _MIN_SATURATION) & (val > _MIN_VALUE)
    hue_lo, hue_hi, hue_w = _soft_bins(hue[coloured], hue_bins, wrap=True)
    sat_scaled = (sat[coloured] - _MIN_SATURATION) / (1 - _MIN_SATURATION)
    sat_lo, sat_hi, sat_w = _soft_bins(sat_scaled, sat_bins, wrap=False)
    val_lo, val_hi, val_w = _soft_bins(val[coloured], val_bins, wrap=False)
    size = hue_bins * sat_bins * val_bins
    hist = np.zeros(size)
    for h_bin, h_w in ((hue_lo, 1 - hue_w), (hue_hi, hue_w)):
        for s_bin, s_w in ((sat_lo, 1 - sat_w), (sat_hi, sat_w)):
            for v_bin, v_w in ((val_lo, 1 - val_w), (val_hi, val_w)):
                index = (h_bin * sat_bins + s_bin) * val_bins + v_bin
                hist += np.bincount(index, weights=h_w * s_w * v_w, minlength=size)
    grey_lo, grey_hi, grey_w = _soft_bins(val[~coloured], grey_bins, wrap=False)
    grey = np.bincount(grey_lo, 1 - grey_w, grey_bins) + np.bincount(grey_hi, grey_w, grey_bins)
    full = np.sqrt(np.concatenate([hist, grey]) / max(len(hsv), 1))
    return _normalised(full)


def _cut_out(rgb: Image.Image, mask: npt.NDArray[np.bool_]) -> tuple[F64, npt.NDArray[np.bool_]]:
    """The product's bounding box cut out of the decoded image in grey, ``_OBJECT_SIDE`` pixels
    on its long side, and the foreground mask over it."""
    gh, gw = mask.shape
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    cells = (float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1))
    sx, sy = rgb.width / gw, rgb.height / gh
    box = (cells[0] * sx, cells[1] * sy, cells[2] * sx, cells[3] * sy)
    fit = _OBJECT_SIDE / max(box[2] - box[0], box[3] - box[1])
    size = (max(2, round((box[2] - box[0]) * fit)), max(2, round((box[3] - box[1]) * fit)))
    grey = rgb.convert("L").resize(size, Image.Resampling.BILINEAR, box=box)
    inside = _resample(mask.astype(np.float32), cells, size) > 0.5
    return np.asarray(grey, dtype=np.float64), inside


def _orientation_histogram(grey: F64, inside: npt.NDArray[np.bool_]) -> F64:
    """Magnitude-weighted histogram of edge orientations (mod 180 degrees) over the product;
    Hellinger, unit length."""
    dy, dx = np.gradient(grey)
    magnitude = (np.hypot(dx, dy) * inside).ravel()
    angle = ((np.arctan2(dy, dx) % np.pi) / np.pi).ravel()
    low, high, weight = _soft_bins(angle, _ORIENT_BINS, wrap=True)
    hist = np.bincount(low, magnitude * (1 - weight), _ORIENT_BINS)
    hist += np.bincount(high, magnitude * weight, _ORIENT_BINS)
    return _normalised(np.sqrt(hist))


def _shape(inside: npt.NDArray[np.bool_]) -> bytes:
    """The outline: how far the product reaches in each of ``_SECTORS`` directions from its
    centroid (90th percentile of its pixels' distances, per the radius of a disc of its area),
    then its elongation (log ratio of its second moments). A turn of the product shifts the
    outline round; neither depends on its size."""
    ys, xs = np.nonzero(inside)
    if len(ys) < 3:
        return bytes(_SECTORS + 1)
    dy, dx = ys - ys.mean(), xs - xs.mean()
    radius = np.hypot(dx, dy) / math.sqrt(len(ys) / math.pi)
    sector = np.floor((np.arctan2(dy, dx) / (2 * math.pi) + 0.5) * _SECTORS).astype(int) % _SECTORS
    # The 90th percentile per sector, from one sort by (sector, radius).
    ranked = radius[np.lexsort((radius, sector))]
    starts = np.searchsorted(np.sort(sector), np.arange(_SECTORS + 1))
    counts = np.diff(starts)
    picks = starts[:-1] + np.floor(0.9 * np.maximum(counts - 1, 0)).astype(int)
    reach = np.where(counts > 0, ranked[np.minimum(picks, len(ranked) - 1)], 0.0)
    moments = np.linalg.eigvalsh(np.cov(np.stack([dx, dy])))
    elongation = math.log((moments[1] + 1e-6) / (max(moments[0], 0.0) + 1e-6))
    stored = np.append(reach / _OUTLINE_SCALE, elongation / _ELONGATION_SCALE)
    return _quantise(stored)


def _normalised(vector: F64) -> F64:
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 else vector


def _dct_matrix(n: int) -> F64:
    """The orthonormal DCT-II matrix: ``D @ x`` transforms a column of ``n`` samples."""
    k = np.arange(n)[:, None]
    matrix = np.cos(np.pi * (2 * np.arange(n)[None] + 1) * k / (2 * n)) * math.sqrt(2 / n)
    matrix[0] /= math.sqrt(2)
    return matrix


_DCT = _dct_matrix(_HASH_SIDE)


def _phash(luma: F32) -> int:
    """64-bit perceptual hash: the 8x8 lowest DCT frequencies against their median."""
    square = _resample(luma, (0.0, 0.0, luma.shape[1], luma.shape[0]), (_HASH_SIDE, _HASH_SIDE))
    low = (_DCT @ square.astype(np.float64) @ _DCT.T)[:8, :8].ravel()
    bits = low > np.median(low[1:])  # the DC term would skew the median
    return int(np.packbits(bits).view(">u8")[0])


def _centre(grid: F32, share: float) -> F32:
    """The central ``share`` of each side of ``grid`` (all of it when it is tiny)."""
    h, w = grid.shape
    dy, dx = round(h * (1 - share) / 2), round(w * (1 - share) / 2)
    return grid[dy : h - dy, dx : w - dx] if h > 2 and w > 2 else grid


def _resample(plane: F32, box: tuple[float, float, float, float], size: tuple[int, int]) -> F32:
    """``box`` (fractional pixel edges) of a float plane, resampled to ``size`` by averaging
    what each output cell covers (linear interpolation where it covers less than a cell)."""
    h, w = plane.shape
    rows = _resampling_matrix(h, box[1], box[3], size[1])
    cols = _resampling_matrix(w, box[0], box[2], size[0])
    return np.asarray(rows @ plane @ cols.T, dtype=np.float32)


@lru_cache(maxsize=512)  # at most 16 KB each
def _resampling_matrix(n: int, start: float, stop: float, m: int) -> F32:
    """The (m, n) matrix taking ``n`` samples to ``m`` cells spanning [start, stop): each cell
    averages the samples it covers, each sample a unit interval (a linear tent when a cell
    spans less than one sample). Cached: grids come in few sizes, and boxes repeat."""
    edges = start + (stop - start) * np.arange(m + 1) / m
    width = max((stop - start) / m, 1.0)
    centres = (edges[:-1] + edges[1:]) / 2
    # Overlap of each cell [c - width/2, c + width/2) with each sample's interval [i, i + 1).
    low = np.maximum(centres[:, None] - width / 2, np.arange(n)[None])
    high = np.minimum(centres[:, None] + width / 2, np.arange(n)[None] + 1)
    weights = np.clip(high - low, 0.0, None)
    if not weights.any(axis=1).all():
        raise ValueError("resampling box outside the plane")
    matrix = np.asarray(weights / weights.sum(axis=1, keepdims=True), dtype=np.float32)
    matrix.setflags(write=False)  # shared by every caller through the cache
    return matrix


# --- comparing ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    """How a query image and an offer image compare.

    ``visual_score`` (0-1, 4 decimals) grows with likeness: same photos score 0.9 or more and
    nothing else does; ``verdict`` is a function of it (see :func:`verdict_for`).
    """

    visual_score: float
    same_photo: bool
    verdict: Verdict


def verdict_for(visual_score: float) -> Verdict:
    """The verdict a score earns: ``same_photo`` from 0.9, ``same_product`` from
    :data:`SAME_PRODUCT_THRESHOLD`, ``similar`` from :data:`SIMILAR_THRESHOLD`, else
    ``different``."""
    if visual_score >= _SAME_PHOTO_FLOOR:
        return "same_photo"
    if visual_score >= SAME_PRODUCT_THRESHOLD:
        return "same_product"
    if visual_score >= SIMILAR_THRESHOLD:
        return "similar"
    return "different"


def compare(query: Fingerprint, offer: Fingerprint) -> Comparison:
    """Compare two fingerprints (deterministic, pure; symmetric up to float rounding).

    ``same_photo`` when one image placed inside the other (or the middle of either, for two
    crops of one photo) at the best scale and offset agrees with it over their overlap, but
    for a corner region (a watermark) and within a cell of misalignment; ``visual_score`` then
    lies in [0.9, 1]. Otherwise the score is the likeness of the products shown (foreground
    colours, edge orientations, outline), below 0.9; ``verdict`` is ``verdict_for`` the score.
    """
    mismatch = _photo_mismatch(query, offer)
    if mismatch is not None and mismatch <= _MAX_MISMATCH:
        score = _SAME_PHOTO_FLOOR + (1 - _SAME_PHOTO_FLOOR) * (1 - mismatch / _MAX_MISMATCH)
        score = round(score, 4)
        return Comparison(score, True, "same_photo")
    score = min(round(_product_likeness(query, offer), 4), _SAME_PHOTO_FLOOR - 0.0001)
    return Comparison(score, False, verdict_for(score))


def product_features(query: Fingerprint, offer: Fingerprint) -> tuple[float, float, float, float]:
    """What product likeness is weighed from (exposed for calibration, see ``bench/evidence.py``):

    - colour: cosine of the foreground colour histograms, 0-1;
    - orientation: cosine of the edge orientation histograms, the best of the offer's turned
      by -15, 0 and +15 degrees (a buyer's tilt), 0-1;
    - elongation: the difference of the foregrounds' elongations, 0-4;
    - outline: correlation of the outlines, the best over turns of up to 45 degrees, -1-1.
    """
    x, y = _arrays(query), _arrays(offer)
    colour = float(x.colour @ y.colour)
    orientation = max(float(x.orient @ np.roll(y.orient, k)) for k in (-1, 0, 1))
    elongation = abs(x.elongation - y.elongation)
    a, b = x.outline - x.outline.mean(), y.outline - y.outline.mean()
    norms = float(np.linalg.norm(a) * np.linalg.norm(b))
    outline = max(float(a @ np.roll(b, k)) for k in range(-2, 3)) / norms if norms else 0.0
    return colour, orientation, elongation, outline


def _product_likeness(a: Fingerprint, b: Fingerprint) -> float:
    """Product likeness on the ``visual_score`` scale, below 0.9: the weighted features,
    squashed by a logistic that maps the calibrated cuts onto the verdict thresholds."""
    evidence = float(np.dot(_LIKENESS_WEIGHTS, product_features(a, b)))
    return _SAME_PHOTO_FLOOR / (1 + math.exp(-(_SQUASH_SLOPE * evidence + _SQUASH_OFFSET)))


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


# The squash sends _LIKENESS_CUTS to SIMILAR_THRESHOLD and SAME_PRODUCT_THRESHOLD.
_SQUASH_SLOPE = (
    _logit(SAME_PRODUCT_THRESHOLD / _SAME_PHOTO_FLOOR)
    - _logit(SIMILAR_THRESHOLD / _SAME_PHOTO_FLOOR)
) / (_LIKENESS_CUTS[1] - _LIKENESS_CUTS[0])
_SQUASH_OFFSET = _logit(SIMILAR_THRESHOLD / _SAME_PHOTO_FLOOR) - _SQUASH_SLOPE * _LIKENESS_CUTS[0]


@dataclass(frozen=True)
class _Placement:
    """``box`` of one image's grid (cells) resized to w x h cells of another's, its top-left
    corner at (x, y); ``ncc`` says how well it correlates there."""

    ncc: float
    box: _Box
    x: int
    y: int
    w: int
    h: int


def _photo_mismatch(a: Fingerprint, b: Fingerprint) -> float | None:
    """How much of the content two images share disagrees, at the best placement of one inside
    the other (0: none); ``None`` when nothing fits well enough to be checked, or the images
    are blank.

    Whole images are placed first, each inside the other (one a crop of the other). If neither
    is the same photo and their colours overall are alike, the middle of each is placed in
    the other: two crops of one photo share their middles, not their edges. Images whose
    colours overall (scene histograms) differ more than ``_SCENE_FLOOR`` allows are not
    searched at all: a crop keeping a third of a photo, watermarked, still passes.
    """
    x, y = _arrays(a), _arrays(b)
    scene = float(x.scene @ y.scene)
    if scene < _SCENE_FLOOR:
        return None
    attempts = [(_WHOLE, _MIN_SHARE)]
    if scene >= _MIDDLE_SCENE:
        attempts.append((_MIDDLE, _MIDDLE_MIN_SHARE))
    best: float | None = None
    for part, min_share in attempts:
        for small, large in ((x, y), (y, x)):
            placement = _place(small, large, part, min_share)
            if placement is None or placement.ncc < _MIN_NCC:
                continue
            mismatch = _mismatch(small, large, placement)
            if mismatch is not None and (best is None or mismatch < best):
                best = mismatch
        if best is not None and best <= _MAX_MISMATCH:
            break
    return best


def _place(small: _Arrays, large: _Arrays, part: _Box, min_share: float) -> _Placement | None:
    """Where ``part`` of ``small`` (fractions of its sides) best fits inside ``large``, by
    normalised cross-correlation.

    Sizes from all of ``large`` down to ``min_share`` of its width and height,
    ``_COARSE_STEP`` apart, and every offset are tried on the half-size grids; the best
    placement, if it correlates at least ``_COARSE_NCC``, is refined on the full grids: the
    part's box is scaled by each of ``_REFINE`` (the template's size in cells stays whole,
    the scale need not) and offsets within ``_SLACK`` cells are tried. ``None`` if nothing
    fits or correlates enough.
    """
    coarse_box = _cells(part, small.coarse.shape)
    sizes = _template_sizes(coarse_box, large.coarse.shape, min_share)
    guess = _scan_sizes(small.coarse, coarse_box, large.coarse, sizes)
    if guess is None or guess.ncc < _COARSE_NCC:
        return None
    lh, lw = large.luma.shape
    ch, cw = large.coarse.shape
    box = _cells(part, small.luma.shape)
    # The size in whole cells from the coarse width, the height from the part's own aspect
    # (the coarse one is rounded); then the box takes the whole cells' aspect, so that its
    # scale is the same along both axes.
    w = min(lw, round(guess.w * lw / cw))
    h = min(lh, round(w * (box[3] - box[1]) / (box[2] - box[0])))
    if min(w, h) < _MIN_TEMPLATE:
        return None
    cy, half_h = (box[1] + box[3]) / 2, (box[2] - box[0]) * h / (2 * w)
    box = (box[0], max(0.0, cy - half_h), box[2], min(float(small.luma.shape[0]), cy + half_h))
    x0 = min(max(0, round(guess.x * lw / cw) - _SLACK), lw - w)
    y0 = min(max(0, round(guess.y * lh / ch) - _SLACK), lh - h)
    area = (y0, x0, min(lh - h, y0 + 2 * _SLACK) + 1 - y0, min(lw - w, x0 + 2 * _SLACK) + 1 - x0)
    boxes = [b for f in _REFINE if (b := _scaled(box, f, small.luma.shape)) is not None]
    return _scan_boxes(small.luma, boxes, large.luma, (w, h), area) if boxes else None


def _scaled(box: _Box, factor: float, shape: tuple[int, int]) -> _Box | None:
    """``box`` shrunk (``factor`` > 1) or grown about its centre so that, resampled to the same
    size, it shows ``factor`` times larger; ``None`` if it would leave a grid of ``shape``."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    half_w, half_h = (box[2] - box[0]) / (2 * factor), (box[3] - box[1]) / (2 * factor)
    scaled = (cx - half_w, cy - half_h, cx + half_w, cy + half_h)
    h, w = shape
    inside = scaled[0] >= 0 and scaled[1] >= 0 and scaled[2] <= w and scaled[3] <= h
    return scaled if inside else None


def _cells(part: _Box, shape: tuple[int, int]) -> _Box:
    """``part`` (fractions) of a grid of ``shape`` (h, w), in cells."""
    h, w = shape
    return (part[0] * w, part[1] * h, part[2] * w, part[3] * h)


def _template_sizes(box: _Box, large: tuple[int, int], min_share: float) -> list[tuple[int, int]]:
    """Template sizes (w, h) in ``large``'s cells for a template of ``box``'s aspect: from the
    largest that fits down to ``min_share`` of ``large``'s width and height,
    ``_COARSE_STEP`` apart."""
    aspect = (box[2] - box[0]) / (box[3] - box[1])  # width / height
    lh, lw = large
    sizes: list[tuple[int, int]] = []
    share = min(1.0, lh * aspect / lw)  # the largest that fits: full width or full height
    while True:
        w = round(share * lw)
        h = round(w / aspect)
        if w < min_share * lw or h < min_share * lh or min(w, h) < _MIN_TEMPLATE:
            return sizes
        if (w, h) not in sizes and w <= lw and h <= lh:
            sizes.append((w, h))
        share *= _COARSE_STEP


def _scan_sizes(
    small: _Plane, box: _Box, large: _Plane, sizes: Sequence[tuple[int, int]]
) -> _Placement | None:
    """The best placement by normalised cross-correlation of ``box`` of ``small``, resized to
    each of ``sizes`` (w, h), at every offset inside ``large`` where it fits. Flat templates
    are skipped.

    All sizes are correlated with ``large`` at once through FFTs: a template zero-padded to
    ``large``'s size, correlated circularly, gives the plain correlation at every offset where
    it fits, the only ones read.
    """
    lh, lw = large.shape
    padded, kept = [], []
    for w, h in sizes:
        template = _unit_template(small, box, (w, h))
        if template is not None:
            canvas = np.zeros((lh, lw))
            canvas[:h, :w] = template
            padded.append(canvas)
            kept.append((w, h))
    if not kept:
        return None
    spectra = np.fft.rfft2(np.stack(padded))
    correlations = np.fft.irfft2(large.spectrum[None] * np.conj(spectra), s=(lh, lw))
    best: _Placement | None = None
    for correlation, (w, h) in zip(correlations, kept, strict=True):
        rows, cols = lh - h + 1, lw - w + 1
        ncc = correlation[:rows, :cols] / large.window_spread(0, 0, rows, cols, h, w)
        y, x = divmod(int(np.argmax(ncc)), cols)
        if best is None or ncc[y, x] > best.ncc:
            best = _Placement(float(ncc[y, x]), box, x, y, w, h)
    return best


def _scan_boxes(
    small: _Plane,
    boxes: Sequence[_Box],
    large: _Plane,
    size: tuple[int, int],
    area: tuple[int, int, int, int],
) -> _Placement | None:
    """The best placement by normalised cross-correlation of each of ``boxes`` of ``small``,
    resized to ``size`` (w, h), at the offsets of ``area`` (top, left, rows, cols) inside
    ``large``: one size, so one set of windows serves them all. Flat templates are skipped."""
    w, h = size
    top, left, rows, cols = area
    kept = [(box, t) for box in boxes if (t := _unit_template(small, box, size)) is not None]
    if not kept:
        return None
    region = large.values[top : top + rows + h - 1, left : left + cols + w - 1]
    windows = np.lib.stride_tricks.sliding_window_view(region, (h, w))
    correlations = np.einsum("ijkl,mkl->mij", windows, np.stack([t for _, t in kept]))
    ncc = correlations / large.window_spread(top, left, rows, cols, h, w)[None]
    k, y, x = np.unravel_index(int(np.argmax(ncc)), ncc.shape)
    return _Placement(float(ncc[k, y, x]), kept[k][0], left + int(x), top + int(y), w, h)


def _unit_template(small: _Plane, box: _Box, size: tuple[int, int]) -> F64 | None:
    """``box`` of ``small`` resized to ``size``, zero-mean and unit-norm; ``None`` if flat."""
    template = _resample(small.values, box, size).astype(np.float64)
    centred = template - template.mean()
    norm = float(np.sqrt((centred * centred).sum()))
    return centred / norm if norm >= 1.0 else None


def _mismatch(small: _Arrays, large: _Arrays, at: _Placement) -> float | None:
    """Share of the content where ``small`` and ``large`` disagree over their overlap, ``small``
    placed by ``at``: luma plus chroma levels apart by more than ``_PIXEL_ERROR``
    (after removing a constant shift of each), outside the corner region that disagrees most.
    ``None`` when the overlap holds too little content to tell."""
    overlap = _overlap(small.luma.shape, large.luma.shape, at)
    if overlap is None:
        return None
    box, (x0, y0, x1, y1) = overlap
    size = (x1 - x0, y1 - y0)
    t_luma = _resample(small.luma.values, box, size)
    t_chroma = np.stack([_resample(small.chroma[:, :, k], box, size) for k in range(2)], axis=2)
    c_luma, c_chroma = large.luma.values[y0:y1, x0:x1], large.chroma[y0:y1, x0:x1]
    shift_luma = float(np.median(c_luma - t_luma))
    shift_chroma = np.median((c_chroma - t_chroma).reshape(-1, 2), axis=0)
    error = _outside(t_luma + shift_luma, c_luma)
    error += _outside(t_chroma + shift_chroma, c_chroma).sum(axis=2)
    content = (
        _strays(t_luma, _CONTENT_LUMA)
        | _strays(c_luma, _CONTENT_LUMA)
        | _strays(t_chroma, _CONTENT_CHROMA)
        | _strays(c_chroma, _CONTENT_CHROMA)
    )
    if content.mean() < _MIN_CONTENT:
        return None
    wrong = content & (error > _PIXEL_ERROR)
    best = float(wrong.sum() / content.sum())
    h, w = content.shape
    for share_w, share_h in _EXCLUSIONS:
        ew, eh = round(w * share_w), round(h * share_h)
        for ex in (0, w - ew):
            for ey in (0, h - eh):
                kept = content.sum() - content[ey : ey + eh, ex : ex + ew].sum()
                if kept >= _MIN_CONTENT * w * h:
                    bad = wrong.sum() - wrong[ey : ey + eh, ex : ex + ew].sum()
                    best = min(best, float(bad / kept))
    return best


def _overlap(
    small: tuple[int, int], large: tuple[int, int], at: _Placement
) -> tuple[_Box, tuple[int, int, int, int]] | None:
    """Where the grids of shapes ``small`` and ``large`` (h, w) overlap, with ``at`` placing
    one in the other: the box in ``small``'s cells (fractional) and the whole cells of
    ``large`` (x0, y0, x1, y1) it lands on; ``None`` if that is under ``_MIN_TEMPLATE`` cells."""
    spans = []
    for axis, (start, length, offset, extent) in enumerate(
        ((at.box[0], at.w, at.x, large[1]), (at.box[1], at.h, at.y, large[0]))
    ):
        scale = length / (at.box[axis + 2] - start)  # large cells per small cell
        low = max(0, math.ceil(offset - start * scale - 1e-6))
        high = min(extent, math.floor(offset + (small[1 - axis] - start) * scale + 1e-6))
        if high - low < _MIN_TEMPLATE:
            return None
        spans.append((start + (low - offset) / scale, start + (high - offset) / scale, low, high))
    (u0, u1, x0, x1), (v0, v1, y0, y1) = spans
    return (u0, v0, u1, v1), (x0, y0, x1, y1)


def _outside(values: F32, reference: F32) -> F32:
    """How far each value lies outside the range of ``reference`` over its 3x3 neighbourhood:
    a placement off by up to one cell (sub-cell scale or offset error) costs nothing."""
    h, w = reference.shape[:2]
    pad = ((1, 1), (1, 1)) + ((0, 0),) * (reference.ndim - 2)
    padded = np.pad(reference, pad, mode="edge")
    shifted = np.stack([padded[i : i + h, j : j + w] for i in range(3) for j in range(3)])
    low, high = shifted.min(axis=0), shifted.max(axis=0)
    return np.asarray(np.maximum(0.0, np.maximum(values - high, low - values)), dtype=np.float32)


def _strays(plane: F32, levels: float) -> npt.NDArray[np.bool_]:
    """Pixels farther than ``levels`` from the plane's median (per channel; any channel)."""
    if plane.ndim == 2:
        return np.asarray(np.abs(plane - np.median(plane)) > levels)
    median = np.median(plane.reshape(-1, plane.shape[2]), axis=0)
    return np.asarray((np.abs(plane - median) > levels).any(axis=2))


# --- clusters -------------------------------------------------------------------------------------


class PhotoClusters:
    """Cluster ids for offer images over a run: images showing the same photograph share one.

    :meth:`add` takes one answer's images at a time. Within the answer, images are grouped
    first (``same_photo`` between them, joined transitively); then each group joins the
    cluster whose representative (its first image) is the same photo as the group's first
    member that matches any (the highest score if several), else opens a new cluster. A
    cluster's id is ``"c"`` + the first 12 hex digits of its first image's SHA-256, so the
    same first image gives the same id in another run. An image already seen (same SHA-256)
    keeps its cluster, and its group joins that cluster; ids once given never change.

    Not thread-safe: a run feeds it answer by answer from one task.

    Memory: one representative fingerprint per cluster, one id per image seen. Each image is
    compared in full only with the clusters that a cheap prefilter picks: the
    ``_PREFILTER_TOP`` most alike in colour (one matrix product over every cluster) and every
    cluster whose perceptual hashes lie within ``_HASH_RADIUS`` bits (packed 64-bit hashes).
    """

    def __init__(self) -> None:
        self._by_sha: dict[str, str] = {}
        self._index: dict[str, int] = {}  # cluster id -> row
        self._ids: list[str] = []  # row -> cluster id
        self._reps: list[Fingerprint] = []
        self._rep_is_first: list[bool] = []
        self._hashes = _Rows(2, np.uint64)
        self._vectors = _Rows(_HIST_SIZE, np.float32)

    def __len__(self) -> int:
        """The number of clusters."""
        return len(self._reps)

    def add(self, images: Sequence[tuple[str, Fingerprint]]) -> dict[str, str]:
        """Cluster one answer's images: (SHA-256 hex of the image bytes, fingerprint) pairs,
        distinct SHA-256s. Returns SHA-256 -> cluster id for each."""
        shas = [_checked_sha(sha) for sha, _ in images]
        if len(set(shas)) != len(shas):
            raise ValueError("an answer's images must have distinct SHA-256s")
        if all(sha in self._by_sha for sha in shas):
            # An answer judged before (another SKU or photo sharing it): nothing to compare.
            return {sha: self._by_sha[sha] for sha in shas}
        fps = [fp for _, fp in images]
        result: dict[str, str] = {}
        for group in _groups(fps):
            known = next((self._by_sha[shas[i]] for i in group if shas[i] in self._by_sha), None)
            cluster = known or self._match(fps[i] for i in group)
            if cluster is None:
                first = group[0]
                cluster = _cluster_id(shas[first])
                self._open(cluster, fps[first], is_first=True)
            for i in group:
                self._by_sha.setdefault(shas[i], cluster)
                result[shas[i]] = self._by_sha[shas[i]]
        return result

    def restore(self, sha256: str, cluster_id: str, fp: Fingerprint) -> None:
        """Seed with an assignment an earlier invocation of the same run made, so that ids stay
        stable across a kill and resume. Any order works: the image the id was derived from
        becomes its cluster's representative once it is restored."""
        sha = _checked_sha(sha256)
        if not _CLUSTER_ID.fullmatch(cluster_id):
            raise ValueError(f"not a cluster id: {cluster_id!r}")
        self._by_sha[sha] = cluster_id
        is_first = _cluster_id(sha) == cluster_id
        row = self._index.get(cluster_id)
        if row is None:
            self._open(cluster_id, fp, is_first=is_first)
        elif is_first and not self._rep_is_first[row]:
            self._reps[row] = fp
            self._rep_is_first[row] = True
            self._hashes.set(row, _hash_row(fp))
            self._vectors.set(row, _unit(fp.scene))

    def _open(self, cluster_id: str, fp: Fingerprint, *, is_first: bool) -> None:
        self._index[cluster_id] = len(self._reps)
        self._ids.append(cluster_id)
        self._reps.append(fp)
        self._rep_is_first.append(is_first)
        self._hashes.append(_hash_row(fp))
        self._vectors.append(_unit(fp.scene))

    def _match(self, members: Iterable[Fingerprint]) -> str | None:
        """The existing cluster whose representative is the same photo as the first of
        ``members`` that has one (of its candidates, the one with the highest score; on a
        tie, the most alike in colour), or ``None``."""
        for fp in members:
            best: tuple[float, int] | None = None
            for row in _candidates(
                _unit(fp.scene), _hash_row(fp), self._vectors.view(), self._hashes.view()
            ):
                result = compare(fp, self._reps[row])
                if result.same_photo and (best is None or result.visual_score > best[0]):
                    best = (result.visual_score, row)
            if best is not None:
                return self._ids[best[1]]
        return None


def _groups(fps: Sequence[Fingerprint]) -> list[list[int]]:
    """Indices of ``fps`` grouped by ``same_photo`` (union-find over prefiltered pairs), each
    group in input order, groups in the order of their first member."""
    if len(fps) < 2:
        return [[i] for i in range(len(fps))]
    parent = list(range(len(fps)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    vectors = np.stack([_unit(fp.scene) for fp in fps])
    hashes = np.stack([_hash_row(fp) for fp in fps])
    for i, fp in enumerate(fps[:-1]):
        later = _candidates(vectors[i], hashes[i], vectors[i + 1 :], hashes[i + 1 :])
        for offset in later:
            j = i + 1 + offset
            if root(i) != root(j) and compare(fp, fps[j]).same_photo:
                parent[max(root(i), root(j))] = min(root(i), root(j))
    groups: dict[int, list[int]] = {}
    for i in range(len(fps)):
        groups.setdefault(root(i), []).append(i)
    return sorted(groups.values(), key=lambda members: members[0])


def _candidates(
    vector: F32, hashes: npt.NDArray[np.uint64], vectors: F32, table: npt.NDArray[np.uint64]
) -> list[int]:
    """Rows worth a full comparison: of those whose scene histograms pass ``_SCENE_FLOOR``,
    the ``_PREFILTER_TOP`` most alike, and any whose hashes (either pair) lie within
    ``_HASH_RADIUS`` bits; most alike first."""
    if len(vectors) == 0:
        return []
    likeness = vectors @ vector
    top = np.argsort(-likeness, kind="stable")[:_PREFILTER_TOP]
    top = top[likeness[top] >= _SCENE_FLOOR]
    xor = table[:, :, None] ^ hashes[None, None, :]
    distance = np.unpackbits(xor.view(np.uint8).reshape(*xor.shape, 8), axis=3).sum(axis=3)
    near = np.flatnonzero(distance.min(axis=(1, 2)) <= _HASH_RADIUS)
    rows = sorted(set(top.tolist()) | set(near.tolist()), key=lambda r: (-likeness[r], r))
    return rows


def _hash_row(fp: Fingerprint) -> npt.NDArray[np.uint64]:
    return np.array(fp.hashes, dtype=np.uint64)


def _checked_sha(sha: str) -> str:
    if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
        raise ValueError(f"not a lowercase hex SHA-256: {sha!r}")
    return sha


def _cluster_id(sha: str) -> str:
    return "c" + sha[:12]


class _Rows:
    """A growable matrix (capacity doubles), for the prefilter's per-cluster rows."""

    def __init__(self, width: int, dtype: type[np.generic]) -> None:
        self._data: npt.NDArray[Any] = np.zeros((16, width), dtype=dtype)
        self._count = 0

    def append(self, row: npt.NDArray[Any]) -> None:
        if self._count == len(self._data):
            self._data = np.concatenate([self._data, np.zeros_like(self._data)])
        self._data[self._count] = row
        self._count += 1

    def set(self, index: int, row: npt.NDArray[Any]) -> None:
        self._data[index] = row

    def view(self) -> npt.NDArray[Any]:
        return self._data[: self._count]
