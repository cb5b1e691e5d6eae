"""The signed gateway client: one image search over either protocol.

``ocean`` (the official 1688 gateway) spends two calls per search, an upload and then a query;
``seed`` (the TOP-style protocol of the seed document) spends one. Both sit behind
:class:`GatewayClient`, whose :meth:`~GatewayClient.search` returns the query answer verbatim.

Every HTTP attempt, retries included, first takes a slot from the shared
:class:`~engine.ratelimit.CallGate`. Rate-limit answers and transient failures are retried
with exponential back-off (honouring ``Retry-After``); an expired access token is refreshed
once; everything else is raised as the :mod:`engine.errors` class that says what to do next.
Answers are mapped onto that hierarchy by the pure functions :func:`classify_ocean` and
:func:`classify_seed`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from email.utils import parsedate_to_datetime
from typing import Any, Literal
from urllib.parse import urlsplit

import aiohttp
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from engine.credentials import Credentials, TokenStore
from engine.errors import (
    RETRYABLE,
    FatalGatewayError,
    GatewayError,
    ImageRejected,
    RateLimited,
    TokenExpired,
    TransientError,
    redact,
)
from engine.ratelimit import CallGate
from engine.signing import (
    OCEAN_SIGNATURE_PARAM,
    SEED_SIGNATURE_PARAM,
    ocean_signature,
    ocean_timestamp,
    seed_signature,
    seed_timestamp,
)

log = logging.getLogger(__name__)

ProtocolName = Literal["ocean", "seed"]

OCEAN_NAMESPACE = "com.alibaba.fenxiao.crossborder"
OCEAN_UPLOAD = "product.image.upload"
OCEAN_QUERY = "product.search.imageQuery"
SEED_API = "alibaba.image.search.item"
SEED_PATH = "param2/1/alibaba.image.search.item/2.0"
TOKEN_API = "system.oauth2.getToken"
TOKEN_PATH = "http/1/system.oauth2/getToken"

TOKEN_FIX = (
    "the access token expired and could not be refreshed: set IMG1688_ACCESS_TOKEN / "
    "IMG1688_REFRESH_TOKEN to tokens from a fresh authorisation of the app in the 1688 console"
)
SIGNATURE_FIX = "check IMG1688_APP_SECRET matches the app key; `img1688 sign` shows what we sign"
APP_KEY_FIX = "check IMG1688_APP_KEY: the gateway does not know this app key"
IP_FIX = "add this machine's public IP to the app's IP whitelist in the 1688 console"
USAGE_FIX = "the app's API quota is used up; wait for it to reset or buy more"
CLOCK_FIX = "sync this machine's clock (NTP): the gateway allows only a few minutes of skew"
PARAM_FIX = "the request was malformed: check page_size (1..50) and the filters, else report a bug"


def _acl_fix(api: str) -> str:
    return f"apply for permission to {api} in the 1688 console"


def _unsupported_fix(api: str) -> str:
    return f"the gateway does not offer {api}: check the protocol and the base URL"


def _unknown_fix(status: int) -> str:
    return (
        f"the gateway answered HTTP {status} with an error this client does not know: "
        "check the base URL, and quote the request_id to 1688 support"
    )


@dataclass(frozen=True)
class SearchFilters:
    """What to ask the gateway for, besides the image.

    ``ocean`` has no minimum-order or freight filter: those are applied when cleaning.
    """

    price_min: Decimal | None = None
    price_max: Decimal | None = None
    min_order_min: int | None = None
    """seed: sent as ``min_order_quantity``; ocean: not sent."""
    freight: Literal["all", "free", "paid"] = "all"
    """seed: sent as ``freight_type`` unless ``"all"``; ocean: not sent."""
    page_size: int = 20
    """Offers per answer, 1..50."""

    def __post_init__(self) -> None:
        if isinstance(self.page_size, bool) or not isinstance(self.page_size, int):
            raise ValueError(f"page_size must be an integer, not {self.page_size!r}")
        if not 1 <= self.page_size <= 50:
            raise ValueError(f"page_size must be between 1 and 50, not {self.page_size}")
        for name in ("price_min", "price_max"):
            value = getattr(self, name)
            if value is not None and (
                not isinstance(value, Decimal) or not value.is_finite() or value < 0
            ):
                raise ValueError(f"{name} must be a non-negative finite Decimal, not {value!r}")
        if (
            self.price_min is not None
            and self.price_max is not None
            and self.price_min > self.price_max
        ):
            raise ValueError(f"price_min {self.price_min} is above price_max {self.price_max}")
        if self.min_order_min is not None and (
            isinstance(self.min_order_min, bool)
            or not isinstance(self.min_order_min, int)
            or self.min_order_min < 0
        ):
            raise ValueError(
                f"min_order_min must be a non-negative integer, not {self.min_order_min!r}"
            )
        if self.freight not in ("all", "free", "paid"):
            raise ValueError(f"freight must be all, free or paid, not {self.freight!r}")


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try each gateway call."""

    attempts: int = 5
    """HTTP attempts per call, the first one included."""
    base_delay: float = 1.0
    """First back-off, in seconds; doubles per retry, with jitter."""
    max_delay: float = 60.0
    """Longest back-off, unless the gateway's ``Retry-After`` asks for more."""
    timeout: float = 60.0
    """Seconds allowed per HTTP attempt."""

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")
        if self.base_delay < 0 or self.max_delay < self.base_delay or self.timeout <= 0:
            raise ValueError("need 0 <= base_delay <= max_delay and a positive timeout")


@dataclass(frozen=True)
class SearchResult:
    """One answered search."""

    protocol: ProtocolName
    raw_body: str
    """The query answer body, verbatim (decoded text)."""
    http_calls: int
    """Gated HTTP attempts this search spent: upload, query and retries (not token refreshes)."""
    image_id: str | None
    """The ``ocean`` upload id; ``None`` for ``seed``."""
    searched_at: datetime
    """UTC, when the answer arrived."""


# --- request building (pure) ------------------------------------------------------------------


def _decimal_text(value: Decimal) -> str:
    # format(..., "f") never yields exponent notation such as "1E+1".
    return format(value, "f")


def ocean_path(api: str, app_key: str) -> str:
    """The signed url path of an ``ocean`` API of the image-search namespace."""
    return f"param2/1/{OCEAN_NAMESPACE}/{api}/{app_key}"


def ocean_upload_params(jpeg: bytes) -> dict[str, str]:
    """Business parameters of ``product.image.upload``."""
    image = base64.b64encode(jpeg).decode("ascii")
    return {"uploadImageParam": json.dumps({"imageBase64": image}, separators=(",", ":"))}


def ocean_query_params(image_id: str, filters: SearchFilters) -> dict[str, str]:
    """Business parameters of ``product.search.imageQuery``."""
    query: dict[str, Any] = {
        "imageId": image_id,
        "beginPage": 1,
        "pageSize": filters.page_size,
        "country": "en",
    }
    if filters.price_min is not None:
        query["priceStart"] = _decimal_text(filters.price_min)
    if filters.price_max is not None:
        query["priceEnd"] = _decimal_text(filters.price_max)
    return {"offerQueryParam": json.dumps(query, separators=(",", ":"))}


def seed_search_params(jpeg: bytes, filters: SearchFilters) -> dict[str, str]:
    """Business parameters of the ``seed`` search. Every filter that is set is sent, zero too."""
    params = {
        "image": base64.b64encode(jpeg).decode("ascii"),
        "page_size": str(filters.page_size),
    }
    if filters.price_min is not None:
        params["price_start"] = _decimal_text(filters.price_min)
    if filters.price_max is not None:
        params["price_end"] = _decimal_text(filters.price_max)
    if filters.min_order_min is not None:
        params["min_order_quantity"] = str(filters.min_order_min)
    if filters.freight != "all":
        params["freight_type"] = filters.freight
    return params


def sign_ocean(
    url_path: str,
    business: Mapping[str, str],
    *,
    access_token: str,
    secret: str,
    now: datetime | None = None,
) -> dict[str, str]:
    """The full ``ocean`` form: ``business`` plus token, timestamp and ``_aop_signature``."""
    params = dict(business)
    params["access_token"] = access_token
    params["_aop_timestamp"] = ocean_timestamp(now)
    params[OCEAN_SIGNATURE_PARAM] = ocean_signature(url_path, params, secret)
    return params


def sign_seed(
    business: Mapping[str, str],
    *,
    app_key: str,
    access_token: str,
    secret: str,
    now: datetime | None = None,
) -> dict[str, str]:
    """The full ``seed`` form: system parameters, ``business`` and ``sign`` over all of them."""
    params = {
        "app_key": app_key,
        "method": SEED_API,
        "format": "json",
        "v": "2.0",
        "timestamp": seed_timestamp(now),
        "access_token": access_token,
        **business,
    }
    params[SEED_SIGNATURE_PARAM] = seed_signature(params, secret)
    return params


# --- answer classification (pure) -------------------------------------------------------------


def _header(headers: Mapping[str, str] | None, name: str) -> str | None:
    if not headers:
        return None
    value = headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    return next((v for k, v in headers.items() if k.lower() == lowered), None)


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta seconds or an HTTP date)."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            moment = parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        seconds = (moment - (now or datetime.now(UTC))).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


def _json(body: str) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None


def _text(value: Any) -> str:
    return "" if value is None else str(value)


class _Redactor:
    """Builds errors whose every text has been scrubbed of the given secrets."""

    def __init__(self, secrets: Iterable[str | None], status: int, request_id: Any) -> None:
        self.secrets = tuple(secrets)
        self.status = status
        self.request_id = redact(_text(request_id), self.secrets) or None

    def __call__(self, cls: type[GatewayError], code: Any, message: Any, **extra: Any) -> Any:
        return cls(
            redact(_text(code), self.secrets),
            redact(_text(message), self.secrets),
            status=self.status,
            request_id=self.request_id,
            **extra,
        )


def _malformed(status: int, body: str, secrets: Iterable[str | None]) -> TransientError:
    snippet = redact(body[:80], tuple(secrets))
    return TransientError(
        "malformed_body",
        f"the answer is not the expected JSON ({len(body)} chars: {snippet!r})",
        status=status,
    )


def _http_failure(
    status: int, make: _Redactor, code: str, message: str, retry_after: float | None
) -> GatewayError | None:
    """Status-only verdicts, for answers that carry no known error code."""
    if status == 429:
        return make(
            RateLimited, code or "http_429", message or "too many requests", retry_after=retry_after
        )
    if status >= 500:
        return make(TransientError, code or f"http_{status}", message or "server error")
    if status == 401:
        return make(TokenExpired, code or "401", message or "Request need user authorized")
    return None


def _unexplained(status: int, make: _Redactor, retry_after: float | None) -> GatewayError:
    """A non-200 answer without an error body of the protocol (a proxy's page, a bare 5xx)."""
    failure = _http_failure(status, make, "", "", retry_after)
    return failure or make(
        FatalGatewayError, f"http_{status}", "unexpected answer", fix=_unknown_fix(status)
    )


OCEAN_RATE_CODES = frozenset({"gw.QosAppFrequencyLimit", "gw.QosApiFrequencyLimit"})


def _ocean_fatal_fix(code: str, api: str) -> str | None:
    return {
        "gw.SignatureInvalid": SIGNATURE_FIX,
        "gw.SignatureMissing": SIGNATURE_FIX,
        "gw.AppKeyNotFound": APP_KEY_FIX,
        "gw.APIACLDecline": _acl_fix(api),
        "gw.APIUnsupported": _unsupported_fix(api),
        "gw.NoUsageLeftError": USAGE_FIX,
        "gw.IpNotInWhiteList": IP_FIX,
        "gw.TimestampInvalid": CLOCK_FIX,
        "gw.ParamMissing": PARAM_FIX,
    }.get(code)


def classify_ocean(
    status: int,
    body: str,
    headers: Mapping[str, str] | None,
    *,
    api: str = "this API",
    secrets: Iterable[str | None] = (),
) -> GatewayError | None:
    """Map an ``ocean`` answer onto :mod:`engine.errors`; ``None`` means success.

    Success is HTTP 200 with ``result.success`` true; the caller still checks the payload's
    shape for its API. ``api`` names the API in fix sentences; ``secrets`` are scrubbed from
    every text of the error.
    """
    secrets = tuple(secrets)
    data = _json(body)
    request_id = data.get("request_id") if isinstance(data, dict) else None
    make = _Redactor(secrets, status, request_id)
    retry_after = parse_retry_after(_header(headers, "Retry-After"))
    if isinstance(data, dict) and "error_code" in data:
        code = _text(data.get("error_code"))
        message = _text(data.get("error_message"))
        if code in OCEAN_RATE_CODES or status == 429:
            return make(RateLimited, code, message, retry_after=retry_after)
        if code == "401":
            return make(TokenExpired, code, message)
        fix = _ocean_fatal_fix(code, api)
        if fix is not None:
            return make(FatalGatewayError, code, message, fix=fix)
        failure = _http_failure(status, make, code, message, retry_after)
        return failure or make(FatalGatewayError, code, message, fix=_unknown_fix(status))
    if status != 200:
        return _unexplained(status, make, retry_after)
    result = data.get("result") if isinstance(data, dict) else None
    if not isinstance(result, dict):
        return _malformed(status, body, secrets)
    success = result.get("success")
    if success in (True, "true"):
        return None
    if success in (False, "false"):
        return make(
            ImageRejected,
            result.get("code") or "business_failure",
            result.get("message") or "the gateway refused the request",
        )
    return _malformed(status, body, secrets)


SEED_FATAL_FIX: dict[int, str] = {
    24: SIGNATURE_FIX,  # Missing signature
    25: SIGNATURE_FIX,  # Invalid signature
    28: APP_KEY_FIX,  # Missing app key
    29: APP_KEY_FIX,  # Invalid app Key
    31: CLOCK_FIX,  # Invalid timestamp
    41: PARAM_FIX,  # Invalid arguments
}


def _int_code(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def classify_seed(
    status: int,
    body: str,
    headers: Mapping[str, str] | None,
    *,
    api: str = SEED_API,
    secrets: Iterable[str | None] = (),
) -> GatewayError | None:
    """Map a ``seed`` answer onto :mod:`engine.errors`; ``None`` means success.

    Success is HTTP 200 with an ``image_search_item_response`` object. Error codes are TOP's
    (``error_response.code``, refined by ``sub_code``).
    """
    secrets = tuple(secrets)
    data = _json(body)
    retry_after = parse_retry_after(_header(headers, "Retry-After"))
    error = data.get("error_response") if isinstance(data, dict) else None
    if isinstance(error, dict):
        make = _Redactor(secrets, status, error.get("request_id"))
        number = _int_code(error.get("code"))
        sub_code = _text(error.get("sub_code"))
        message = _text(error.get("msg"))
        if error.get("sub_msg"):
            message = f"{message}: {error['sub_msg']}" if message else _text(error["sub_msg"])
        code = sub_code or _text(error.get("code"))
        if status == 429 or (number == 7 and "api-access-count" not in sub_code):
            return make(RateLimited, code, message, retry_after=retry_after)
        if number == 7:
            return make(FatalGatewayError, code, message, fix=USAGE_FIX)
        if number in (26, 27):
            return make(TokenExpired, code, message)
        if status == 403 or "ip-not-in-whitelist" in sub_code:
            return make(FatalGatewayError, code, message, fix=IP_FIX)
        if number == 11:
            return make(FatalGatewayError, code, message, fix=_acl_fix(api))
        if number == 22:
            return make(FatalGatewayError, code, message, fix=_unsupported_fix(api))
        if number in SEED_FATAL_FIX:
            return make(FatalGatewayError, code, message, fix=SEED_FATAL_FIX[number])
        if sub_code.startswith("isv."):
            # TOP: isv.* sub-codes are the caller's business errors, isp.* the platform's.
            return make(ImageRejected, code, message)
        failure = _http_failure(status, make, code, message, retry_after)
        if failure is not None:
            return failure
        if number == 15 or sub_code.startswith("isp."):
            return make(TransientError, code, message)
        return make(FatalGatewayError, code, message, fix=_unknown_fix(status))
    if status != 200:
        return _unexplained(status, _Redactor(secrets, status, None), retry_after)
    answer = data.get("image_search_item_response") if isinstance(data, dict) else None
    return None if isinstance(answer, dict) else _malformed(status, body, secrets)


# --- the client --------------------------------------------------------------------------------


@dataclass
class _Tally:
    """Per-search bookkeeping shared by the attempts of its calls."""

    calls: int = 0
    token: str | None = None
    """The access token the latest attempt sent."""


@dataclass(frozen=True)
class _Answer:
    status: int
    body: str
    headers: Mapping[str, str]


Builder = Callable[[str], tuple[str, dict[str, str]]]
"""access token -> (url, signed form)."""

Check = Callable[[_Answer, tuple[str, ...]], None]
"""Raises ``malformed_body`` when a successful answer lacks what its API must carry."""


class GatewayClient:
    """Image search against one gateway, with signing, retries and token refresh.

    Use as ``async with GatewayClient(...) as client: await client.search(jpeg, filters)``.
    Concurrent searches may share one client; they share its gate, session and token.

    Args:
        base_url: ``https://gw.open.1688.com`` or a sandbox such as ``http://127.0.0.1:PORT``.
        protocol: ``"ocean"`` or ``"seed"``.
        credentials: app key, secret and tokens.
        gate: admits every HTTP attempt; shared with every other client of the same gateway.
        retry: attempts, back-off and timeout per call.
        token_store: where refreshed tokens are kept and read back; a valid stored token is
            preferred to ``credentials.access_token``.
        session: an aiohttp session to use (not closed by the client); by default the client
            opens its own on ``__aenter__`` and closes it on ``__aexit__``.
    """

    def __init__(
        self,
        *,
        base_url: str,
        protocol: ProtocolName,
        credentials: Credentials,
        gate: CallGate,
        retry: RetryPolicy = RetryPolicy(),
        token_store: TokenStore | None = None,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"base_url {base_url!r} is not an http(s) URL")
        if protocol not in ("ocean", "seed"):
            raise ValueError(f"protocol must be ocean or seed, not {protocol!r}")
        self.base_url = base_url.rstrip("/")
        self.protocol: ProtocolName = protocol
        self._credentials = credentials
        self._gate = gate
        self._retry = retry
        self._store = token_store
        self._session = session
        self._owns_session = False
        self._refresh_lock = asyncio.Lock()
        # Stateless, so one serves every call; the AsyncRetrying objects are per call.
        self._backoff = wait_exponential_jitter(
            multiplier=retry.base_delay,
            min=retry.base_delay,
            max=retry.max_delay,
            jitter=retry.base_delay,
        )
        self._access_token = credentials.access_token
        self._refresh_token = credentials.refresh_token
        # Tokens this client stopped using stay secret: a gateway might still echo one.
        self._replaced: list[str] = []
        stored = token_store.load(credentials.app_key) if token_store else None
        if stored is not None:
            self._replaced.append(stored.access_token)
            if stored.valid():
                self._access_token = stored.access_token
            self._refresh_token = stored.refresh_token or self._refresh_token

    def __repr__(self) -> str:
        return f"GatewayClient(base_url={self.base_url!r}, protocol={self.protocol!r})"

    @property
    def calls_per_search(self) -> int:
        """HTTP calls one search spends when nothing is retried: upload + query, or one."""
        return 2 if self.protocol == "ocean" else 1

    async def __aenter__(self) -> GatewayClient:
        if self._session is None:
            self._session = aiohttp.ClientSession()
            self._owns_session = True
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None
            self._owns_session = False

    def _secrets(self) -> tuple[str, ...]:
        current = (self._access_token, self._refresh_token, *self._replaced)
        return self._credentials.secrets() + tuple(s for s in current if s)

    # -- public operations

    async def search(self, jpeg: bytes, filters: SearchFilters) -> SearchResult:
        """Search the catalogue for ``jpeg``; return the query answer verbatim.

        Raises:
            RateLimited, TransientError: still failing after ``retry.attempts`` attempts.
            FatalGatewayError: the job cannot go on (see its ``fix``).
            ImageRejected: the gateway refused this image.
            BudgetExhausted: the gate's call budget is spent.
        """
        tally = _Tally()
        if self.protocol == "seed":
            answer = await self._call(SEED_API, self._seed_builder(jpeg, filters), tally)
            image_id = None
        else:
            upload_form = ocean_upload_params(jpeg)
            upload = await self._call(
                OCEAN_UPLOAD, self._ocean_builder(OCEAN_UPLOAD, upload_form), tally, _check_upload
            )
            image_id = str(_ocean_payload(upload.body))
            query = ocean_query_params(image_id, filters)
            answer = await self._call(
                OCEAN_QUERY, self._ocean_builder(OCEAN_QUERY, query), tally, _check_query
            )
        return SearchResult(
            protocol=self.protocol,
            raw_body=answer.body,
            http_calls=tally.calls,
            image_id=image_id,
            searched_at=datetime.now(UTC),
        )

    async def refresh_token(self) -> None:
        """Exchange the refresh token for a new access token now.

        Raises:
            FatalGatewayError: there is no refresh token, or the gateway refused it.
        """
        await self._refresh(self._access_token, cause=None)

    # -- request builders

    def _ocean_builder(self, api: str, business: dict[str, str]) -> Builder:
        path = ocean_path(api, self._credentials.app_key)
        url = f"{self.base_url}/openapi/{path}"

        def build(token: str) -> tuple[str, dict[str, str]]:
            return url, sign_ocean(
                path, business, access_token=token, secret=self._credentials.app_secret
            )

        return build

    def _seed_builder(self, jpeg: bytes, filters: SearchFilters) -> Builder:
        business = seed_search_params(jpeg, filters)
        url = f"{self.base_url}/openapi/{SEED_PATH}"

        def build(token: str) -> tuple[str, dict[str, str]]:
            return url, sign_seed(
                business,
                app_key=self._credentials.app_key,
                access_token=token,
                secret=self._credentials.app_secret,
            )

        return build

    # -- calls, retries, token refresh

    async def _call(
        self, api: str, build: Builder, tally: _Tally, check: Check | None = None
    ) -> _Answer:
        """One API call: retried on RETRYABLE, and once more after a token refresh."""
        if self._access_token is None:
            await self._refresh(None, cause=None)
        try:
            return await self._retrying(api, build, tally, check)
        except TokenExpired as expired:
            await self._refresh(tally.token, cause=expired)
        try:
            return await self._retrying(api, build, tally, check)
        except TokenExpired as again:
            raise self._token_fatal(again) from None

    async def _retrying(
        self, api: str, build: Builder, tally: _Tally, check: Check | None
    ) -> _Answer:
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(RETRYABLE),
            stop=stop_after_attempt(self._retry.attempts),
            wait=self._wait,
            before_sleep=_log_retry,
            reraise=True,
        )
        return await retrying(self._attempt, api, build, tally, check)

    def _wait(self, state: RetryCallState) -> float:
        backoff = self._backoff(state)
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, RateLimited) and error.retry_after is not None:
            return max(backoff, error.retry_after)
        return backoff

    async def _attempt(
        self, api: str, build: Builder, tally: _Tally, check: Check | None
    ) -> _Answer:
        await self._gate.acquire()
        token = self._access_token
        assert token is not None  # _call refreshes first when there is none
        url, form = build(token)
        tally.calls += 1
        tally.token = token
        answer = await self._post(api, url, form)
        classify = classify_seed if self.protocol == "seed" else classify_ocean
        error = classify(
            answer.status, answer.body, answer.headers, api=api, secrets=self._secrets()
        )
        if isinstance(error, RateLimited):
            self._gate.pause(error.retry_after or self._gate.spacing)
        if error is not None:
            raise error
        if check is not None:
            check(answer, self._secrets())
        return answer

    async def _post(self, api: str, url: str, form: Mapping[str, str]) -> _Answer:
        """POST ``form``; transport failures become :class:`TransientError`."""
        if self._session is None:
            raise RuntimeError("use the client as `async with GatewayClient(...) as client`")
        started = time.monotonic()
        timeout = aiohttp.ClientTimeout(total=self._retry.timeout)
        try:
            body = form_urlencode(form)
            headers = {"Content-Type": "application/x-www-form-urlencoded"}
            async with self._session.post(
                url, data=body, headers=headers, timeout=timeout
            ) as response:
                raw = await response.read()
                answer = _Answer(response.status, raw.decode("utf-8"), response.headers)
        except (TimeoutError, aiohttp.ServerTimeoutError):
            log.debug("%s: timeout after %.3fs", api, time.monotonic() - started)
            raise TransientError("timeout", f"no answer within {self._retry.timeout:g}s") from None
        except (aiohttp.ClientError, ConnectionError) as exc:
            # ClientConnectionError, ServerDisconnectedError, ClientPayloadError and their kin.
            log.debug("%s: %s after %.3fs", api, type(exc).__name__, time.monotonic() - started)
            raise TransientError("connection", f"connection failed: {type(exc).__name__}") from None
        except UnicodeDecodeError:
            raise TransientError("malformed_body", "the answer is not UTF-8 text") from None
        if log.isEnabledFor(logging.DEBUG):  # parsing a large body only to log its code
            elapsed = time.monotonic() - started
            code = _answer_code(answer.body)
            log.debug("%s: HTTP %d, %s, %.3fs", api, answer.status, code, elapsed)
        return answer

    async def _refresh(self, used: str | None, cause: TokenExpired | None) -> None:
        """Replace the access token ``used``, unless another task already has."""
        async with self._refresh_lock:
            if self._access_token != used:
                return
            if not self._refresh_token:
                if cause is not None:
                    raise self._token_fatal(cause) from None
                raise FatalGatewayError(
                    "no_token",
                    "no access token and no refresh token",
                    fix=TOKEN_FIX,
                )
            retrying = AsyncRetrying(
                retry=retry_if_exception_type(TransientError),
                stop=stop_after_attempt(self._retry.attempts),
                wait=self._wait,
                reraise=True,
            )
            try:
                token, refresh, expires_at = await retrying(self._get_token)
            except FatalGatewayError:
                raise  # already says what to fix (IP whitelist, app key ...)
            except GatewayError as failed:
                raise self._token_fatal(failed) from None
            self._replaced.extend(t for t in (self._access_token, self._refresh_token) if t)
            self._access_token = token
            self._refresh_token = refresh
            log.info("refreshed the access token of app %s", self._credentials.app_key)
            if self._store is not None:
                self._store.save(self._credentials.app_key, token, refresh, expires_at)

    async def _get_token(self) -> tuple[str, str, float | None]:
        key = self._credentials.app_key
        url = f"{self.base_url}/openapi/{TOKEN_PATH}/{key}"
        refresh = self._refresh_token
        assert refresh is not None
        form = {
            "grant_type": "refresh_token",
            "client_id": key,
            "client_secret": self._credentials.app_secret,
            "refresh_token": refresh,
        }
        answer = await self._post(TOKEN_API, url, form)
        data = _json(answer.body)
        secrets = self._secrets()
        token = data.get("access_token") if isinstance(data, dict) else None
        if answer.status == 200 and isinstance(token, str) and token:
            lifetime = _int_code(data.get("expires_in"))
            expires_at = time.time() + lifetime if lifetime is not None else None
            rotated = data.get("refresh_token")
            return token, rotated if isinstance(rotated, str) and rotated else refresh, expires_at
        if isinstance(data, dict) and "error" in data:
            # OAuth's own shape: invalid_grant, invalid_client ...
            raise GatewayError(
                redact(_text(data["error"]), secrets),
                redact(_text(data.get("error_description")), secrets),
                status=answer.status,
            )
        error = classify_ocean(
            answer.status, answer.body, answer.headers, api=TOKEN_API, secrets=secrets
        )
        raise error or _malformed(answer.status, answer.body, secrets)

    def _token_fatal(self, error: GatewayError) -> FatalGatewayError:
        return FatalGatewayError(
            error.code,
            error.message,
            fix=TOKEN_FIX,
            status=error.status,
            request_id=error.request_id,
        )


_ALWAYS_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~")
_FORM_ESCAPES = {
    byte: "+" if byte == 0x20 else f"%{byte:02X}" for byte in range(256) if byte not in _ALWAYS_SAFE
}


def form_urlencode(form: Mapping[str, str]) -> bytes:
    """``application/x-www-form-urlencoded`` body, byte for byte what ``urlencode`` gives.

    ``urlencode`` quotes one character at a time in Python: about 4 ms for an 800 px image's
    base64 on the event loop, again on every retry. ``str.translate`` over the UTF-8 bytes
    (read as Latin-1, one character per byte) does the same in C.
    """
    return "&".join(f"{_form_quote(k)}={_form_quote(v)}" for k, v in form.items()).encode("ascii")


def _form_quote(text: str) -> str:
    return text.encode("utf-8").decode("latin-1").translate(_FORM_ESCAPES)


def _log_retry(state: RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome else None
    wait = state.next_action.sleep if state.next_action else 0.0
    log.debug("attempt %d failed (%s); retrying in %.2fs", state.attempt_number, error, wait)


def _answer_code(body: str) -> str:
    """The error code of an answer, for the debug log (never a parameter)."""
    data = _json(body)
    if not isinstance(data, dict):
        return "unparsed"
    if "error_code" in data:
        return _text(data["error_code"])
    error = data.get("error_response")
    if isinstance(error, dict):
        return _text(error.get("sub_code") or error.get("code"))
    result = data.get("result")
    if isinstance(result, dict):
        return _text(result.get("code"))
    return "ok"


def _ocean_payload(body: str) -> Any:
    """``result.result`` of an ``ocean`` answer that :func:`classify_ocean` accepted."""
    return json.loads(body)["result"].get("result")


def _check_upload(answer: _Answer, secrets: tuple[str, ...]) -> None:
    image_id = _ocean_payload(answer.body)
    if isinstance(image_id, bool) or not isinstance(image_id, str | int) or image_id == "":
        raise _malformed(answer.status, answer.body, secrets)


def _check_query(answer: _Answer, secrets: tuple[str, ...]) -> None:
    page = _ocean_payload(answer.body)
    if not isinstance(page, dict) or not isinstance(page.get("data", []), list):
        raise _malformed(answer.status, answer.body, secrets)
