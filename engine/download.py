"""Image downloads over HTTP(S) into the image cache: catalogue photos and offer images.

Two kinds of image come by URL, both outside the gateway's quota: catalogue photos named by
``http(s)://`` URLs in the user's catalogue table, and each offer's main image (the evidence).
One :class:`Downloader` serves either (a job makes one of each, with its own
:class:`DownloadSettings`); every image lands in the :class:`~engine.imagecache.ImageCache`,
named by its SHA-256, and the URL is remembered with its validators (ETag, Last-Modified).

Politeness and bounds: every HTTP attempt, retries included, takes a slot of an aiolimiter
bucket configured to space attempts evenly (``AsyncLimiter(1, period / calls)``: no burst) and
one of ``concurrency`` places; each attempt has ``timeout`` seconds in all; a body is refused
before it is read when its ``Content-Length`` exceeds ``max_bytes``, and cut off while streaming
past ``max_bytes`` otherwise. Redirects are followed (at most 10); the final answer counts.

Retries (tenacity, ``attempts`` in all, exponential back-off with jitter): 5xx, 408, 429 (its
``Retry-After`` is the floor of the wait; one longer than ``max_delay`` ends the retries, as the
server asked not to be called before then), timeouts and dropped connections. Never other 4xx,
a refused connection or a host that does not resolve: those do not pass in seconds.

What :meth:`Downloader.fetch` returns is a :class:`Downloaded` or a :class:`DownloadFailed`,
never an exception for a bad URL or a bad answer. Its ``reason`` is one of :data:`REASONS`:

* ``bad_url``: not ``http``/``https``, no host, or not a URL at all; no request is made.
* ``download_failed``: no usable answer: network error, timeout, a refused connection, too
  many or invalid redirects, or 5xx/408/429 still after the retries.
* ``http_status``: any other answer but 200 (404, 403, 410 ...); the message has the status.
* ``too_large``: the body is over ``max_bytes`` (by its ``Content-Length``, or as it streams).
* ``not_an_image``: the content type is neither ``image/*`` nor ``application/octet-stream``
  (checked before the body is read), or the bytes are of no image format we know
  (:func:`image_format`).
* ``empty``: a 200 answer with no body.

A URL fetched without revalidation (an offer image: CDN URLs are immutable) whose answer said
for good that there is no image there (404 or 410, not an image, empty) is remembered in the
cache for ``remember_failures`` seconds: until then it is answered with the same failure and no
request, by any run sharing the cache. Nothing else is remembered: network failures and 5xx may
pass by the next run, a 403 may be a CDN's passing refusal, and ``too_large`` depends on a
setting that may change.

Concurrent fetches of one URL (offers of several resellers showing one factory photo, answered
to photos searched at once) share one fetch: one request, one result for all of them.

Messages never quote the URL (a signed URL's query is a credential); the caller has it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args
from urllib.parse import urlsplit

import aiohttp
from aiolimiter import AsyncLimiter
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)
from yarl import URL

from engine import __version__
from engine.client.classify import parse_retry_after
from engine.imagecache import ImageCache, UrlEntry, UrlFailure
from engine.magic import image_format
from engine.ratelimit import Rate

log = logging.getLogger(__name__)

Reason = Literal["bad_url", "download_failed", "http_status", "too_large", "not_an_image", "empty"]
REASONS: frozenset[str] = frozenset(get_args(Reason))
"""Every :attr:`DownloadFailed.reason`; stable, stored and grouped by."""
LASTING: frozenset[Reason] = frozenset({"http_status", "not_an_image", "empty"})
"""Reasons a remembered failure may have (see the module doc)."""
_GONE = frozenset({404, 410})

USER_AGENT = f"img1688/{__version__}"
# The original formats first: a CDN that negotiates would otherwise send its own re-encoding
# (AVIF, WebP), whose bytes, and so cache entry, change whenever its preferences do.
_ACCEPT = "image/jpeg,image/png,image/*;q=0.8,application/octet-stream;q=0.5"
_RETRY_STATUSES = frozenset({408, 429})
_CHUNK = 64 * 1024


@dataclass(frozen=True)
class DownloadSettings:
    """How one :class:`Downloader` downloads."""

    rate: Rate
    """At most ``rate.calls`` HTTP attempts in any ``rate.period`` seconds, evenly spaced."""
    concurrency: int = 4
    """HTTP attempts (and connections) at once."""
    timeout: float = 20.0
    """Seconds per attempt, from sending the request to the body's last byte."""
    max_bytes: int = 20_000_000
    """The largest body accepted (after any content decoding)."""
    attempts: int = 3
    """HTTP attempts per URL, the first one included."""
    base_delay: float = 0.5
    """First back-off between attempts, in seconds; doubles per retry, with jitter."""
    max_delay: float = 30.0
    """Longest back-off; a ``Retry-After`` longer than this ends the retries."""
    remember_failures: float = 0.0
    """Seconds a lasting failure (404 or 410, not an image, empty) of a fetch without
    revalidation is answered from the cache, with no request; 0 asks again every time."""

    def __post_init__(self) -> None:
        if self.concurrency < 1 or self.attempts < 1 or self.max_bytes < 1:
            raise ValueError("concurrency, attempts and max_bytes must be at least 1")
        if self.remember_failures < 0:
            raise ValueError("remember_failures must be 0 or more")
        if self.timeout <= 0 or self.base_delay < 0 or self.max_delay < self.base_delay:
            raise ValueError("need a positive timeout and 0 <= base_delay <= max_delay")


@dataclass(frozen=True)
class Downloaded:
    """An image in the cache for ``url``."""

    url: str
    sha256: str
    path: Path
    """The cached blob."""
    fetched: bool
    """A body was transferred; ``False`` when the cache answered (no request, or a 304)."""
    revalidated: bool
    """A conditional request was made and answered 304 Not Modified."""


@dataclass(frozen=True)
class DownloadFailed:
    """Why ``url`` gave no image; ``reason`` is one of :data:`REASONS` (see the module doc)."""

    url: str
    reason: Reason
    message: str


@dataclass
class DownloadStats:
    """What a :class:`Downloader` has done so far."""

    requests: int = 0
    """HTTP attempts sent, retries included."""
    bytes_received: int = 0
    """Body bytes read (after content decoding), of every answer."""
    downloads: int = 0
    """Images stored from a 200 answer."""
    cache_hits: int = 0
    """Fetches answered from the cache with no request."""
    not_modified: int = 0
    """Conditional requests answered 304."""
    remembered_failures: int = 0
    """Fetches answered with a failure remembered in the cache, with no request."""
    shared: int = 0
    """Fetches that joined another one of the same URL already under way."""
    failures: dict[str, int] = field(default_factory=dict)
    """Failed fetches by reason."""


@dataclass(frozen=True)
class _Body:
    data: bytes
    etag: str | None
    last_modified: str | None


@dataclass(frozen=True)
class _NotModified:
    etag: str | None
    last_modified: str | None


class _Refused(Exception):
    """An attempt's final failure: retrying will not help."""

    def __init__(self, reason: Reason, message: str, *, lasting: bool = False) -> None:
        super().__init__(message)
        self.reason: Reason = reason
        self.message = message
        self.lasting = lasting
        """The answer says for good that there is no image at the URL: worth remembering."""


class _Retryable(_Refused):
    """A failed attempt that another may get past; ``retry_after`` is the server's wish."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__("download_failed", message)
        self.retry_after = retry_after


class Downloader:
    """Downloads images into an :class:`ImageCache`, politely and within bounds.

    Use as ``async with Downloader(settings, cache) as d: await d.fetch(url, revalidate=...)``;
    concurrent fetches share its session, limiter and places. The cache stays the caller's
    (not closed here). The limiter is made on entry, so one downloader serves one event loop.
    """

    def __init__(self, settings: DownloadSettings, cache: ImageCache) -> None:
        self.settings = settings
        self.stats = DownloadStats()
        self._cache = cache
        self._places = asyncio.Semaphore(settings.concurrency)
        self._under_way: dict[tuple[str, bool], asyncio.Task[Downloaded | DownloadFailed]] = {}
        self._limiter: AsyncLimiter | None = None
        self._session: aiohttp.ClientSession | None = None
        self._backoff = wait_exponential_jitter(
            multiplier=settings.base_delay, max=settings.max_delay, jitter=settings.base_delay
        )

    async def __aenter__(self) -> Downloader:
        rate = self.settings.rate
        self._limiter = AsyncLimiter(1, rate.period / rate.calls)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.settings.concurrency),
            headers={"User-Agent": USER_AGENT, "Accept": _ACCEPT},
            timeout=aiohttp.ClientTimeout(total=self.settings.timeout),
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        # A fetch whose callers were all cancelled may still be running: stop it before its
        # session goes.
        leftovers = list(self._under_way.values())
        for task in leftovers:
            task.cancel()
        await asyncio.gather(*leftovers, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def fetch(self, url: str, *, revalidate: bool) -> Downloaded | DownloadFailed:
        """The image at ``url``, from the cache or downloaded into it.

        ``revalidate=False`` (offer images: CDN URLs are immutable): a URL downloaded before,
        whose blob is still cached, is answered from the cache with no request at all.
        ``revalidate=True`` (catalogue photos: the user may replace the file behind a URL): a
        conditional GET (``If-None-Match`` / ``If-Modified-Since`` from the last download);
        304 gives the cached blob, 200 stores the body (the same bytes give the same SHA-256
        and no new blob). A URL never downloaded (or whose blob is gone) is fetched in full.

        Never raises for a bad URL or a bad answer: those are a :class:`DownloadFailed`. A
        fetch of the same ``url`` and ``revalidate`` already under way is joined, not repeated;
        cancelling one caller leaves the fetch to the others.

        Raises:
            StorageError: the cache cannot be written or read (disk full, ...).
            asyncio.CancelledError: on cancellation, as always.
        """
        key = (url, revalidate)
        task = self._under_way.get(key)
        if task is None:
            task = asyncio.create_task(self._fetch(url, revalidate=revalidate))
            self._under_way[key] = task
            task.add_done_callback(lambda done: self._settled(key, done))
        else:
            self.stats.shared += 1
        result = await asyncio.shield(task)
        if isinstance(result, DownloadFailed):
            failures = self.stats.failures
            failures[result.reason] = failures.get(result.reason, 0) + 1
            log.debug("%s from %s: %s", result.reason, _host(url), result.message)
        return result

    def _settled(
        self, key: tuple[str, bool], task: asyncio.Task[Downloaded | DownloadFailed]
    ) -> None:
        self._under_way.pop(key, None)
        if not task.cancelled():
            task.exception()  # its callers get it; with none left, asyncio would log it as lost

    async def _fetch(self, url: str, *, revalidate: bool) -> Downloaded | DownloadFailed:
        target = _parse_url(url)
        if isinstance(target, str):
            return DownloadFailed(url, "bad_url", target)
        # The index and the blobs are on disk, and another process may hold the index's write
        # lock: off the event loop, like every cache access here.
        entry, cached = await asyncio.to_thread(self._cached, url)
        if entry is not None and cached is not None:
            if not revalidate:
                self.stats.cache_hits += 1
                return Downloaded(url, entry.sha256, cached, fetched=False, revalidated=False)
            conditions = _conditions(entry)
        else:
            entry, conditions = None, {}
        remember = not revalidate and self.settings.remember_failures > 0
        if remember:
            known = await asyncio.to_thread(self._cache.url_failure, url)
            if (
                known is not None
                and known.reason in LASTING  # one this version knows
                and time.time() - known.failed_at < self.settings.remember_failures
            ):
                self.stats.remembered_failures += 1
                return DownloadFailed(url, known.reason, known.message)
        try:
            answer = await self._retrying(target, conditions)
        except _Refused as failure:
            if remember and failure.lasting:
                await asyncio.to_thread(
                    self._cache.remember_failure,
                    UrlFailure(url, failure.reason, failure.message, time.time()),
                )
            return DownloadFailed(url, failure.reason, failure.message)
        if isinstance(answer, _NotModified):
            if entry is None or cached is None:  # a 304 to an unconditional request
                return DownloadFailed(url, "http_status", "HTTP 304 to a request with no condition")
            self.stats.not_modified += 1
            await asyncio.to_thread(
                self._cache.remember_url,
                UrlEntry(
                    url,
                    entry.sha256,
                    answer.etag or entry.etag,
                    answer.last_modified or entry.last_modified,
                    time.time(),
                ),
            )
            return Downloaded(url, entry.sha256, cached, fetched=False, revalidated=True)
        sha256 = await asyncio.to_thread(self._store, url, answer)
        self.stats.downloads += 1
        return Downloaded(
            url, sha256, self._cache.blob_path(sha256), fetched=True, revalidated=False
        )

    def _store(self, url: str, answer: _Body) -> str:
        """Keep ``answer``'s image (the blob first: the URL's entry names it); its SHA-256."""
        sha256 = self._cache.put(answer.data)
        self._cache.remember_url(
            UrlEntry(url, sha256, answer.etag, answer.last_modified, time.time())
        )
        return sha256

    def _cached(self, url: str) -> tuple[UrlEntry | None, Path | None]:
        """What the cache holds for ``url``: its entry, and its blob if that is still there."""
        entry = self._cache.url_entry(url)
        return entry, self._cache.path(entry.sha256) if entry is not None else None

    async def _retrying(self, target: URL, conditions: Mapping[str, str]) -> _Body | _NotModified:
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(_Retryable),
            stop=stop_after_attempt(self.settings.attempts),
            wait=self._wait,
            reraise=True,
        )
        return await retrying(self._attempt, target, conditions)

    def _wait(self, state: RetryCallState) -> float:
        backoff = self._backoff(state)
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, _Retryable) and error.retry_after is not None:
            return max(backoff, error.retry_after)
        return backoff

    async def _attempt(self, target: URL, conditions: Mapping[str, str]) -> _Body | _NotModified:
        """One GET, within a place and a limiter slot; its failures as ``_Refused`` (final)
        or ``_Retryable``."""
        if self._session is None or self._limiter is None:
            raise RuntimeError("use the downloader as `async with Downloader(...) as d`")
        async with self._places:
            # The slot is taken once a place is held, so that waiting for a place never
            # bunches attempts up beyond the rate.
            await self._limiter.acquire()
            self.stats.requests += 1
            try:
                async with self._session.get(target, headers=conditions) as response:
                    return await self._answer(response)
            except TimeoutError:
                raise _Retryable(f"no answer within {self.settings.timeout:g} s") from None
            except aiohttp.ClientConnectorError as exc:
                raise _Refused("download_failed", _connect_failure(exc)) from None
            except aiohttp.TooManyRedirects:
                raise _Refused("download_failed", "too many redirects") from None
            except aiohttp.RedirectClientError:
                raise _Refused("download_failed", "redirected to an invalid URL") from None
            except (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError):
                raise _Refused("bad_url", "not a URL aiohttp can request") from None
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
                # Dropped or reset connections, a body cut short: the next attempt may pass.
                raise _Retryable(f"connection failed: {type(exc).__name__}") from None
            except aiohttp.ClientError as exc:
                # A malformed answer (bad headers, bad chunking): the server is broken.
                raise _Refused("download_failed", f"bad answer: {type(exc).__name__}") from None

    async def _answer(self, response: aiohttp.ClientResponse) -> _Body | _NotModified:
        etag = response.headers.get("ETag")
        last_modified = response.headers.get("Last-Modified")
        status = response.status
        if status == 304:
            return _NotModified(etag, last_modified)
        if status in _RETRY_STATUSES or status >= 500:
            after = parse_retry_after(response.headers.get("Retry-After"))
            if after is not None and after > self.settings.max_delay:
                # Calling again sooner than asked would be rude; later is the next run's job.
                raise _Refused(
                    "download_failed",
                    f"HTTP {status}, to be retried after {after:g} s at the earliest",
                )
            raise _Retryable(f"HTTP {status}", after)
        if status != 200:
            raise _Refused("http_status", f"HTTP {status}", lasting=status in _GONE)
        # aiohttp says application/octet-stream when there is no Content-Type: the bytes decide.
        content_type = response.content_type
        if not content_type.startswith("image/") and content_type != "application/octet-stream":
            raise _Refused(
                "not_an_image", f"content type {content_type}, not an image", lasting=True
            )
        limit = self.settings.max_bytes
        length = response.content_length
        if length is not None and length > limit:
            raise _Refused("too_large", f"Content-Length {length} is over the {limit}-byte limit")
        data = await self._read_capped(response)
        if not data:
            raise _Refused("empty", "the answer has no body", lasting=True)
        if image_format(data) is None:
            raise _Refused(
                "not_an_image",
                f"content type {content_type}, but the bytes are no known image",
                lasting=True,
            )
        return _Body(data, etag, last_modified)

    async def _read_capped(self, response: aiohttp.ClientResponse) -> bytes:
        limit = self.settings.max_bytes
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.content.iter_chunked(_CHUNK):
            size += len(chunk)
            self.stats.bytes_received += len(chunk)
            if size > limit:
                # Leaving the response unread closes its connection: nothing more is read.
                raise _Refused("too_large", f"the body is over the {limit}-byte limit")
            chunks.append(chunk)
        return b"".join(chunks)


def _parse_url(url: str) -> URL | str:
    """``url`` as a yarl URL if it is an http(s) URL with a host, else why not."""
    try:
        parts = urlsplit(url)
        if parts.scheme.lower() not in ("http", "https"):
            return f"the scheme is {parts.scheme or 'missing'}, not http or https"
        if not parts.hostname:
            return "the URL has no host"
        parts.port  # noqa: B018 - raises ValueError for a port out of range
        # An ASCII URL is sent as given (a CDN token may sign the raw query); one with other
        # characters (a Chinese file name, say) has to be percent-encoded first.
        return URL(url, encoded=url.isascii())
    except ValueError as exc:  # a bad port, bad brackets, a bad IDNA host name
        return f"not a valid URL ({exc})"


def _conditions(entry: UrlEntry) -> dict[str, str]:
    conditions = {}
    if entry.etag:
        conditions["If-None-Match"] = entry.etag
    if entry.last_modified:
        conditions["If-Modified-Since"] = entry.last_modified
    return conditions


def _connect_failure(exc: aiohttp.ClientConnectorError) -> str:
    # A refused connection's strerror is asyncio's "Connect call failed"; its errno says why.
    errno = exc.os_error.errno
    reason = os.strerror(errno) if isinstance(errno, int) and errno > 0 else None
    reason = reason or exc.strerror or type(exc.os_error).__name__
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return f"the host name {exc.host} does not resolve: {reason}"
    return f"cannot connect to {exc.host}:{exc.port}: {reason}"


def _host(url: str) -> str:
    try:
        return urlsplit(url).hostname or "?"
    except ValueError:
        return "?"
