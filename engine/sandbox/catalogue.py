"""The sandbox's product catalogue and its content-based image matcher.

Each product image gets one perceptual descriptor at load time. A query is decoded (EXIF
orientation applied), the object is separated from its background by modelling the border
colours, and the cropped object is described by a soft hue/saturation/value histogram, a
normalised grayscale layout and a chromaticity layout (where each colour sits, with any global
colour cast subtracted). Layouts of a query are taken at a few tilts and the best one counts.
Similarity is a weighted sum of cosine similarities, so ranking a query against every product
is a couple of small matrix products.

Several products may name one image file (resellers of one factory photo): each is its own
offer, with the same descriptor, so they score alike and rank by offer id. A loaded catalogue
remembers its folder and the stamp of its ``catalogue.json``, so that the gateway can serve the
photos and reload the catalogue when the file changes.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

__all__ = [
    "DEFAULT_CATALOGUE",
    "Catalogue",
    "CatalogueSource",
    "ImageFault",
    "Match",
    "PriceTier",
    "Product",
    "Stamp",
    "stamp_of",
]

# The built-in catalogue is package data: it is installed beside this module.
DEFAULT_CATALOGUE: Path = Path(__file__).resolve().parent / "data" / "catalogue"

_MASK_SIDE = 160  # the object is located on a thumbnail of this long side
_DETAIL_SIDE = 480  # and described from a crop of the image decoded at about this size
_OBJECT_SIDE = 128  # the object crop is scaled to this long side
_GRID = 16  # layout resolution, cells per side
_HUE_BINS = 12
_SAT_BINS = 2
_VAL_BINS = 2
_GRAY_BINS = 4
_MIN_SATURATION = 0.2  # below it a pixel counts as grey
_MAX_PIXELS = 80_000_000  # refuse decompression bombs before decoding them
# Weights of the colour histogram, grayscale layout and chromaticity layout (sum 1). The
# histogram ignores geometry, so it survives a buyer's angle; the layouts tell apart products
# of similar colours.
_WEIGHTS = (0.4, 0.25, 0.35)
# A buyer's photo may be tilted; its geometry is compared at each of these turns (degrees).
_QUERY_TILTS = (-20.0, -10.0, 0.0, 10.0, 20.0)


@dataclass(frozen=True)
class PriceTier:
    """One quantity price break: from ``min_quantity`` pieces the unit price is ``price``."""

    min_quantity: int
    price: str


ImageFault = Literal["missing", "corrupt", "html"]
"""How the sandbox serves a product's photo instead of the photo: ``missing`` (404), ``corrupt``
(200 ``image/jpeg`` with bytes no decoder reads), ``html`` (200 ``text/html``)."""

_OPTIONAL_TEXT = ("repurchase_rate", "ship_in")


@dataclass(frozen=True)
class Product:
    """One wholesale offer of the sandbox catalogue (prices are CNY decimal strings).

    The optional fields state what an ocean answer says of the supplier, as the gateway writes
    it (``repurchase_rate`` such as ``"23%"``, ``ship_in`` such as ``"shipIn48Hours"``); left
    ``None``, the answer derives them from the offer id. ``image_fault`` makes the sandbox serve
    the photo broken (:data:`ImageFault`).
    """

    offer_id: int
    image: str
    title: str
    title_en: str
    price: str
    price_tiers: tuple[PriceTier, ...]
    min_order: int
    unit: str
    month_sold: int
    company: str
    province: str
    city: str
    freight: str
    category_id: int
    repurchase_rate: str | None = None
    seller_identities: tuple[str, ...] | None = None
    one_piece_sale: bool | None = None
    ship_in: str | None = None
    image_fault: ImageFault | None = None

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Product:
        """Build a product from one ``catalogue.json`` object, validating its shape.

        Raises:
            ValueError: a required key is missing or a value has the wrong type; the message
                names the entry (and the optional key at fault).
        """
        try:
            tiers = tuple(
                PriceTier(min_quantity=int(t["min_quantity"]), price=str(t["price"]))
                for t in raw["price_tiers"]
            )
            product = cls(
                offer_id=int(raw["offer_id"]),
                image=str(raw["image"]),
                title=str(raw["title"]),
                title_en=str(raw["title_en"]),
                price=str(raw["price"]),
                price_tiers=tiers,
                min_order=int(raw["min_order"]),
                unit=str(raw["unit"]),
                month_sold=int(raw["month_sold"]),
                company=str(raw["company"]),
                province=str(raw["province"]),
                city=str(raw["city"]),
                freight=str(raw["freight"]),
                category_id=int(raw["category_id"]),
                **_optional_fields(raw),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed catalogue entry {raw!r}: {exc}") from exc
        if product.freight not in ("free", "paid"):
            raise ValueError(f"offer {product.offer_id}: freight must be free or paid")
        return product

    def to_json(self) -> dict[str, Any]:
        """The ``catalogue.json`` form of this product; optional fields only when set."""
        raw: dict[str, Any] = {
            "offer_id": self.offer_id,
            "image": self.image,
            "title": self.title,
            "title_en": self.title_en,
            "price": self.price,
            "price_tiers": [
                {"min_quantity": t.min_quantity, "price": t.price} for t in self.price_tiers
            ],
            "min_order": self.min_order,
            "unit": self.unit,
            "month_sold": self.month_sold,
            "company": self.company,
            "province": self.province,
            "city": self.city,
            "freight": self.freight,
            "category_id": self.category_id,
        }
        optional = {
            "repurchase_rate": self.repurchase_rate,
            "seller_identities": (
                None if self.seller_identities is None else list(self.seller_identities)
            ),
            "one_piece_sale": self.one_piece_sale,
            "ship_in": self.ship_in,
            "image_fault": self.image_fault,
        }
        return raw | {key: value for key, value in optional.items() if value is not None}


def _optional_fields(raw: dict[str, Any]) -> dict[str, Any]:
    """The optional keys of a ``catalogue.json`` entry, type-checked (``ValueError`` names the
    key); absent or ``null`` keys are left out."""
    fields: dict[str, Any] = {}
    for key in _OPTIONAL_TEXT:
        if raw.get(key) is not None:
            if not isinstance(raw[key], str):
                raise ValueError(f"{key} must be a string")
            fields[key] = raw[key]
    identities = raw.get("seller_identities")
    if identities is not None:
        if not isinstance(identities, list) or not all(isinstance(i, str) for i in identities):
            raise ValueError("seller_identities must be a list of strings")
        fields["seller_identities"] = tuple(identities)
    if raw.get("one_piece_sale") is not None:
        if not isinstance(raw["one_piece_sale"], bool):
            raise ValueError("one_piece_sale must be true or false")
        fields["one_piece_sale"] = raw["one_piece_sale"]
    if raw.get("image_fault") is not None:
        if raw["image_fault"] not in get_args(ImageFault):
            raise ValueError(f"image_fault must be one of {', '.join(get_args(ImageFault))}")
        fields["image_fault"] = raw["image_fault"]
    return fields


Stamp = tuple[int, int]
"""What tells one version of ``catalogue.json`` from another: its mtime (ns) and size."""


def stamp_of(directory: Path) -> Stamp | None:
    """The stamp of ``directory/catalogue.json`` now, or ``None`` if it cannot be read."""
    try:
        stat = (directory / "catalogue.json").stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


@dataclass(frozen=True)
class CatalogueSource:
    """Where a loaded catalogue came from: its folder, and the stamp of its ``catalogue.json``
    taken before it was read (so a write during the load shows as a change)."""

    directory: Path
    stamp: Stamp | None


@dataclass(frozen=True)
class Match:
    """A product ranked for a query; ``similarity`` is in [0, 1], 1 meaning identical."""

    product: Product
    similarity: float


class Catalogue:
    """Products with precomputed image descriptors, searchable by image content.

    Use :meth:`load`; :meth:`search` ranks every product against a query image.
    """

    products: tuple[Product, ...]
    source: CatalogueSource | None = None
    """Set by :meth:`load`; ``None`` for a catalogue built in memory (no photos to serve)."""

    def __init__(
        self,
        products: tuple[Product, ...],
        descriptors: list[_Descriptor],
        source: CatalogueSource | None = None,
    ) -> None:
        if len(products) != len(descriptors) or not products:
            raise ValueError("one descriptor per product is required")
        self.products = products
        self.source = source
        self._colour = np.stack([d.colour for d in descriptors])
        self._layout = np.concatenate([d.layout for d in descriptors])
        self._tint = np.concatenate([d.tint for d in descriptors])
        self._offer_ids = np.array([p.offer_id for p in products], dtype=np.int64)

    @classmethod
    def load(cls, directory: Path) -> Catalogue:
        """Read ``directory/catalogue.json`` and describe every product image once (an image
        file several products name is described once).

        Raises :class:`ValueError` when the JSON or an image is malformed.
        """
        directory = Path(directory)
        stamp = stamp_of(directory)
        try:
            raw = json.loads((directory / "catalogue.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot read {directory / 'catalogue.json'}: {exc}") from exc
        if not isinstance(raw, list) or not raw:
            raise ValueError("catalogue.json must be a non-empty JSON list")
        products = tuple(Product.from_json(item) for item in raw)
        if len({p.offer_id for p in products}) != len(products):
            raise ValueError("catalogue.json repeats an offer_id")
        described: dict[str, _Descriptor] = {}
        for product in products:
            if product.image in described:
                continue
            try:
                data = (directory / product.image).read_bytes()
                described[product.image] = _describe(data, (0.0,))
            except (OSError, ValueError) as exc:
                raise ValueError(
                    f"offer {product.offer_id}: bad image {product.image}: {exc}"
                ) from exc
        descriptors = [described[p.image] for p in products]
        return cls(products, descriptors, CatalogueSource(directory, stamp))

    def __len__(self) -> int:
        return len(self.products)

    def product(self, offer_id: int) -> Product | None:
        """The product with ``offer_id``, or ``None``."""
        return next((p for p in self.products if p.offer_id == offer_id), None)

    def photo_path(self, product: Product) -> Path | None:
        """Where ``product``'s photo is on disk; ``None`` for a catalogue built in memory."""
        return None if self.source is None else self.source.directory / product.image

    def search(self, image: bytes) -> list[Match]:
        """Rank all products by similarity to ``image`` (encoded bytes), best first.

        Equal scores (products sharing one photo) rank by offer id, lowest first, whatever
        the catalogue's order. Raises :class:`ValueError` if the bytes are not a decodable
        image.
        """
        query = _describe(image, tilts=_QUERY_TILTS)
        colour = self._colour @ query.colour
        # Zero-mean grids give cosines in [-1, 1]; the best-fitting tilt of the query counts.
        geometry = (
            _WEIGHTS[1] * (self._layout @ query.layout.T + 1.0) / 2.0
            + _WEIGHTS[2] * (self._tint @ query.tint.T + 1.0) / 2.0
        ).max(axis=1)
        scores = np.clip(_WEIGHTS[0] * colour + geometry, 0.0, 1.0)
        order = np.lexsort((self._offer_ids, -scores))  # the last key sorts first
        return [Match(self.products[i], float(scores[i])) for i in order]


@dataclass(frozen=True)
class _Descriptor:
    """Colour histogram, plus geometry grids with one row per tried tilt."""

    colour: np.ndarray
    layout: np.ndarray  # grayscale layout of the object
    tint: np.ndarray  # where the colours are: two chromaticity planes, cast removed


def _describe(data: bytes, tilts: tuple[float, ...]) -> _Descriptor:
    """Describe encoded image bytes; raises :class:`ValueError` if they do not decode."""
    image = _decode(data)
    small = image.copy()  # thumbnail() works in place
    small.thumbnail((_MASK_SIDE, _MASK_SIDE), Image.Resampling.BILINEAR, reducing_gap=2.0)
    mask = _foreground(np.asarray(small, dtype=np.float32))
    # The object is found at low resolution, then described from a sharper crop.
    ys, xs = np.nonzero(mask)
    scale_y, scale_x = image.height / small.height, image.width / small.width
    top, bottom = np.percentile(ys, [1, 99]) * scale_y
    left, right = np.percentile(xs, [1, 99]) * scale_x
    box = (
        int(left),
        int(top),
        min(image.width, int(right + scale_x) + 1),
        min(image.height, int(bottom + scale_y) + 1),
    )
    fit = _OBJECT_SIDE / max(box[2] - box[0], box[3] - box[1])
    size = (max(1, round((box[2] - box[0]) * fit)), max(1, round((box[3] - box[1]) * fit)))
    crop = np.asarray(image.resize(size, Image.Resampling.BILINEAR, box=box), dtype=np.float32)
    small_box = (box[0] / scale_x, box[1] / scale_y, box[2] / scale_x, box[3] / scale_y)
    mask_img = Image.fromarray(mask.astype(np.float32))
    crop_mask = np.asarray(mask_img.resize(size, Image.Resampling.BILINEAR, box=small_box)) > 0.5
    if not crop_mask.any():
        crop_mask[:] = True
    colour = _colour_histogram(crop[crop_mask])
    gray = crop @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    total = crop.sum(axis=2) + 1.0
    planes = {
        "gray": gray,
        "o1": (crop[:, :, 0] - crop[:, :, 1]) / total,
        "o2": (crop[:, :, 0] + crop[:, :, 1] - 2 * crop[:, :, 2]) / (2 * total),
    }
    # Background pixels take the object's mean so only the object's own layout counts.
    fills = {name: float(plane[crop_mask].mean()) for name, plane in planes.items()}
    images = {
        name: Image.fromarray(np.where(crop_mask, plane, fills[name]).astype(np.float32))
        for name, plane in planes.items()
    }
    silhouette = Image.fromarray(crop_mask.astype(np.float32))
    layouts, tints = [], []
    for tilt in tilts:
        turned = np.asarray(
            silhouette.rotate(tilt, Image.Resampling.BILINEAR, expand=True, fillcolor=0.0)
        )
        inside = turned > 0.5
        rows = np.flatnonzero(inside.any(axis=1)) if inside.any() else [0, turned.shape[0] - 1]
        cols = np.flatnonzero(inside.any(axis=0)) if inside.any() else [0, turned.shape[1] - 1]
        window = np.s_[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        grids = {
            name: _grid(
                np.asarray(
                    img.rotate(tilt, Image.Resampling.BILINEAR, expand=True, fillcolor=fills[name])
                )[window],
                fills[name],
            )
            for name, img in images.items()
        }
        layouts.append(grids["gray"])
        tint = np.concatenate([grids["o1"], grids["o2"]])
        tints.append(tint / max(float(np.linalg.norm(tint)), 1e-9))
    return _Descriptor(colour, np.stack(layouts), np.stack(tints))


def _decode(data: bytes) -> Image.Image:
    """Decode to an upright RGB image, at least ``_DETAIL_SIDE`` on its long side if it can be."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > _MAX_PIXELS:
                raise ValueError(f"image too large: {img.width}x{img.height}")
            # Shrink via DCT scaling before load(); exif_transpose would load at full size.
            img.draft("RGB", (_DETAIL_SIDE, _DETAIL_SIDE))
            img.load()
            upright = ImageOps.exif_transpose(img)
            rgb = _to_rgb(upright)
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ValueError(f"undecodable image: {exc}") from exc
    # DCT scaling leaves JPEGs at most twice the detail size; cap other formats alike.
    rgb.thumbnail((2 * _DETAIL_SIDE, 2 * _DETAIL_SIDE), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return rgb


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB the way a person would see it."""
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # convert("RGB") clips 16-bit data to white; scale the real range to 8 bits instead.
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr * (255.0 / peak), 0, 255).astype(np.uint8))
    if img.mode == "CMYK":
        return _cmyk_to_rgb(img)
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        # Transparent pixels would turn black: lay the object on white, like a studio shot,
        # with a margin so an object cropped to its edges does not touch the border.
        margin = max(rgba.size) // 16
        white = Image.new("RGB", (rgba.width + 2 * margin, rgba.height + 2 * margin), "white")
        white.paste(rgba, (margin, margin), rgba)
        return white
    return img.convert("RGB")


def _cmyk_to_rgb(img: Image.Image) -> Image.Image:
    profile = img.info.get("icc_profile")
    if profile:
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
            rgb = ImageCms.profileToProfile(
                img, source, ImageCms.createProfile("sRGB"), outputMode="RGB"
            )
            assert rgb is not None  # profileToProfile returns None only with inPlace=True
            return rgb
        except (ImageCms.PyCMSError, OSError):
            pass  # a broken profile still leaves naive conversion, better than failing
    return img.convert("RGB")


def _foreground(rgb: np.ndarray) -> np.ndarray:
    """Estimate the object mask: pixels unlike the colours found along the image border.

    Border colours are clustered; clusters present on at least two sides are the surface. A
    neutral (grey or white) cluster claims pixels near it in
    RGB; a coloured one claims pixels of its chromaticity at any brightness from shadow to
    highlight, so vignettes, gradients and cast shadows on a coloured surface stay background.
    Pockets of background colour inside the object (a handle's opening, between a stool's legs)
    stay background, so their colour does not count as the object's.
    """
    h, w, _ = rgb.shape
    band = max(2, round(min(h, w) * 0.04))
    sides = [
        rgb[:band].reshape(-1, 3),
        rgb[-band:].reshape(-1, 3),
        rgb[:, :band].reshape(-1, 3),
        rgb[:, -band:].reshape(-1, 3),
    ]
    border = np.concatenate(sides)
    centres = _kmeans(border[::3], k=4)  # a subsample is plenty to place the centres
    # A surface surrounds the object; a colour filling only one side is the object touching
    # the frame (a product cropped to its edges), so it must not count as background.
    side_share = np.stack(
        [
            np.bincount(
                np.linalg.norm(side[:, None] - centres[None], axis=2).argmin(axis=1),
                minlength=len(centres),
            )
            / len(side)
            for side in sides
        ]
    )
    centres = centres[(side_share >= 0.05).sum(axis=0) >= 2]
    bright = rgb.sum(axis=2) + 1.0
    chroma = rgb / bright[:, :, None]
    background = np.zeros((h, w), dtype=bool)
    border_bright = border.sum(axis=1) + 1.0
    border_chroma = border / border_bright[:, None]
    nearest = np.linalg.norm(border[:, None] - centres[None], axis=2).argmin(axis=1)
    for i, centre in enumerate(centres):
        members = nearest == i
        if not members.any():
            continue
        saturation = (centre.max() - centre.min()) / max(float(centre.max()), 1.0)
        if saturation > 0.15:
            centre_chroma = centre / (centre.sum() + 1.0)
            spread = np.linalg.norm(border_chroma[members] - centre_chroma, axis=1)
            radius = max(0.025, 2.0 * float(np.percentile(spread, 90)))
            ratio = bright / float(centre.sum() + 1.0)
            near = np.linalg.norm(chroma - centre_chroma, axis=2) < radius
            background |= near & (ratio > 0.35) & (ratio < 1.6)
        else:
            spread = np.linalg.norm(border[members] - centre, axis=1)
            radius = max(22.0, 2.5 * float(np.percentile(spread, 90)))
            background |= np.linalg.norm(rgb - centre, axis=2) < radius
    mask = ~_majority(background, 2)
    fraction = mask.mean()
    if fraction < 0.02 or fraction > 0.97:
        return np.ones((h, w), dtype=bool)
    return mask


def _kmeans(points: np.ndarray, k: int, rounds: int = 8) -> np.ndarray:
    """Deterministic k-means (initialised at luminance quantiles); duplicates collapse."""
    luma = points @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    order = np.argsort(luma, kind="stable")
    seeds = order[((np.arange(k) + 0.5) * len(points) / k).astype(int)]
    centres = points[seeds].astype(np.float64)
    for _ in range(rounds):
        labels = np.linalg.norm(points[:, None] - centres[None], axis=2).argmin(axis=1)
        for i in range(k):
            members = points[labels == i]
            if len(members):
                centres[i] = members.mean(axis=0)
    return np.unique(np.round(centres, 1), axis=0).astype(np.float32)


def _majority(mask: np.ndarray, radius: int) -> np.ndarray:
    """Majority filter over a (2r+1)^2 box, to drop speckle and fill pinholes."""
    padded = np.pad(mask.astype(np.int32), radius + 1, mode="edge")
    # numpy's stubs drop cumsum's dtype (int32 sums accumulate in int64).
    integral: np.typing.NDArray[np.int64] = padded.cumsum(0).cumsum(1)
    size = 2 * radius + 1
    h, w = mask.shape
    total = (
        integral[size : size + h, size : size + w]
        - integral[:h, size : size + w]
        - integral[size : size + h, :w]
        + integral[:h, :w]
    )
    return total * 2 > size * size


def _colour_histogram(pixels: np.ndarray) -> np.ndarray:
    """Soft hue x saturation x value histogram of chromatic pixels, plus soft grey levels.

    Every vote is split linearly between neighbouring bins (hue wraps round), so lighting and
    colour casts move mass gradually instead of across hard bin edges. Hellinger-normalised.
    """
    rgb = pixels.astype(np.float64) / 255.0
    value = rgb.max(axis=1)
    chroma = value - rgb.min(axis=1)
    sat = chroma / np.maximum(value, 1e-6)
    r, g, b = rgb.T
    safe = np.maximum(chroma, 1e-6)
    hue = (
        np.where(
            value == r,
            ((g - b) / safe) % 6.0,
            np.where(value == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0),
        )
        / 6.0
    )
    chromatic = (sat > _MIN_SATURATION) & (value > 0.15)
    hue_lo, hue_hi, hue_w = _soft(hue[chromatic], _HUE_BINS, wrap=True)
    sat_lo, sat_hi, sat_w = _soft(
        (sat[chromatic] - _MIN_SATURATION) / (1 - _MIN_SATURATION), _SAT_BINS, wrap=False
    )
    val_lo, val_hi, val_w = _soft(value[chromatic], _VAL_BINS, wrap=False)
    n_colour = _HUE_BINS * _SAT_BINS * _VAL_BINS
    hist = np.zeros(n_colour)
    for h_bin, h_w in ((hue_lo, 1 - hue_w), (hue_hi, hue_w)):
        for s_bin, s_w in ((sat_lo, 1 - sat_w), (sat_hi, sat_w)):
            for v_bin, v_w in ((val_lo, 1 - val_w), (val_hi, val_w)):
                index = (h_bin * _SAT_BINS + s_bin) * _VAL_BINS + v_bin
                hist += np.bincount(index, weights=h_w * s_w * v_w, minlength=n_colour)
    grey_lo, grey_hi, grey_w = _soft(value[~chromatic], _GRAY_BINS, wrap=False)
    grey = np.bincount(grey_lo, 1 - grey_w, _GRAY_BINS) + np.bincount(grey_hi, grey_w, _GRAY_BINS)
    full = np.sqrt(np.concatenate([hist, grey]) / max(len(pixels), 1))
    return full / max(float(np.linalg.norm(full)), 1e-9)


def _soft(x: np.ndarray, bins: int, *, wrap: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Linear soft binning of ``x`` in [0, 1]: lower bin, upper bin, weight of the upper."""
    pos = x * bins - 0.5
    lo = np.floor(pos).astype(np.int64)
    weight = pos - lo
    hi = lo + 1
    if wrap:
        return lo % bins, hi % bins, weight
    return np.clip(lo, 0, bins - 1), np.clip(hi, 0, bins - 1), weight


def _grid(plane: np.ndarray, fill: float) -> np.ndarray:
    """Pad with ``fill`` to a centred square, shrink to ``_GRID``², zero-mean, unit-norm."""
    h, w = plane.shape
    side = max(h, w)
    square = np.full((side, side), fill, dtype=np.float32)
    top, left = (side - h) // 2, (side - w) // 2
    square[top : top + h, left : left + w] = plane
    small = np.asarray(
        Image.fromarray(square).resize((_GRID, _GRID), Image.Resampling.BOX),
        dtype=np.float64,
    ).ravel()
    small -= small.mean()
    norm = float(np.linalg.norm(small))
    return small / norm if norm > 1e-9 else small
