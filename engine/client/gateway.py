"""The gateway client: one image search over either protocol, with retries and token refresh.

``ocean`` spends two calls per search, an upload and then a query; ``seed`` spends one. Both sit
behind :class:`GatewayClient`, whose :meth:`~GatewayClient.search` returns the query answer
verbatim.

A client speaks for one app. Every search first reserves the calls it needs from the run's
:class:`~engine.ratelimit.CallBudget`, and every HTTP attempt, retries included, then takes a
slot of the app's gate for its API (:class:`~engine.ratelimit.AppGates`), drawn from that
reservation. Rate-limit answers and transient failures are retried with exponential back-off
(honouring ``Retry-After``); an expired access token is refreshed once; everything else is
raised as the :mod:`engine.errors` class that says what to do next, as
:mod:`engine.client.classify` decides.

Transport failures are told apart from aiohttp's exception types: a DNS, connect or TLS
failure is :class:`~engine.errors.Unreachable`; a timeout or a dropped connection is a plain
:class:`~engine.errors.TransientError`. As long as the gateway has never answered since the job
started, a call that still cannot reach it after its retries raises
:class:`~engine.errors.GatewayUnreachable`, which stops the job at once.

Whether an attempt counts is decided by what it provably did, not by how it failed: sessions
from :func:`client_session` trace each request, and an attempt that ended (failed, or was
cancelled) before it had a connection sent nothing, so its slot is refunded to its gate and the
budget. Anything later counts, as the gateway may have seen it.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from engine.client.classify import (
    _int_code,
    _json,
    _malformed,
    _text,
    classify_ocean,
    classify_seed,
)
from engine.client.fixes import UNREACHABLE_FIX
from engine.client.requests import (
    SearchFilters,
    form_urlencode,
    ocean_query_params,
    ocean_upload_params,
    seed_search_params,
    sign_ocean,
    sign_seed,
)
from engine.client.tokens import AppTokens, token_fatal
from engine.credentials import Credentials, TokenStore
from engine.errors import (
    RETRYABLE,
    GatewayError,
    GatewayUnreachable,
    RateLimited,
    TokenExpired,
    TransientError,
    Unreachable,
    redact,
)
from engine.protocol import (
    OCEAN_QUERY,
    OCEAN_UPLOAD,
    OPENAPI_PREFIX,
    PROTOCOLS,
    SEED_API,
    SEED_PATH,
    TOKEN_API,
    TOKEN_PATH,
    ProtocolName,
    ocean_path,
)
from engine.ratelimit import AppGates, CallGate, Reservation

log = logging.getLogger(__name__)


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


@dataclass
class _Probe:
    """What tracing saw of one HTTP attempt (see :func:`client_session`)."""

    traced: bool = False
    """The session traces requests: without that, nothing is known and the attempt counts."""
    connected: bool = False
    """A connection was made or reused: from then on the request may reach the gateway."""

    @property
    def never_sent(self) -> bool:
        """Provably nothing of the request left this machine."""
        return self.traced and not self.connected


async def _request_started(
    session: aiohttp.ClientSession, context: SimpleNamespace, params: object
) -> None:
    if isinstance(context.trace_request_ctx, _Probe):
        context.trace_request_ctx.traced = True


async def _connected(
    session: aiohttp.ClientSession, context: SimpleNamespace, params: object
) -> None:
    if isinstance(context.trace_request_ctx, _Probe):
        context.trace_request_ctx.connected = True


def client_session(**options: Any) -> aiohttp.ClientSession:
    """An aiohttp session (``options`` as for ``aiohttp.ClientSession``) whose requests report
    whether they got a connection, so that an attempt that ended before it had one is known to
    have sent nothing. Clients given another session count every attempt."""
    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(_request_started)
    # Fired once the connection (TLS included) is made, or an idle one taken, and before any
    # byte of the request is written.
    trace.on_connection_create_end.append(_connected)
    trace.on_connection_reuseconn.append(_connected)
    return aiohttp.ClientSession(trace_configs=[trace], **options)


@dataclass
class Contact:
    """Whether the gateway has answered anything (any HTTP answer) since the job started; shared
    by the clients of every app of a job, which call the same endpoint from the same machine."""

    reached: bool = False
    warned: bool = False
    """A failure to reach it was logged: once is enough while the retries go on."""


@dataclass
class _Tally:
    """Per-search bookkeeping shared by the attempts of its calls."""

    reservation: Reservation
    """The search's hold on the call budget: every attempt's slot is drawn from it."""
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
    Concurrent searches may share one client; they share its gates, session and token.

    Args:
        base_url: ``https://gw.open.1688.com`` or a sandbox such as ``http://127.0.0.1:PORT``.
        protocol: ``"ocean"`` or ``"seed"``.
        credentials: app key, secret and tokens of the one app this client speaks for.
        gate: the app's gate (one window for every API), or its :class:`AppGates` (a window per
            API); admits every HTTP attempt, each search's from a reservation of
            :attr:`calls_per_search` calls of the gates' budget.
        retry: attempts, back-off and timeout per call.
        token_store: where refreshed tokens are kept and read back; a valid stored token is
            preferred to ``credentials.access_token``.
        session: an aiohttp session to use (not closed by the client), best from
            :func:`client_session`; by default the client opens its own on ``__aenter__`` and
            closes it on ``__aexit__``.
        contact: whether the gateway has answered yet, shared by the clients of one job; by
            default the client's own.
    """

    def __init__(
        self,
        *,
        base_url: str,
        protocol: ProtocolName,
        credentials: Credentials,
        gate: CallGate | AppGates,
        retry: RetryPolicy = RetryPolicy(),
        token_store: TokenStore | None = None,
        session: aiohttp.ClientSession | None = None,
        contact: Contact | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"base_url {base_url!r} is not an http(s) URL")
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be ocean or seed, not {protocol!r}")
        self.base_url = base_url.rstrip("/")
        self.protocol: ProtocolName = protocol
        self._credentials = credentials
        self._gates = gate if isinstance(gate, AppGates) else AppGates(gate)
        self._contact = contact or Contact()
        self._retry = retry
        self._session = session
        self._owns_session = False
        # Stateless, so one serves every call; the AsyncRetrying objects are per call.
        self._backoff = wait_exponential_jitter(
            multiplier=retry.base_delay,
            min=retry.base_delay,
            max=retry.max_delay,
            jitter=retry.base_delay,
        )
        self._tokens = AppTokens(credentials, token_store)

    def __repr__(self) -> str:
        return f"GatewayClient(base_url={self.base_url!r}, protocol={self.protocol!r})"

    @property
    def calls_per_search(self) -> int:
        """HTTP calls one search spends when nothing is retried: upload + query, or one."""
        return 2 if self.protocol == "ocean" else 1

    @property
    def credentials(self) -> Credentials:
        """The app this client speaks for (its ``repr`` shows no secret)."""
        return self._credentials

    @property
    def gates(self) -> AppGates:
        """The app's call gates."""
        return self._gates

    def free_at(self) -> float:
        """When this app's gate for a search's first call would admit one asked for now (see
        :meth:`CallGate.free_at <engine.ratelimit.CallGate.free_at>`)."""
        first = SEED_API if self.protocol == "seed" else OCEAN_UPLOAD
        return self._gates.for_api(first).free_at()

    async def __aenter__(self) -> GatewayClient:
        if self._session is None:
            self._session = client_session()
            self._owns_session = True
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None
            self._owns_session = False

    def _secrets(self) -> tuple[str, ...]:
        return self._tokens.secrets()

    # -- public operations

    async def search(self, jpeg: bytes, filters: SearchFilters) -> SearchResult:
        """Search the catalogue for ``jpeg``; return the query answer verbatim.

        The search first reserves :attr:`calls_per_search` calls of the gates' budget (see
        :meth:`CallBudget.reserve <engine.ratelimit.CallBudget.reserve>`) and draws every
        attempt from that reservation, so a budget never runs out between an upload and its
        query. Retries beyond the reservation draw on whatever budget is left; an attempt that
        ended before it had a connection (a DNS or connect failure, or a cancellation then) is
        refunded.

        Raises:
            BudgetExhausted: at once, before any call (and before any token refresh), when the
                budget less the calls other searches hold in reservation is below
                ``calls_per_search``; or later, when retries have spent the whole budget.
            RateLimited, TransientError: still failing after ``retry.attempts`` attempts
                (:class:`~engine.errors.Unreachable` included, once the gateway has answered).
            GatewayUnreachable: every attempt failed to reach the gateway, which has never
                answered since the job started.
            FatalGatewayError: the job (or, per its ``fix``, this app) cannot go on.
            ImageRejected: the gateway refused this image.

        Every :class:`~engine.errors.GatewayError` it raises carries in ``calls`` the attempts
        the search spent.
        """
        with self._gates.budget.reserve(self.calls_per_search) as reservation:
            tally = _Tally(reservation)
            try:
                if self.protocol == "seed":
                    answer = await self._call(SEED_API, self._seed_builder(jpeg, filters), tally)
                    image_id = None
                else:
                    upload_form = ocean_upload_params(jpeg)
                    upload_build = self._ocean_builder(OCEAN_UPLOAD, upload_form)
                    upload = await self._call(OCEAN_UPLOAD, upload_build, tally, _check_upload)
                    image_id = str(_ocean_payload(upload.body))
                    query = ocean_query_params(image_id, filters)
                    answer = await self._call(
                        OCEAN_QUERY, self._ocean_builder(OCEAN_QUERY, query), tally, _check_query
                    )
            except GatewayError as error:
                error.calls = tally.calls  # a failed search's calls are spent all the same
                raise
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
        await self._refresh(self._tokens.access, cause=None)

    # -- request builders

    def _ocean_builder(self, api: str, business: dict[str, str]) -> Builder:
        path = ocean_path(api, self._credentials.app_key)
        url = f"{self.base_url}{OPENAPI_PREFIX}{path}"

        def build(token: str) -> tuple[str, dict[str, str]]:
            return url, sign_ocean(
                path, business, access_token=token, secret=self._credentials.app_secret
            )

        return build

    def _seed_builder(self, jpeg: bytes, filters: SearchFilters) -> Builder:
        business = seed_search_params(jpeg, filters)
        url = f"{self.base_url}{OPENAPI_PREFIX}{SEED_PATH}"

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
        """One API call: retried on RETRYABLE, and once more after a token refresh; a gateway
        never reached since the job started is fatal."""
        try:
            return await self._call_refreshing(api, build, tally, check)
        except Unreachable as error:
            if self._contact.reached:
                raise  # the gateway answered before: a passing network failure
            raise GatewayUnreachable(
                error.code,
                redact(f"{self.base_url}: {error.message}", self._secrets()),
                fix=UNREACHABLE_FIX,
            ) from None

    async def _call_refreshing(
        self, api: str, build: Builder, tally: _Tally, check: Check | None
    ) -> _Answer:
        if self._tokens.access is None:
            await self._refresh(None, cause=None)
        try:
            return await self._retrying(api, build, tally, check)
        except TokenExpired as expired:
            await self._refresh(tally.token, cause=expired)
        try:
            return await self._retrying(api, build, tally, check)
        except TokenExpired as again:
            raise token_fatal(again) from None

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
        gate = self._gates.for_api(api)
        admission = await gate.acquire(tally.reservation)
        token = self._tokens.access
        assert token is not None  # _call refreshes first when there is none
        url, form = build(token)
        tally.calls += 1
        tally.token = token
        probe = _Probe()
        try:
            answer = await self._post(api, url, form, probe)
        except BaseException:  # a cancellation too: the run may stop during a DNS lookup
            if probe.never_sent:
                # No request left this machine: the gateway counted nothing, so neither do we.
                gate.refund(admission)
                tally.calls -= 1
            raise
        classify = classify_seed if self.protocol == "seed" else classify_ocean
        error = classify(
            answer.status, answer.body, answer.headers, api=api, secrets=self._secrets()
        )
        if isinstance(error, RateLimited):
            gate.pause(error.retry_after or gate.spacing)
        if error is not None:
            raise error
        if check is not None:
            check(answer, self._secrets())
        return answer

    async def _post(
        self, api: str, url: str, form: Mapping[str, str], probe: _Probe | None = None
    ) -> _Answer:
        """POST ``form``; transport failures become :class:`TransientError`, and those that
        did not reach the gateway the :class:`Unreachable` kind (see the module doc)."""
        if self._session is None:
            raise RuntimeError("use the client as `async with GatewayClient(...) as client`")
        started = time.monotonic()
        timeout = aiohttp.ClientTimeout(total=self._retry.timeout)
        try:
            body = form_urlencode(form)
            headers = {"Content-Type": "application/x-www-form-urlencoded"}
            async with self._session.post(
                url, data=body, headers=headers, timeout=timeout, trace_request_ctx=probe
            ) as response:
                self._contact.reached = True
                raw = await response.read()
                answer = _Answer(response.status, raw.decode("utf-8"), response.headers)
        except aiohttp.ClientConnectorError as exc:
            log.debug("%s: %s after %.3fs", api, type(exc).__name__, time.monotonic() - started)
            unreachable = _unreachable(exc)
            if not self._contact.reached and not self._contact.warned:
                self._contact.warned = True
                log.warning(
                    "cannot reach %s (%s); retrying, and stopping if it never answers",
                    self.base_url,
                    unreachable.message,
                )
            raise unreachable from None
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
        await self._tokens.replace(used, cause, self._exchange)

    async def _exchange(self, refresh: str) -> tuple[str, str, float | None]:
        """The refresh-token exchange, retried while the token endpoint fails transiently."""
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(TransientError),
            stop=stop_after_attempt(self._retry.attempts),
            wait=self._wait,
            reraise=True,
        )
        # tenacity types the call's result as a free TypeVar: the annotation binds it.
        tokens: tuple[str, str, float | None] = await retrying(self._get_token, refresh)
        return tokens

    async def _get_token(self, refresh: str) -> tuple[str, str, float | None]:
        key = self._credentials.app_key
        url = f"{self.base_url}{OPENAPI_PREFIX}{TOKEN_PATH}/{key}"
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


def _unreachable(exc: aiohttp.ClientConnectorError) -> Unreachable:
    """The failure to open a connection (aiohttp reports a TLS failure as one too), by kind."""
    where = f"{exc.host}:{exc.port}"
    cause = exc.os_error
    if isinstance(exc, aiohttp.ClientSSLError):
        # An ssl error's errno is the TLS library's, not the OS's: its text says what failed.
        reason = str(cause) or type(cause).__name__
        return Unreachable("tls", f"TLS with {where} failed: {reason}")
    # A refused connection's strerror is asyncio's "Connect call failed"; its errno says why.
    if isinstance(cause.errno, int) and cause.errno > 0:
        reason = os.strerror(cause.errno)
    else:
        reason = exc.strerror or type(cause).__name__
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return Unreachable("dns", f"the host name {exc.host} does not resolve: {reason}")
    return Unreachable("connect", f"cannot connect to {where}: {reason}")


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
