"""Answer classification: pure functions from an HTTP answer to what the caller must do next.

:func:`classify_ocean` and :func:`classify_seed` map a status, body and headers onto the
:mod:`engine.errors` hierarchy (``None`` means success): :class:`~engine.errors.RateLimited`
and :class:`~engine.errors.TransientError` are worth retrying, :class:`~engine.errors.TokenExpired`
asks for a token refresh, :class:`~engine.errors.ImageRejected` fails one image and
:class:`~engine.errors.FatalGatewayError` stops the job with a fix from
:mod:`engine.client.fixes`. They never raise, whatever the body, and every text of the error
they return is scrubbed of the secrets they are given.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

from engine.client.fixes import (
    APP_KEY_FIX,
    CLOCK_FIX,
    IP_FIX,
    PARAM_FIX,
    SIGNATURE_FIX,
    USAGE_FIX,
    _acl_fix,
    _unknown_fix,
    _unsupported_fix,
)
from engine.errors import (
    FatalGatewayError,
    GatewayError,
    ImageRejected,
    RateLimited,
    TokenExpired,
    TransientError,
    redact,
)
from engine.protocol import SEED_API


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
