"""The sandbox's image CDN: every catalogue photo at the ``image_url`` its answers give.

The gateway's answers point offers at the sandbox itself, in the URL scheme of 1688's CDN
(alicdn): ``{origin}/img/ibank/O1CN01{offer_id}.jpg``. A client asks for a small rendition by
appending ``_{W}x{H}.jpg``, as alicdn serves them; the rendition is the photo fitted inside
WxH (aspect kept, never enlarged), as JPEG. A product's ``image_fault`` serves the photo broken,
for tests of a client's checks. Nothing here is gated, signed or rate limited: it is a CDN.

Everything here is blocking file and Pillow work; the server runs :func:`serve` in a thread.
"""

from __future__ import annotations

import hashlib
import io
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps, UnidentifiedImageError

from engine.sandbox.catalogue import Product

IMAGE_ROUTE = "/img/ibank/{name}"
"""The aiohttp route of every image; ``name`` is parsed by :func:`parse_name`."""
MAX_SIDE = 4096
"""Largest rendition side served; a larger one is not found, as on a CDN with fixed sizes."""
CACHE_CONTROL = "public, max-age=86400"
DEFAULT_ORIGIN = "http://127.0.0.1:8688"
"""Where ``img1688 sandbox`` listens by default: the origin of answers formatted without a
request (benchmarks and tests that store answers directly)."""

_NAME = re.compile(
    r"O1CN01(?P<offer>[0-9]{1,19})\.jpg(?:_(?P<w>[0-9]{1,5})x(?P<h>[0-9]{1,5})\.jpg)?"
)
_HTML_PAGE = (  # ASCII: served without a charset
    "<!DOCTYPE html><html><head><title>Image not available</title></head>"
    "<body><h1>Image not available</h1></body></html>"
)
_JPEG_START = b"\xff\xd8\xff\xe0"


def image_url(origin: str, offer_id: int) -> str:
    """The URL of an offer's photo on the sandbox at ``origin`` (``scheme://host:port``)."""
    return f"{origin}/img/ibank/O1CN01{offer_id}.jpg"


@dataclass(frozen=True)
class ImageRequest:
    """What an image URL asks for: an offer's photo, whole or fitted inside ``size``."""

    offer_id: int
    size: tuple[int, int] | None = None


def parse_name(name: str) -> ImageRequest | None:
    """The request a file name under ``/img/ibank/`` makes, or ``None`` if it is none the
    sandbox serves (another scheme, or a rendition side outside 1..:data:`MAX_SIDE`)."""
    match = _NAME.fullmatch(name)
    if match is None:
        return None
    offer_id = int(match["offer"])
    if match["w"] is None:
        return ImageRequest(offer_id)
    size = (int(match["w"]), int(match["h"]))
    if not all(1 <= side <= MAX_SIDE for side in size):
        return None
    return ImageRequest(offer_id, size)


@dataclass(frozen=True)
class ImageReply:
    """One image answer: status, body, its media type and extra headers."""

    status: int
    body: bytes = b""
    content_type: str = "text/plain"
    headers: dict[str, str] = field(default_factory=dict)


NOT_FOUND = ImageReply(404, b"not found")


def serve(
    product: Product | None,
    photo: Path | None,
    request: ImageRequest,
    if_none_match: str | None = None,
) -> ImageReply:
    """The answer to ``request`` for ``product`` (``None``: no such offer) whose photo is the
    file ``photo``; never raises.

    The original is the file's bytes with its own media type; a rendition is a JPEG. Both carry
    a strong ``ETag`` (the photo's SHA-256, plus the size for a rendition) and
    ``Cache-Control``; an ``If-None-Match`` naming that ETag gets 304 without a body. An unknown
    offer, a photo gone from disk, or ``image_fault = "missing"`` get 404.
    """
    if product is None or photo is None or product.image_fault == "missing":
        return NOT_FOUND
    if product.image_fault == "corrupt":
        junk = hashlib.sha256(str(product.offer_id).encode()).digest() * 8
        return ImageReply(200, _JPEG_START + junk, "image/jpeg")
    if product.image_fault == "html":
        return ImageReply(200, _HTML_PAGE.encode(), "text/html")
    try:
        data = photo.read_bytes()
    except OSError:
        return NOT_FOUND
    etag = f'"{hashlib.sha256(data).hexdigest()[:32]}'
    etag += f'-{request.size[0]}x{request.size[1]}"' if request.size else '"'
    headers = {"ETag": etag, "Cache-Control": CACHE_CONTROL}
    if if_none_match is not None and etag in _etags(if_none_match):
        return ImageReply(304, headers=headers)
    try:
        if request.size is None:
            return ImageReply(200, data, _media_type(data), headers)
        return ImageReply(200, rendition(data, request.size), "image/jpeg", headers)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return NOT_FOUND  # the file changed into something no decoder reads since the load


def rendition(data: bytes, size: tuple[int, int]) -> bytes:
    """``data`` (an encoded image) upright, on white if it has alpha, fitted inside ``size``
    (aspect kept, never enlarged), as JPEG quality 90."""
    with Image.open(io.BytesIO(data)) as img:
        upright = ImageOps.exif_transpose(img)
        if upright.mode in ("RGBA", "LA", "PA", "P"):
            rgba = upright.convert("RGBA")
            flat = Image.new("RGB", rgba.size, "white")
            flat.paste(rgba, (0, 0), rgba)
        else:
            flat = upright.convert("RGB")
    flat.thumbnail(size, Image.Resampling.LANCZOS)
    out = io.BytesIO()
    flat.save(out, "JPEG", quality=90)
    return out.getvalue()


def _media_type(data: bytes) -> str:
    with Image.open(io.BytesIO(data)) as img:
        return Image.MIME.get(img.format or "", "application/octet-stream")


def _etags(header: str) -> set[str]:
    """The entity tags an ``If-None-Match`` lists (weak ones compare as strong: RFC 9110)."""
    return {tag.strip().removeprefix("W/") for tag in header.split(",")}


class ImageStats:
    """What the CDN served, in ``GET /__sandbox__/stats`` under ``images``."""

    def __init__(self) -> None:
        self.requests = 0
        self.by_offer: Counter[str] = Counter()
        self.renditions = 0
        self.not_modified = 0
        self.not_found = 0

    def record(self, request: ImageRequest | None, status: int) -> None:
        """Count one answered image request (``request`` ``None``: a name not served)."""
        self.requests += 1
        if request is not None:
            self.by_offer[str(request.offer_id)] += 1
            self.renditions += request.size is not None
        self.not_modified += status == 304
        self.not_found += status == 404

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "by_offer": dict(self.by_offer),
            "renditions": self.renditions,
            "not_modified": self.not_modified,
            "not_found": self.not_found,
        }
