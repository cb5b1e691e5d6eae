"""The evidence stage of a run: what the runner holds to fetch and judge offer images.

:func:`open_images` opens the image cache and the downloaders a job needs (offer images for
evidence, the catalogue's web photos), each with its own limiter; :class:`EvidenceStage` is
what the runner calls between the search and the export.
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from dataclasses import dataclass

from engine.download import Downloader, DownloadSettings
from engine.evidence.fetch import OfferImages
from engine.evidence.judge import EvidenceJudge
from engine.imagecache import ImageCache
from engine.jobfile import Job
from engine.preprocess import PreparedImage

EVIDENCE_ATTEMPTS = 3
"""Attempts per offer image: a CDN hiccup is retried, a lasting failure only costs a note."""


@dataclass(frozen=True)
class EvidenceStage:
    """Fetches the offer images of answered photos (:attr:`images`) and judges the offers at
    export (:attr:`judge`), from the cache both share."""

    cache: ImageCache
    images: OfferImages
    judge: EvidenceJudge

    async def keep_query(self, prepared: PreparedImage) -> None:
        """Keep the JPEG sent for a photo, the query side of its evidence (and of a re-clean's
        and the report's), with :meth:`~engine.imagecache.ImageCache.keep_sent`."""
        await asyncio.to_thread(self.cache.keep_sent, prepared.sha256, prepared.jpeg)


@dataclass(frozen=True)
class JobImages:
    """The image work of one invocation: ``evidence`` unless ``[evidence] enabled = false``,
    ``photos`` when the catalogue names web photos."""

    evidence: EvidenceStage | None
    photos: Downloader | None


async def open_images(stack: AsyncExitStack, job: Job) -> JobImages:
    """Open what ``job`` needs on ``stack`` (closed with it)."""
    settings = job.evidence
    needs_photos = any(entry.is_url for entry in job.catalogue)
    if not settings.enabled and not needs_photos:
        return JobImages(None, None)
    cache = stack.enter_context(ImageCache(settings.cache_dir))
    photos = None
    if needs_photos:
        d = job.downloads
        photos = await stack.enter_async_context(
            Downloader(
                DownloadSettings(d.rate, d.concurrency, d.timeout, d.max_bytes, d.attempts), cache
            )
        )
    if not settings.enabled:
        return JobImages(None, photos)
    downloader = await stack.enter_async_context(
        Downloader(
            DownloadSettings(
                settings.rate,
                settings.concurrency,
                settings.timeout,
                settings.max_bytes,
                EVIDENCE_ATTEMPTS,
                remember_failures=settings.failure_ttl_hours * 3600,
            ),
            cache,
        )
    )
    images = OfferImages(downloader, job.filters, settings.rendition)
    judge = EvidenceJudge(cache, settings.rendition, images.failures)
    return JobImages(EvidenceStage(cache, images, judge), photos)
