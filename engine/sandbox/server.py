"""The sandbox gateway: an in-process aiohttp server speaking both 1688 protocols.

Each ``param2`` call passes the checks a real gateway plausibly makes, in this order: client IP
allowlist, app key, API name, signature (recomputed over exactly the parameters received, form
body and query string merged, by :mod:`engine.sandbox.verify`, which shares no code with the
engine's signing so that the sandbox is an independent oracle), timestamp skew, access token,
API ACL, the rate window, the usage limit. A call that passes them all is *admitted*: it enters
the rate window and the usage count, and only then may an injected fault replace its answer (a
real gateway counts a call that later fails with a 5xx). Admitted calls then meet the business
checks: image rules, page size, image id.

The sandbox may know several apps (:attr:`SandboxConfig.extra_apps`): each has its own secret,
live access token, refresh token, rate window(s) and usage count, as a gateway that counts calls
per app key.

Beside the gateway it serves every catalogue photo at the image URL its answers give
(``/img/ibank/...``, :mod:`engine.sandbox.images`), ungated, as a CDN does. The catalogue is
reloaded when its ``catalogue.json`` changes (checked at each search and image request) or on
``POST /__sandbox__/reload``, so a test can change a price between two runs on one endpoint.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import io
import json
import logging
import math
import secrets
import time
import warnings
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from aiohttp import hdrs, web
from PIL import Image

from engine.protocol import (
    OCEAN_NAMESPACE,
    OCEAN_QUERY,
    OCEAN_UPLOAD,
    OCEAN_VERSION,
    OPENAPI_PREFIX,
    SEED_API,
    TOKEN_API,
    TOKEN_PATH,
    ProtocolName,
)
from engine.ratelimit import Rate
from engine.sandbox import formats, images
from engine.sandbox.catalogue import DEFAULT_CATALOGUE, Catalogue, Match, stamp_of
from engine.sandbox.faults import FAULT_KEYS, SLOW, Decision, Fault, FaultPicker, Faults
from engine.sandbox.formats import Answer
from engine.sandbox.verify import (
    OCEAN_SIGNATURE,
    SEED_SIGNATURE,
    gmt8_fresh,
    millis_fresh,
    ocean_accepts,
    seed_accepts,
)

log = logging.getLogger(__name__)

OCEAN_APIS = (OCEAN_UPLOAD, OCEAN_QUERY)
_TOKEN_PATH_PARTS = TOKEN_PATH.split("/")

MAX_SKEW_SECONDS = 600.0
MAX_PAGE_SIZE = 50
DEFAULT_PAGE_SIZE = 20
MAX_UPLOADS = 10_000  # image ids kept for imageQuery; the oldest are forgotten first
MAX_ARRIVALS = 100_000  # admitted-call times (and query keywords) kept in the stats
MAX_BODY_BYTES = 32 * 1024 * 1024  # room for uploads well over the image limit, to reject them
ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
DEFAULT_RATE = Rate(10, 60.0)


@dataclass(frozen=True)
class SandboxApp:
    """An app the sandbox knows. ``repr`` shows only its key."""

    app_key: str
    app_secret: str = field(repr=False)
    access_token: str = field(repr=False)
    refresh_token: str | None = field(default=None, repr=False)
    usage_limit: int | None = None
    """Admitted calls of this app after which no usage is left (``None``: unlimited)."""


@dataclass(frozen=True)
class SandboxConfig:
    """How the sandbox gateway behaves.

    Attributes:
        host, port: where to listen; port 0 picks a free one.
        catalogue_dir: the product catalogue searched by image: a folder holding
            ``catalogue.json`` and the photos it names, served at the answers' image URLs;
            read again when ``catalogue.json`` changes.
        rate: strict sliding window per app key over admitted ``param2`` calls, both protocols.
        api_rates: API name -> a strict window of its own per app key, for the APIs a gateway
            counts separately; the other APIs share ``rate``'s window.
        app_key, app_secret, access_token, refresh_token: the sandbox's first app.
        extra_apps: further apps, each with its own secret, tokens, windows and usage limit.
        token_ttl: seconds an access token lives (``None``: forever).
        allow_ips: client IPs allowed to call; empty allows every IP.
        deny_apis: API names answered with an ACL decline.
        usage_limit: admitted calls of the first app after which no usage is left (``None``:
            unlimited); an extra app has its own.
        max_side, max_image_bytes: image rules applied to the decoded upload.
        faults: injected misbehaviour.

    Raises:
        ValueError: an app key is listed twice.
    """

    host: str = "127.0.0.1"
    port: int = 0
    catalogue_dir: Path = DEFAULT_CATALOGUE
    rate: Rate = DEFAULT_RATE
    app_key: str = "sandbox-app"
    app_secret: str = field(default="sandbox-secret", repr=False)
    access_token: str = field(default="sandbox-token", repr=False)
    refresh_token: str | None = field(default="sandbox-refresh", repr=False)
    token_ttl: float | None = None
    allow_ips: tuple[str, ...] = ()
    deny_apis: tuple[str, ...] = ()
    usage_limit: int | None = None
    max_side: int = 800
    max_image_bytes: int = 2_000_000
    faults: Faults = field(default_factory=Faults)
    extra_apps: tuple[SandboxApp, ...] = ()
    api_rates: Mapping[str, Rate] = field(default_factory=dict)

    def __post_init__(self) -> None:
        keys = [app.app_key for app in self.apps]
        if len(set(keys)) != len(keys):
            raise ValueError("the sandbox's apps need distinct app keys")

    @property
    def apps(self) -> tuple[SandboxApp, ...]:
        """Every app the sandbox knows, the first one first."""
        first = SandboxApp(
            self.app_key, self.app_secret, self.access_token, self.refresh_token, self.usage_limit
        )
        return (first, *self.extra_apps)


DEFAULT_CONFIG = SandboxConfig()


class InvalidImage(ValueError):
    """The uploaded image breaks the image rules; the message says which."""


@dataclass(frozen=True)
class _Upload:
    sha256: str
    ranking: tuple[Match, ...]


class _Drop:
    """Marker answer: close the connection without responding."""


DROP = _Drop()


class _AppStats:
    """What one app's calls met, in the stats."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.rate_limited = 0
        self.arrivals: deque[float] = deque(maxlen=MAX_ARRIVALS)
        self.api_arrivals: dict[str, deque[float]] = {}

    def admitted(self, api: str, now: float) -> None:
        self.arrivals.append(now)
        self.api_arrivals.setdefault(api, deque(maxlen=MAX_ARRIVALS)).append(now)

    def to_json(self) -> dict[str, Any]:
        return {
            "calls": dict(self.calls),
            "total_calls": sum(self.calls.values()),
            "rate_limited": self.rate_limited,
            "arrivals": list(self.arrivals),
            "api_arrivals": {api: list(times) for api, times in self.api_arrivals.items()},
        }


class _Stats:
    """Counters served at ``GET /__sandbox__/stats``.

    ``apps`` holds, per app key the sandbox knows, the ``param2`` and token calls that named it
    (answered in any way), its rate-limit answers and the arrival times of its admitted calls
    (all, and per API). ``keywords`` lists the ``keyword`` of each ocean query that passed the
    parameter checks, in arrival order; ``images`` counts the CDN's requests; ``reloads`` the
    catalogue reloads.
    """

    def __init__(self, app_keys: tuple[str, ...] = ()) -> None:
        self._app_keys = app_keys
        self.reset()

    def reset(self) -> None:
        self.calls: Counter[str] = Counter()
        self.statuses: Counter[str] = Counter()
        self.error_codes: Counter[str] = Counter()
        self.searches: Counter[str] = Counter()
        self.faults: Counter[str] = Counter({key: 0 for key in FAULT_KEYS})
        self.rate_limited = 0
        self.arrivals: deque[float] = deque(maxlen=MAX_ARRIVALS)
        self.apps = {key: _AppStats() for key in self._app_keys}
        self.keywords: deque[str] = deque(maxlen=MAX_ARRIVALS)
        self.images = images.ImageStats()
        self.reloads = 0

    def record(self, api: str, answer: Answer | _Drop, app_key: str | None = None) -> None:
        self.calls[api] += 1
        if app_key in self.apps:
            self.apps[app_key].calls[api] += 1
        if isinstance(answer, Answer):
            self.statuses[str(answer.status)] += 1
            if answer.code is not None:
                self.error_codes[answer.code] += 1

    def to_json(self) -> dict[str, Any]:
        return {
            "calls": dict(self.calls),
            "total_calls": sum(self.calls.values()),
            "statuses": dict(self.statuses),
            "error_codes": dict(self.error_codes),
            "searches": dict(self.searches),
            "rate_limited": self.rate_limited,
            "faults": dict(self.faults),
            "arrivals": list(self.arrivals),
            "apps": {key: app.to_json() for key, app in self.apps.items()},
            "keywords": list(self.keywords),
            "images": self.images.to_json(),
            "reloads": self.reloads,
        }


class _AppState:
    """What the sandbox holds for one app: its live token, its windows and its usage."""

    def __init__(self, app: SandboxApp, born: float) -> None:
        self.app = app
        self.token = app.access_token
        self.token_born = born
        self.windows: dict[str, deque[float]] = {}
        """Admission times by window: an API with a window of its own, or "" for the rest."""
        self.admitted = 0


class Gateway:
    """The sandbox's state and request handling, independent of how it is served.

    Args:
        config: the behaviour.
        catalogue: the products to search; replaced by a reload when it was loaded from a
            folder whose ``catalogue.json`` changes.
        executor: runs image decoding, ranking and catalogue reloads off the event loop, so
            arrival times stay honest while a search computes.
        clock: monotonic clock for the rate window, token lifetimes and arrivals.
    """

    def __init__(
        self,
        config: SandboxConfig,
        catalogue: Catalogue,
        executor: ThreadPoolExecutor,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.catalogue = catalogue
        self.stats = _Stats(tuple(app.app_key for app in config.apps))
        self._executor = executor
        self._clock = clock
        # Windows, tokens and usage per app key; both protocols share an app's.
        self._apps = {app.app_key: _AppState(app, clock()) for app in config.apps}
        self._uploads: OrderedDict[str, _Upload] = OrderedDict()
        self._faults = FaultPicker(config.faults)
        self._reloading = asyncio.Lock()
        # The catalogue.json version last read (or tried): a failed reload is not retried
        # until the file changes again.
        self._seen_stamp = None if catalogue.source is None else catalogue.source.stamp

    # --- routing ----------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Serve one ``/openapi/...`` request."""
        started = self._clock()
        parts = request.match_info["tail"].split("/")
        params = await _params(request)
        app_key: str | None = None  # the app the call names, for the per-app stats
        if parts[:1] == ["param2"] and len(parts) == 5:
            _, version, namespace, api, app_key = parts
            answer = await self._ocean(request, params, version, namespace, api, app_key)
        elif parts[:1] == ["param2"] and len(parts) == 4:
            api = parts[2]
            app_key = params.get("app_key")
            answer = await self._seed(request, params, api)
        elif parts[:-1] == _TOKEN_PATH_PARTS:
            api = TOKEN_API
            app_key = parts[4]
            answer = self._get_token(request, params, parts[4])
        elif parts[:1] == ["param2"]:
            api = "/".join(parts[2:])
            answer = formats.ocean_error(400, "gw.APIUnsupported", f"api {api!r} is unsupported")
        else:
            raise web.HTTPNotFound()
        self.stats.record(api, answer, app_key)
        elapsed_ms = (self._clock() - started) * 1000
        if isinstance(answer, _Drop):
            log.debug("%s %s -> dropped (%.1f ms)", request.method, request.path, elapsed_ms)
            if request.transport is not None:
                request.transport.close()
            return web.Response()
        # The path carries the app key at most; query strings (seed tokens) are never logged.
        log.debug(
            "%s %s -> %d %s (%.1f ms)",
            request.method,
            request.path,
            answer.status,
            answer.code or "ok",
            elapsed_ms,
        )
        return web.Response(
            status=answer.status,
            text=answer.text(),
            content_type=answer.content_type,
            charset="utf-8",
            headers=answer.headers,
        )

    async def handle_stats(self, request: web.Request) -> web.Response:
        """``GET /__sandbox__/stats``."""
        return web.json_response(self.stats.to_json())

    async def handle_reset(self, request: web.Request) -> web.Response:
        """``POST /__sandbox__/reset``: zero the stats (gateway state is kept)."""
        self.stats.reset()
        return web.json_response({"reset": True})

    async def handle_reload(self, request: web.Request) -> web.Response:
        """``POST /__sandbox__/reload``: read the catalogue's folder again, changed or not.
        200 ``{"reloaded": true, "products": n}``; 422 with the error (the previous catalogue
        stays) when it does not load, or when the catalogue was not loaded from a folder."""
        source = self.catalogue.source
        if source is None:
            error: str | None = "the catalogue was not loaded from a folder"
        else:
            async with self._reloading:
                self._seen_stamp = stamp_of(source.directory)
                error = await self._reload(source.directory)
        if error is not None:
            return web.json_response({"reloaded": False, "error": error}, status=422)
        return web.json_response({"reloaded": True, "products": len(self.catalogue)})

    async def handle_image(self, request: web.Request) -> web.Response:
        """``GET /img/ibank/{name}``: an offer's photo or a rendition of it, ungated."""
        wanted = images.parse_name(request.match_info["name"])
        catalogue = await self._current_catalogue()
        reply = images.NOT_FOUND
        if wanted is not None:
            product = catalogue.product(wanted.offer_id)
            photo = None if product is None else catalogue.photo_path(product)
            reply = await asyncio.to_thread(
                images.serve, product, photo, wanted, request.headers.get(hdrs.IF_NONE_MATCH)
            )
        self.stats.images.record(wanted, reply.status)
        log.debug("%s %s -> %d", request.method, request.path, reply.status)
        return web.Response(
            status=reply.status,
            body=reply.body or None,
            content_type=reply.content_type,
            headers=reply.headers,
        )

    async def _current_catalogue(self) -> Catalogue:
        """The catalogue, reloaded first if its ``catalogue.json`` changed since last read."""
        source = self.catalogue.source
        if source is None or stamp_of(source.directory) == self._seen_stamp:
            return self.catalogue
        async with self._reloading:
            stamp = stamp_of(source.directory)
            if stamp != self._seen_stamp:  # not already reloaded while this waited
                self._seen_stamp = stamp
                await self._reload(source.directory)
        return self.catalogue

    async def _reload(self, directory: Path) -> str | None:
        """Load ``directory`` in place of the catalogue; the error, or ``None``. A catalogue
        that does not load leaves the previous one in service."""
        loop = asyncio.get_running_loop()
        try:
            catalogue = await loop.run_in_executor(self._executor, Catalogue.load, directory)
        except ValueError as exc:
            log.warning("catalogue %s not reloaded, the previous one stays: %s", directory, exc)
            return str(exc)
        self.catalogue = catalogue
        if catalogue.source is not None:
            self._seen_stamp = catalogue.source.stamp
        self.stats.reloads += 1
        log.info("catalogue %s reloaded: %d products", directory, len(catalogue))
        return None

    async def _gatekeep(
        self, protocol: ProtocolName, api: str, refusal: Answer | None, app_key: str | None
    ) -> Answer | _Drop | None:
        """What every call meets before its API, in both protocols: a refusal from the checks,
        else admission (rate window, usage count of the app), else an injected fault.
        ``None``: serve it. ``app_key`` is known to the sandbox unless there is a refusal."""
        if refusal is not None:
            return refusal
        assert app_key is not None  # the checks refuse a call that names no known app
        gate = self._admit(self._apps[app_key], protocol, api)
        if isinstance(gate, Answer):
            return gate
        return await self._misbehave(protocol, gate)

    # --- ocean ------------------------------------------------------------------------------

    async def _ocean(
        self,
        request: web.Request,
        params: dict[str, str],
        version: str,
        namespace: str,
        api: str,
        app_key: str,
    ) -> Answer | _Drop:
        refusal = self._ocean_refusal(request, params, version, namespace, api, app_key)
        blocked = await self._gatekeep("ocean", api, refusal, app_key)
        if blocked is not None:
            return blocked
        if api == OCEAN_UPLOAD:
            return await self._ocean_upload(params)
        return self._ocean_query(params, _origin(request))

    def _ocean_refusal(
        self,
        request: web.Request,
        params: dict[str, str],
        version: str,
        namespace: str,
        api: str,
        app_key: str,
    ) -> Answer | None:
        if not self._ip_allowed(request):
            return formats.ocean_error(403, "gw.IpNotInWhiteList", "ip not in white list")
        app = self._apps.get(app_key)
        if app is None:
            return formats.ocean_error(400, "gw.AppKeyNotFound", f"app key {app_key} not found")
        if version != OCEAN_VERSION or namespace != OCEAN_NAMESPACE or api not in OCEAN_APIS:
            return formats.ocean_error(
                400, "gw.APIUnsupported", f"api {namespace}:{api}:{version} is unsupported"
            )
        if not params.get(OCEAN_SIGNATURE):
            return formats.ocean_error(400, "gw.SignatureMissing", "signature is missing")
        url_path = f"param2/{version}/{namespace}/{api}/{app_key}"
        if not ocean_accepts(url_path, params, app.app.app_secret):
            return formats.ocean_error(400, "gw.SignatureInvalid", "signature is invalid")
        stamp = params.get("_aop_timestamp")
        if stamp is not None and not millis_fresh(stamp, time.time(), MAX_SKEW_SECONDS):
            return formats.ocean_error(
                400, "gw.TimestampInvalid", "_aop_timestamp is off by more than 10 minutes"
            )
        if not self._token_valid(app, params.get("access_token")):
            return formats.ocean_error(401, "401", "Request need user authorized")
        return None

    async def _ocean_upload(self, params: dict[str, str]) -> Answer:
        payload = _json_object(params.get("uploadImageParam"))
        if payload is None or not isinstance(payload.get("imageBase64"), str):
            return formats.ocean_error(
                400, "gw.ParamMissing", "uploadImageParam.imageBase64 is missing"
            )
        try:
            upload = await self._inspect(payload["imageBase64"])
        except InvalidImage as exc:
            return formats.ocean_failure("isv.invalid-image", str(exc))
        image_id = secrets.token_hex(16)
        self._uploads[image_id] = upload
        while len(self._uploads) > MAX_UPLOADS:
            self._uploads.popitem(last=False)
        return formats.ocean_success(image_id)

    def _ocean_query(self, params: dict[str, str], origin: str) -> Answer:
        query = _json_object(params.get("offerQueryParam"))
        if query is None or not query.get("imageId"):
            return formats.ocean_error(400, "gw.ParamMissing", "offerQueryParam.imageId is missing")
        try:
            page_size = _int_in(query.get("pageSize", DEFAULT_PAGE_SIZE), "pageSize", 1)
            begin = _int_in(query.get("beginPage", 1), "beginPage", 1)
            low = _price(query.get("priceStart"), "priceStart")
            high = _price(query.get("priceEnd"), "priceEnd")
            keyword = query.get("keyword")
            if keyword is not None and not isinstance(keyword, str):
                raise ValueError(f"keyword {keyword!r} is not text")
        except ValueError as exc:
            return formats.ocean_failure("isv.invalid-parameter", str(exc))
        if page_size > MAX_PAGE_SIZE:
            return formats.ocean_failure(
                "isv.invalid-parameter", f"pageSize {page_size} exceeds {MAX_PAGE_SIZE}"
            )
        if keyword is not None:  # recorded, not used: the ranking is by image alone
            self.stats.keywords.append(keyword)
        upload = self._uploads.get(str(query["imageId"]))
        if upload is None:
            return formats.ocean_failure("isv.image-not-found", "imageId is unknown or expired")
        ranked = [m for m in upload.ranking if _within(m, low, high)]
        self.stats.searches[upload.sha256] += 1
        start = (begin - 1) * page_size
        return formats.ocean_success(
            {
                "totalRecords": len(ranked),
                "totalPage": math.ceil(len(ranked) / page_size),
                "pageSize": page_size,
                "currentPage": begin,
                "data": [
                    formats.ocean_offer(m.product, origin)
                    for m in ranked[start : start + page_size]
                ],
            }
        )

    # --- seed -------------------------------------------------------------------------------

    async def _seed(self, request: web.Request, params: dict[str, str], api: str) -> Answer | _Drop:
        refusal = self._seed_refusal(request, params, api)
        blocked = await self._gatekeep("seed", api, refusal, params.get("app_key"))
        if blocked is not None:
            return blocked
        return await self._seed_search(params, _origin(request))

    def _seed_refusal(
        self, request: web.Request, params: dict[str, str], api: str
    ) -> Answer | None:
        if not self._ip_allowed(request):
            return formats.seed_error(
                403, 11, "Insufficient isv permissions", "isv.ip-not-in-whitelist"
            )
        app_key = params.get("app_key")
        if not app_key:
            return formats.seed_error(200, 28, "Missing app key")
        app = self._apps.get(app_key)
        if app is None:
            return formats.seed_error(200, 29, "Invalid app Key")
        if api != SEED_API or params.get("method") != SEED_API:
            return formats.seed_error(200, 22, "Invalid method")
        if not params.get(SEED_SIGNATURE):
            return formats.seed_error(200, 24, "Missing signature")
        if not seed_accepts(params, app.app.app_secret):
            return formats.seed_error(200, 25, "Invalid signature")
        if not gmt8_fresh(params.get("timestamp"), time.time(), MAX_SKEW_SECONDS):
            return formats.seed_error(200, 31, "Invalid timestamp")
        token = params.get("access_token")
        if not token:
            return formats.seed_error(200, 26, "Missing session")
        if not self._token_valid(app, token):
            return formats.seed_error(200, 27, "Invalid session")
        return None

    async def _seed_search(self, params: dict[str, str], origin: str) -> Answer:
        image = params.get("image")
        if not image:
            return _seed_invalid_argument("image is missing")
        try:
            page_size = _int_in(params.get("page_size") or DEFAULT_PAGE_SIZE, "page_size", 1)
            low = _price(params.get("price_start"), "price_start")
            high = _price(params.get("price_end"), "price_end")
            moq = _int_in(params.get("min_order_quantity") or 0, "min_order_quantity", 0)
            freight = params.get("freight_type") or None
            if freight not in (None, "free", "paid"):
                raise ValueError(f"freight_type {freight!r} is not free or paid")
        except ValueError as exc:
            return _seed_invalid_argument(str(exc))
        if page_size > MAX_PAGE_SIZE:
            return _seed_invalid_argument(f"page_size {page_size} exceeds {MAX_PAGE_SIZE}")
        try:
            upload = await self._inspect(image)
        except InvalidImage as exc:
            return formats.seed_error(
                200, 15, "Remote service error", "isv.invalid-image", str(exc)
            )
        ranked = [
            m
            for m in upload.ranking
            if _within(m, low, high)
            and m.product.min_order >= moq
            and freight in (None, m.product.freight)
        ]
        self.stats.searches[upload.sha256] += 1
        return formats.seed_success(ranked[:page_size], total=len(ranked), origin=origin)

    # --- token refresh ----------------------------------------------------------------------

    def _get_token(self, request: web.Request, params: dict[str, str], app_key: str) -> Answer:
        if not self._ip_allowed(request):
            return formats.ocean_error(403, "gw.IpNotInWhiteList", "ip not in white list")
        app = self._apps.get(app_key)
        if app is None:
            return formats.ocean_error(400, "gw.AppKeyNotFound", f"app key {app_key} not found")
        if params.get("grant_type") != "refresh_token":
            return formats.oauth_error(
                400, "unsupported_grant_type", "grant_type must be refresh_token"
            )
        client_ok = params.get("client_id") == app_key and _same(
            params.get("client_secret", ""), app.app.app_secret
        )
        if not client_ok:
            return formats.oauth_error(401, "invalid_client", "client_id or client_secret invalid")
        refresh = app.app.refresh_token
        if refresh is None or not _same(params.get("refresh_token", ""), refresh):
            return formats.oauth_error(401, "invalid_grant", "refresh token invalid")
        app.token = secrets.token_urlsafe(24)
        app.token_born = self._clock()
        return formats.ocean_token(app.token, refresh)

    # --- shared gateway checks --------------------------------------------------------------

    def _ip_allowed(self, request: web.Request) -> bool:
        return not self.config.allow_ips or request.remote in self.config.allow_ips

    def _token_valid(self, app: _AppState, token: str | None) -> bool:
        if not token or not _same(token, app.token):
            return False
        ttl = self.config.token_ttl
        return ttl is None or self._clock() - app.token_born < ttl

    def _admit(self, app: _AppState, protocol: ProtocolName, api: str) -> Answer | Decision:
        """ACL, the app's rate window for ``api`` and its usage; an admitted call is counted
        and gets its fault draw."""
        if api in self.config.deny_apis:
            return formats.acl_declined(protocol, api)
        now = self._clock()
        own = api in self.config.api_rates
        rate = self.config.api_rates[api] if own else self.config.rate
        window = app.windows.setdefault(api if own else "", deque())
        while window and window[0] <= now - rate.period:
            window.popleft()
        stats = self.stats.apps[app.app.app_key]
        if len(window) >= rate.calls:
            self.stats.rate_limited += 1
            stats.rate_limited += 1
            wait = math.ceil(window[0] + rate.period - now)
            return formats.rate_limited(protocol, max(1, wait))
        limit = app.app.usage_limit
        if limit is not None and app.admitted >= limit:
            return formats.no_usage_left(protocol)
        window.append(now)
        app.admitted += 1
        self.stats.arrivals.append(now)
        stats.admitted(api, now)
        return self._faults.decide()

    async def _misbehave(self, protocol: ProtocolName, decision: Decision) -> Answer | _Drop | None:
        """Apply an injected fault: the answer replacing the real one, or ``None``."""
        if decision.delay > 0:
            self.stats.faults[SLOW] += 1
            await asyncio.sleep(decision.delay)
        if decision.fault is None:
            return None
        self.stats.faults[decision.fault.value] += 1
        if decision.fault is Fault.SERVER_ERROR:
            return formats.server_error(protocol, decision.status)
        if decision.fault is Fault.MALFORMED:
            return formats.truncated(protocol)
        if decision.fault is Fault.DROP:
            return DROP
        if decision.fault is Fault.BUSY:
            return formats.busy(protocol)
        return formats.rate_limited(protocol, 1)

    async def _inspect(self, image_base64: str) -> _Upload:
        """Decode, check the image rules and rank against the current catalogue (off the
        loop)."""
        try:
            data = base64.b64decode(image_base64, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidImage("image is not valid base64") from None
        catalogue = await self._current_catalogue()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._rank, data, catalogue)

    def _rank(self, data: bytes, catalogue: Catalogue) -> _Upload:
        config = self.config
        if len(data) > config.max_image_bytes:
            raise InvalidImage(f"image is {len(data)} bytes, over {config.max_image_bytes}")
        # Whatever breaks decoding is the client's invalid image, never a gateway failure.
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(io.BytesIO(data)) as img:
                    mode, size, info = img.mode, img.size, dict(img.info)
        except Exception as exc:
            raise InvalidImage(f"image is not decodable: {type(exc).__name__}") from None
        if mode in ALPHA_MODES or (mode == "P" and "transparency" in info):
            raise InvalidImage(f"image has an alpha channel (mode {mode})")
        if max(size) > config.max_side:
            raise InvalidImage(f"image is {size[0]}x{size[1]}, long side over {config.max_side}")
        try:
            ranking = tuple(catalogue.search(data))
        except Exception as exc:
            raise InvalidImage(f"image is not decodable: {type(exc).__name__}") from None
        return _Upload(hashlib.sha256(data).hexdigest(), ranking)


class Sandbox:
    """The sandbox gateway, served on ``config.host:config.port`` while the context is open.

    Use ``async with Sandbox(config) as sandbox:`` and point a client at ``sandbox.url``.

    Args:
        config: the behaviour.
        catalogue: an already loaded catalogue, to share one between sandboxes; by default
            ``config.catalogue_dir`` is loaded on entry.
    """

    def __init__(
        self, config: SandboxConfig = DEFAULT_CONFIG, *, catalogue: Catalogue | None = None
    ) -> None:
        self.config = config
        self._catalogue = catalogue
        self._gateway: Gateway | None = None
        self._runner: web.AppRunner | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._url: str | None = None

    @property
    def url(self) -> str:
        """The base URL, such as ``http://127.0.0.1:54321``."""
        if self._url is None:
            raise RuntimeError("the sandbox is not running")
        return self._url

    def stats(self) -> dict[str, Any]:
        """The same JSON as ``GET /__sandbox__/stats``."""
        return self._running().stats.to_json()

    def reset_stats(self) -> None:
        """Zero the stats (tokens, uploads, rate window and usage are kept)."""
        self._running().stats.reset()

    def _running(self) -> Gateway:
        if self._gateway is None:
            raise RuntimeError("the sandbox is not running")
        return self._gateway

    async def __aenter__(self) -> Sandbox:
        catalogue = self._catalogue
        if catalogue is None:
            catalogue = await asyncio.to_thread(Catalogue.load, self.config.catalogue_dir)
        # One worker: searches queue up like on a busy gateway, and the loop stays free.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sandbox-search")
        gateway = Gateway(self.config, catalogue, self._executor)
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_route("*", OPENAPI_PREFIX + "{tail:.*}", gateway.handle)
        app.router.add_get("/__sandbox__/stats", gateway.handle_stats)
        app.router.add_post("/__sandbox__/reset", gateway.handle_reset)
        app.router.add_post("/__sandbox__/reload", gateway.handle_reload)
        app.router.add_get(images.IMAGE_ROUTE, gateway.handle_image)
        # No access log: seed requests carry the access token in the query string.
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.config.host, self.config.port).start()
        except BaseException:
            await runner.cleanup()
            self._executor.shutdown(wait=False)
            raise
        host, port = runner.addresses[0][:2]
        self._url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        self._runner, self._gateway = runner, gateway
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        self._runner = self._gateway = self._executor = None
        self._url = None


# --- parameter parsing ----------------------------------------------------------------------


def _origin(request: web.Request) -> str:
    """``scheme://host:port`` as the client called it: its ``Host`` header, else the address
    the connection reached."""
    host = request.headers.get(hdrs.HOST)
    if not host:
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        address, port = sockname[:2] if sockname else ("127.0.0.1", 80)
        host = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
    return f"{request.scheme}://{host}"


async def _params(request: web.Request) -> dict[str, str]:
    """Query string and form body merged (the body wins), text values only."""
    params = {k: v for k, v in request.query.items()}
    if request.body_exists:
        form = await request.post()
        params.update({k: v for k, v in form.items() if isinstance(v, str)})
    return params


def _json_object(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _int_in(value: object, name: str, minimum: int) -> int:
    try:
        number = int(str(value))
    except ValueError:
        raise ValueError(f"{name} {value!r} is not an integer") from None
    if number < minimum:
        raise ValueError(f"{name} {number} is below {minimum}")
    return number


def _price(value: object, name: str) -> Decimal | None:
    if value is None or value == "":
        return None
    try:
        price = Decimal(str(value))
    except InvalidOperation:
        raise ValueError(f"{name} {value!r} is not a price") from None
    if not price.is_finite() or price < 0:
        raise ValueError(f"{name} {value!r} is not a price")
    return price


def _within(match: Match, low: Decimal | None, high: Decimal | None) -> bool:
    price = formats.lowest_price(match.product)
    return (low is None or price >= low) and (high is None or price <= high)


def _same(given: str, expected: str) -> bool:
    """Constant-time equality that also takes non-ASCII input (``compare_digest`` on ``str``
    refuses it)."""
    return hmac.compare_digest(given.encode(), expected.encode())


def _seed_invalid_argument(message: str) -> Answer:
    return formats.seed_error(200, 41, "Invalid arguments", "isv.invalid-parameter", message)
