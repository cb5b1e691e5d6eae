"""Image downloads against real HTTP servers on loopback, into a real cache on disk: what is
requested (counted by the server), what lands in the cache, and each failure's reason."""

from __future__ import annotations

import asyncio
import hashlib
import io
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from PIL import Image

from engine import __version__
from engine.download import (
    REASONS,
    Downloaded,
    Downloader,
    DownloadFailed,
    DownloadSettings,
    image_format,
)
from engine.imagecache import ImageCache
from engine.ratelimit import Rate, most_in_window
from tests.job_kit import image_files
from tests.waiting import wait_for

FAST = DownloadSettings(
    rate=Rate(1000, 1.0), concurrency=4, timeout=10.0, attempts=3, base_delay=0.01, max_delay=0.05
)
"""Retries after about 10 ms: what is tested is how many, not how long."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def encoded(fmt: str, colour: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (24, 16), colour).save(buffer, fmt)
    return buffer.getvalue()


JPEG = encoded("JPEG")
PNG = encoded("PNG")


@dataclass(frozen=True)
class Arrival:
    path: str
    at: float
    headers: dict[str, str]


class Origin:
    """An HTTP server on 127.0.0.1 whose routes each test sets (``routes[path] = handler``,
    at any time); it records every request that arrives, and a handler that must hang waits
    for :attr:`released`, set when the test ends."""

    def __init__(self) -> None:
        self.routes: dict[str, Handler] = {}
        self.arrivals: list[Arrival] = []
        self.released = asyncio.Event()
        self.base = ""

    def url(self, path: str) -> str:
        return self.base + path

    def hits(self, path: str) -> list[Arrival]:
        return [arrival for arrival in self.arrivals if arrival.path == path]

    def serve(
        self, path: str, body: bytes, content_type: str = "image/jpeg", **headers: str
    ) -> None:
        async def handle(request: web.Request) -> web.Response:
            return web.Response(body=body, content_type=content_type, headers=headers)

        self.routes[path] = handle

    def answers(self, path: str, *handlers: Handler) -> None:
        """``path`` answers with the next of ``handlers`` on each request; the last repeats."""
        served = 0

        async def handle(request: web.Request) -> web.StreamResponse:
            nonlocal served
            served += 1
            return await handlers[min(served, len(handlers)) - 1](request)

        self.routes[path] = handle

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        self.arrivals.append(Arrival(request.path, time.monotonic(), dict(request.headers)))
        handler = self.routes.get(request.path)
        if handler is None:
            return web.Response(status=404, text="no such image")
        return await handler(request)


def status(code: int, **headers: str) -> Handler:
    async def handle(request: web.Request) -> web.Response:
        return web.Response(status=code, headers=headers)

    return handle


def image(body: bytes = JPEG) -> Handler:
    async def handle(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="image/jpeg")

    return handle


@pytest.fixture
async def origin() -> AsyncIterator[Origin]:
    server = Origin()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", server._dispatch)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    server.base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield server
    server.released.set()
    await runner.cleanup()


@pytest.fixture
def cache(tmp_path: Path) -> Iterator[ImageCache]:
    with ImageCache(tmp_path / "cache") as opened:
        yield opened


@asynccontextmanager
async def downloader(cache: ImageCache, **changes: Any) -> AsyncIterator[Downloader]:
    async with Downloader(replace(FAST, **changes), cache) as opened:
        yield opened


def blobs(cache: ImageCache) -> list[Path]:
    return image_files(cache.root / "blobs")


def failed(result: Downloaded | DownloadFailed) -> DownloadFailed:
    assert isinstance(result, DownloadFailed), result
    assert result.reason in REASONS
    return result


def done(result: Downloaded | DownloadFailed) -> Downloaded:
    assert isinstance(result, Downloaded), result
    return result


# -- downloads and the cache


async def test_a_jpeg_lands_in_the_cache_under_its_sha(origin: Origin, cache: ImageCache) -> None:
    origin.serve("/p.jpg", JPEG)
    async with downloader(cache) as d:
        got = done(await d.fetch(origin.url("/p.jpg"), revalidate=False))

    assert got.sha256 == hashlib.sha256(JPEG).hexdigest()
    assert got.path.read_bytes() == JPEG
    assert (got.fetched, got.revalidated) == (True, False)
    assert blobs(cache) == [got.path]
    entry = cache.url_entry(origin.url("/p.jpg"))
    assert entry is not None and entry.sha256 == got.sha256
    assert origin.hits("/p.jpg")[0].headers["User-Agent"] == f"img1688/{__version__}"
    assert (d.stats.requests, d.stats.downloads, d.stats.bytes_received) == (1, 1, len(JPEG))


async def test_a_cached_url_is_answered_without_a_request_even_in_another_run(
    origin: Origin, tmp_path: Path
) -> None:
    origin.serve("/offer.jpg", JPEG)
    url = origin.url("/offer.jpg")
    with ImageCache(tmp_path / "shared") as cache:
        async with downloader(cache) as d:
            first = done(await d.fetch(url, revalidate=False))
            again = done(await d.fetch(url, revalidate=False))
        assert len(origin.hits("/offer.jpg")) == 1
        assert (again.sha256, again.path, again.fetched) == (first.sha256, first.path, False)
        assert (d.stats.requests, d.stats.cache_hits) == (1, 1)

    with ImageCache(tmp_path / "shared") as cache:  # the next run: a new cache and downloader
        async with downloader(cache) as d:
            rerun = done(await d.fetch(url, revalidate=False))
    assert len(origin.hits("/offer.jpg")) == 1
    assert (rerun.sha256, rerun.fetched, d.stats.requests) == (first.sha256, False, 0)


async def test_a_url_whose_blob_is_gone_is_downloaded_again(
    origin: Origin, cache: ImageCache
) -> None:
    origin.serve("/p.jpg", JPEG)
    async with downloader(cache) as d:
        first = done(await d.fetch(origin.url("/p.jpg"), revalidate=False))
        first.path.unlink()
        again = done(await d.fetch(origin.url("/p.jpg"), revalidate=False))
    assert again.fetched and again.path.read_bytes() == JPEG
    assert len(origin.hits("/p.jpg")) == 2


async def test_revalidation_sends_the_validators_and_a_304_transfers_no_body(
    origin: Origin, cache: ImageCache
) -> None:
    etag, modified = '"v1"', "Mon, 01 Jan 2024 10:00:00 GMT"

    async def conditional(request: web.Request) -> web.Response:
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers={"ETag": etag})
        return web.Response(
            body=JPEG, content_type="image/jpeg", headers={"ETag": etag, "Last-Modified": modified}
        )

    origin.routes["/sku1.jpg"] = conditional
    url = origin.url("/sku1.jpg")
    async with downloader(cache) as d:
        first = done(await d.fetch(url, revalidate=True))
        received = d.stats.bytes_received
        second = done(await d.fetch(url, revalidate=True))

    first_ask, second_ask = (arrival.headers for arrival in origin.hits("/sku1.jpg"))
    assert "If-None-Match" not in first_ask
    assert (second_ask["If-None-Match"], second_ask["If-Modified-Since"]) == (etag, modified)
    assert (second.sha256, second.path) == (first.sha256, first.path)
    assert (second.fetched, second.revalidated) == (False, True)
    assert d.stats.bytes_received == received  # nothing read with the 304
    assert (d.stats.not_modified, d.stats.downloads) == (1, 1)
    entry = cache.url_entry(url)
    assert entry is not None and (entry.etag, entry.last_modified) == (etag, modified)


async def test_revalidating_a_server_that_ignores_conditions_keeps_the_sha_of_the_same_bytes(
    origin: Origin, cache: ImageCache
) -> None:
    origin.answers("/sku.jpg", image(JPEG), image(JPEG), image(PNG))  # the user replaces it
    url = origin.url("/sku.jpg")
    async with downloader(cache) as d:
        first = done(await d.fetch(url, revalidate=True))
        same = done(await d.fetch(url, revalidate=True))
        assert blobs(cache) == [first.path]
        replaced = done(await d.fetch(url, revalidate=True))

    assert (same.sha256, same.fetched, same.revalidated) == (first.sha256, True, False)
    assert replaced.sha256 == hashlib.sha256(PNG).hexdigest()
    entry = cache.url_entry(url)
    assert entry is not None and entry.sha256 == replaced.sha256
    assert len(origin.hits("/sku.jpg")) == 3


async def test_redirects_are_followed_and_the_final_answer_counts(
    origin: Origin, cache: ImageCache
) -> None:
    origin.routes["/old.jpg"] = status(302, Location="/new.jpg")
    origin.serve("/new.jpg", JPEG)
    origin.routes["/moved"] = status(301, Location="/page.html")
    origin.serve("/page.html", b"<html>sign in</html>", content_type="text/html")
    async with downloader(cache) as d:
        moved = done(await d.fetch(origin.url("/old.jpg"), revalidate=False))
        page = failed(await d.fetch(origin.url("/moved"), revalidate=False))
    assert moved.path.read_bytes() == JPEG
    assert cache.url_entry(origin.url("/old.jpg")) is not None  # remembered by the asked URL
    assert page.reason == "not_an_image"


# -- formats and content checks


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (JPEG, "JPEG"),
        (PNG, "PNG"),
        (encoded("GIF"), "GIF"),
        (encoded("WEBP"), "WEBP"),
        (encoded("BMP"), "BMP"),
        (encoded("TIFF"), "TIFF"),
        (b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf", "AVIF"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic", "HEIF"),
        (b"\x00\x00\x00\x18ftypmif1\x00\x00\x00\x00mif1heic", "HEIF"),
        (b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2", None),  # an MP4 video
        (b"BM and then some text that is no bitmap", None),
        (b"<!doctype html><html></html>", None),
        (b"", None),
    ],
)
def test_image_format_knows_the_formats_by_their_leading_bytes(
    data: bytes, expected: str | None
) -> None:
    assert image_format(data) == expected


async def test_a_body_the_content_type_or_the_bytes_disown_is_not_an_image(
    origin: Origin, cache: ImageCache
) -> None:
    origin.serve("/login", b"<html>" + b"x" * 50_000 + b"</html>", content_type="text/html")
    origin.serve("/fake.jpg", b"<html>an error page with an image type</html>")
    origin.serve("/empty.jpg", b"")
    origin.serve("/blob", PNG, content_type="application/octet-stream")
    async with downloader(cache) as d:
        html = failed(await d.fetch(origin.url("/login"), revalidate=False))
        assert d.stats.bytes_received == 0  # refused on its content type, before the body
        fake = failed(await d.fetch(origin.url("/fake.jpg"), revalidate=False))
        empty = failed(await d.fetch(origin.url("/empty.jpg"), revalidate=False))
        octets = done(await d.fetch(origin.url("/blob"), revalidate=False))

    assert (html.reason, fake.reason, empty.reason) == ("not_an_image", "not_an_image", "empty")
    assert "text/html" in html.message
    assert octets.path.read_bytes() == PNG
    assert blobs(cache) == [octets.path]
    assert cache.url_entry(origin.url("/fake.jpg")) is None
    assert d.stats.failures == {"not_an_image": 2, "empty": 1}


async def test_a_content_length_over_the_limit_is_refused_before_the_body(
    origin: Origin, cache: ImageCache
) -> None:
    """The server sends the headers and never a byte of the body: reading it would hang until
    the timeout (``download_failed``); refusing on the header ends at once."""

    async def headers_only(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
        response.content_length = 10_001
        await response.prepare(request)
        await origin.released.wait()
        return response

    origin.routes["/huge.jpg"] = headers_only
    async with downloader(cache, max_bytes=10_000, timeout=10.0, attempts=1) as d:
        huge = failed(await d.fetch(origin.url("/huge.jpg"), revalidate=False))
    assert huge.reason == "too_large"
    assert "10001" in huge.message
    assert (d.stats.requests, d.stats.bytes_received) == (1, 0)
    assert blobs(cache) == []


async def test_a_chunked_body_over_the_limit_is_cut_off_while_streaming(
    origin: Origin, cache: ImageCache
) -> None:
    chunk, total = JPEG[:3] + bytes(64 * 1024 - 3), 64 * 1024 * 1024
    sent: list[int] = []

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        written = 0
        try:
            while written < total:
                await response.write(chunk)
                written += len(chunk)
        except ConnectionError:  # the client hung up
            pass
        sent.append(written)
        return response

    origin.routes["/stream.jpg"] = endless
    limit = 256 * 1024
    async with downloader(cache, max_bytes=limit) as d:
        big = failed(await d.fetch(origin.url("/stream.jpg"), revalidate=False))
    assert big.reason == "too_large"
    assert limit < d.stats.bytes_received <= limit + len(chunk)
    await wait_for(lambda: sent, "the server's handler to end")
    assert sent[0] < total  # the connection was closed, not drained
    assert blobs(cache) == []


# -- HTTP failures and retries


async def test_a_503_is_retried_and_the_retry_succeeds(origin: Origin, cache: ImageCache) -> None:
    origin.answers("/busy.jpg", status(503), image())
    async with downloader(cache) as d:
        got = done(await d.fetch(origin.url("/busy.jpg"), revalidate=False))
    assert got.path.read_bytes() == JPEG
    assert len(origin.hits("/busy.jpg")) == d.stats.requests == 2


async def test_retries_are_bounded_and_a_404_is_not_retried(
    origin: Origin, cache: ImageCache
) -> None:
    origin.routes["/down.jpg"] = status(503)
    origin.routes["/throttled.jpg"] = status(429, **{"Retry-After": "3600"})
    origin.answers("/soon.jpg", status(429, **{"Retry-After": "0"}), image())
    async with downloader(cache, attempts=3) as d:
        down = failed(await d.fetch(origin.url("/down.jpg"), revalidate=False))
        gone = failed(await d.fetch(origin.url("/gone.jpg?sig=SECRET-SIG"), revalidate=False))
        throttled = failed(await d.fetch(origin.url("/throttled.jpg"), revalidate=False))
        soon = done(await d.fetch(origin.url("/soon.jpg"), revalidate=False))

    assert (down.reason, down.message) == ("download_failed", "HTTP 503")
    assert len(origin.hits("/down.jpg")) == 3
    assert (gone.reason, gone.message) == ("http_status", "HTTP 404")
    assert len(origin.hits("/gone.jpg")) == 1
    # Asked not to come back within the hour: no retry now (the next run will try).
    assert throttled.reason == "download_failed" and "3600" in throttled.message
    assert len(origin.hits("/throttled.jpg")) == 1
    assert soon.fetched and len(origin.hits("/soon.jpg")) == 2
    assert d.stats.failures == {"download_failed": 2, "http_status": 1}


# -- failures remembered


async def test_a_lasting_failure_is_answered_from_the_cache_until_it_is_old(
    origin: Origin, cache: ImageCache
) -> None:
    url = origin.url("/gone.jpg")
    async with downloader(cache, remember_failures=3600) as d:
        first = failed(await d.fetch(url, revalidate=False))
    async with downloader(cache, remember_failures=3600) as d:  # the next run
        again = failed(await d.fetch(url, revalidate=False))
        assert d.stats.remembered_failures == 1
        assert d.stats.failures == {"http_status": 1}
    assert again == first == DownloadFailed(url, "http_status", "HTTP 404")
    assert len(origin.hits("/gone.jpg")) == 1
    # An hour later it is asked again.
    known = cache.url_failure(url)
    assert known is not None
    cache.remember_failure(replace(known, failed_at=known.failed_at - 3601))
    async with downloader(cache, remember_failures=3600) as d:
        failed(await d.fetch(url, revalidate=False))
        assert d.stats.remembered_failures == 0
    assert len(origin.hits("/gone.jpg")) == 2


async def test_what_a_failure_is_remembered_for_and_what_it_is_not(
    origin: Origin, cache: ImageCache
) -> None:
    origin.serve("/page.jpg", b"<html>gone</html>", content_type="text/html")
    origin.routes["/removed.jpg"] = status(410)
    origin.routes["/down.jpg"] = status(503)
    origin.routes["/refused.jpg"] = status(403)
    origin.serve("/big.jpg", JPEG)
    lasting = {"/page.jpg": "not_an_image", "/removed.jpg": "http_status"}
    # A 5xx may pass by the next run, a 403 may be a CDN's passing refusal, and what is too
    # large depends on a setting that may change: none of them is remembered.
    passing = {
        "/down.jpg": "download_failed",
        "/refused.jpg": "http_status",
        "/big.jpg": "too_large",
    }
    async with downloader(cache, remember_failures=3600, attempts=1, max_bytes=10) as d:
        for _ in range(2):
            for path, reason in (lasting | passing).items():
                assert failed(await d.fetch(origin.url(path), revalidate=False)).reason == reason
            # A photo the user may replace behind its URL is always asked.
            failed(await d.fetch(origin.url("/user.jpg"), revalidate=True))
    assert {path: len(origin.hits(path)) for path in lasting} == dict.fromkeys(lasting, 1)
    assert {path: len(origin.hits(path)) for path in passing} == dict.fromkeys(passing, 2)
    assert len(origin.hits("/user.jpg")) == 2
    async with downloader(cache) as d:  # remembering off: asked every time
        failed(await d.fetch(origin.url("/page.jpg"), revalidate=False))
    assert len(origin.hits("/page.jpg")) == 2


async def test_an_image_back_at_its_url_is_stored_and_its_failure_forgotten(
    origin: Origin, cache: ImageCache
) -> None:
    origin.answers("/back.jpg", status(404), image())
    url = origin.url("/back.jpg")
    async with downloader(cache, remember_failures=3600) as d:
        failed(await d.fetch(url, revalidate=False))
    known = cache.url_failure(url)
    assert known is not None
    cache.remember_failure(replace(known, failed_at=0.0))
    async with downloader(cache, remember_failures=3600) as d:
        assert done(await d.fetch(url, revalidate=False)).fetched
    assert cache.url_failure(url) is None


async def test_a_server_that_never_answers_times_out_on_every_attempt(
    origin: Origin, cache: ImageCache
) -> None:
    async def hang(request: web.Request) -> web.Response:
        await origin.released.wait()
        return web.Response(status=200)

    origin.routes["/slow.jpg"] = hang
    async with downloader(cache, timeout=0.3, attempts=2) as d:
        slow = failed(await d.fetch(origin.url("/slow.jpg"), revalidate=False))
    assert (slow.reason, slow.message) == ("download_failed", "no answer within 0.3 s")
    assert len(origin.hits("/slow.jpg")) == 2


async def test_a_refused_connection_fails_without_retries(
    refusing_url: str, cache: ImageCache
) -> None:
    async with downloader(cache) as d:
        refused = failed(await d.fetch(refusing_url + "/p.jpg?token=SECRET", revalidate=False))
    assert refused.reason == "download_failed"
    assert "cannot connect to 127.0.0.1" in refused.message
    assert "SECRET" not in refused.message
    assert d.stats.requests == 1


@pytest.mark.parametrize(
    "url",
    ["ftp://example.com/p.jpg", "file:///etc/passwd", "http:///p.jpg", "p.jpg", "http://h:99999/"],
)
async def test_a_bad_url_fails_without_a_request(url: str, cache: ImageCache) -> None:
    async with downloader(cache) as d:
        bad = failed(await d.fetch(url, revalidate=False))
    assert bad.reason == "bad_url"
    assert d.stats.requests == 0


# -- one fetch per URL at a time


def held(arrived: asyncio.Event, until: Callable[[], Awaitable[object]]) -> Handler:
    """A JPEG answer that sets ``arrived`` as the request comes in, then waits for ``until()``."""

    async def handle(request: web.Request) -> web.Response:
        arrived.set()
        await until()
        return web.Response(body=JPEG, content_type="image/jpeg")

    return handle


async def test_concurrent_fetches_of_one_url_share_one_request(
    origin: Origin, cache: ImageCache
) -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(0.05)  # the other fetches arrive while this one is under way
        return web.Response(body=JPEG, content_type="image/jpeg")

    origin.routes["/shared.jpg"] = slow
    url = origin.url("/shared.jpg")
    async with downloader(cache) as d:
        results = await asyncio.gather(*(d.fetch(url, revalidate=False) for _ in range(5)))
        assert (d.stats.downloads, d.stats.shared) == (1, 4)
        again = done(await d.fetch(url, revalidate=False))  # over: the cache answers
    assert len(origin.hits("/shared.jpg")) == 1
    assert {done(result).sha256 for result in results} == {again.sha256}
    assert not again.fetched


async def test_a_cancelled_caller_leaves_the_shared_fetch_to_the_others(
    origin: Origin, cache: ImageCache
) -> None:
    arrived = asyncio.Event()
    origin.routes["/a.jpg"] = held(arrived, lambda: asyncio.sleep(0.1))
    async with downloader(cache) as d:
        first = asyncio.create_task(d.fetch(origin.url("/a.jpg"), revalidate=False))
        second = asyncio.create_task(d.fetch(origin.url("/a.jpg"), revalidate=False))
        await arrived.wait()
        first.cancel()
        assert done(await second).fetched
    assert first.cancelled()
    assert len(origin.hits("/a.jpg")) == 1


async def test_a_fetch_nobody_waits_for_any_more_is_stopped_on_exit(
    origin: Origin, cache: ImageCache
) -> None:
    arrived = asyncio.Event()
    origin.routes["/hang.jpg"] = held(arrived, origin.released.wait)
    async with downloader(cache, timeout=30.0) as d:
        caller = asyncio.create_task(d.fetch(origin.url("/hang.jpg"), revalidate=False))
        await arrived.wait()
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        (under_way,) = d._under_way.values()
    assert under_way.cancelled()  # not left running on a closed session
    assert not d._under_way


# -- politeness


async def test_attempts_are_spaced_to_the_rate(origin: Origin, cache: ImageCache) -> None:
    """No burst: with 10 per 0.5 s, even a window of 0.35 s (which the even spacing fills with
    at most 8) never holds more than 10 arrivals, while a bucket that starts full would let 10
    in at once and 7 more within that window."""
    rate = Rate(10, 0.5)
    for n in range(16):
        origin.serve(f"/{n}.jpg", encoded("JPEG", (n * 10, 0, 0)))
    async with downloader(cache, rate=rate, concurrency=8) as d:
        results = await asyncio.gather(
            *(d.fetch(origin.url(f"/{n}.jpg"), revalidate=False) for n in range(16))
        )
    assert all(isinstance(result, Downloaded) for result in results)
    arrivals = [arrival.at for arrival in origin.arrivals]
    assert len(arrivals) == 16
    assert most_in_window(arrivals, rate.period * 0.7) <= rate.calls


async def test_no_more_attempts_at_once_than_the_concurrency(
    origin: Origin, cache: ImageCache
) -> None:
    active, most = 0, 0

    async def slow(request: web.Request) -> web.Response:
        nonlocal active, most
        active += 1
        most = max(most, active)
        await asyncio.sleep(0.05)
        active -= 1
        return web.Response(
            body=encoded("PNG", (0, len(request.path), 0)), content_type="image/png"
        )

    for n in range(8):
        origin.routes[f"/{n}.png"] = slow
    async with downloader(cache, concurrency=2) as d:
        await asyncio.gather(
            *(d.fetch(origin.url(f"/{n}.png"), revalidate=False) for n in range(8))
        )
    assert len(origin.arrivals) == 8
    assert most <= 2
