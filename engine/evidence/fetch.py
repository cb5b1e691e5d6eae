"""The offer images an answer's evidence needs, fetched into the image cache before export.

After a search (or a reused answer) and before its photo is exported, the runner hands the
stored answer here: the offers the feed will keep (cleaned with the job's filters) are read
from it and the main image of each is downloaded, at most once ever (the cache is content-
addressed and shared across runs and jobs; an offer image URL on the CDN never changes what it
serves, so a cached URL is not asked again). Downloads go through their own polite limiter
(``[evidence] rate``), never the gateway's quota.

The CDN serves small renditions of an image when ``_{W}x{H}.jpg`` is appended to its URL
(alicdn's ``/img/ibank/`` scheme, which the sandbox serves too): evidence works on 300 px
pictures, so asking for one saves the CDN, the network and the decoder most of the bytes.

A failed download never fails the photo: it is remembered here for this invocation, and the
offer's evidence is null with a note saying why (:mod:`engine.evidence.judge`).
"""

from __future__ import annotations

import asyncio
import re
from urllib.parse import urlsplit

from engine.clean import WholesaleFilters, parse_response
from engine.download import Downloaded, Downloader
from engine.state import StoredResponse

_RENDITION_PATH = re.compile(r"/img/ibank/.+\.(?:jpe?g|png|webp)$", re.IGNORECASE)
_HAS_RENDITION = re.compile(r"_\d+x\d+\.jpg$", re.IGNORECASE)


def rendition_url(url: str, side: int) -> str:
    """The URL of a ``side`` x ``side`` rendition of an offer image where the CDN's URL scheme
    offers one (alicdn ``/img/ibank/...jpg`` -> ``..jpg_300x300.jpg``), else ``url`` itself;
    ``side`` 0 asks for the original."""
    path = urlsplit(url).path
    if side <= 0 or not _RENDITION_PATH.search(path) or _HAS_RENDITION.search(path):
        return url
    return f"{url}_{side}x{side}.jpg"


class OfferImages:
    """Fetches the kept offers' main images of stored answers into the downloader's cache.

    Args:
        downloader: the evidence downloader (its own limiter, concurrency cap and cache).
        filters: the job's wholesale filters: only offers the feed keeps need evidence.
        rendition: pixels asked of the CDN (0: the original image).
    """

    def __init__(self, downloader: Downloader, filters: WholesaleFilters, rendition: int) -> None:
        self.downloader = downloader
        self.filters = filters
        self.rendition = rendition
        self.failures: dict[str, str] = {}
        """Image URL -> why it could not be had, for this invocation's notes."""

    def urls(self, answer: StoredResponse) -> list[str]:
        """The image URLs (renditions) of the offers ``answer`` keeps, in rank order, once."""
        offers = parse_response(answer.protocol, answer.raw_body, self.filters).offers
        wanted = (rendition_url(o.image_url, self.rendition) for o in offers if o.image_url)
        return list(dict.fromkeys(wanted))

    async def fetch(self, answer: StoredResponse) -> None:
        """Download the images ``answer``'s kept offers need (those not cached yet)."""
        urls = self.urls(answer)
        results = await asyncio.gather(
            *(self.downloader.fetch(url, revalidate=False) for url in urls)
        )
        for url, result in zip(urls, results, strict=True):
            if isinstance(result, Downloaded):
                self.failures.pop(url, None)
            else:
                self.failures[url] = f"{result.reason}: {result.message}"
