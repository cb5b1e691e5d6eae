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
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

from engine.client.fixes import (
    APP_KEY_FIX,
    CLOCK_FIX,
    IP_FIX,
    PARAM_FIX,
    SIGNATURE_FIX,
    USAGE_FIX,
    acl_fix,
    unknown_fix,
    unsupported_fix,
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


def _text(value: object) -> str:
    return "" if value is None else str(value)


_E = TypeVar("_E", bound=GatewayError)


class _Redactor:
    """Builds errors whose every text has been scrubbed of the given secrets."""

    def __init__(self, secrets: Iterable[str | None], status: int, request_id: object) -> None:
        self.secrets = tuple(secrets)
        self.status = status
        self.request_id = redact(_text(request_id), self.secrets) or None

    def __call__(self, cls: type[_E], code: object, message: object, **extra: Any) -> _E:
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
        FatalGatewayError, f"http_{status}", "unexpected answer", fix=unknown_fix(status)
    )


OCEAN_RATE_CODES = frozenset({"gw.QosAppFrequencyLimit", "gw.QosApiFrequencyLimit"})

# A failure whose code or message says the *server* is busy or failed, not that the image or
# the request is bad, is retried as a TransientError. This is the one list of such markers.
# Sources:
# - /work/shared/api/FACTS.md, "ocean": a business failure is HTTP 200 with result.success
#   false plus result.code / result.message (no list of codes is published); "What follows for
#   the engine": retry 5xx and timeouts.
# - the seed (/work/shared/seed/000_e39c4346f63295b5.txt): its client retries HTTP 429, 500,
#   502, 503 and 504, and calls a timed-out call "接口调用超时".
# - TOP's public error-code tables (mirrored at blog.csdn.net/ye1992/article/details/8616047 and
#   www.cnblogs.com/Valentina/articles/2696993.html): sub codes "isp.*" are the platform's own
#   failures, "retry after a while"; 15 "Remote Service Error / 远程服务出错"; many business
#   codes read "... Service Unavailable / 服务不可用".
# The other wordings ("系统繁忙", "SYSTEM_BUSY", "ServiceUnavailable" ...) are how Chinese open
# platforms commonly say the same; no 1688 source lists them, so the list stays narrow: a wrong
# marker would retry a bad image on every invocation.
# Matching: case-insensitive substrings of the code or the message; a space in a marker stands
# for any run of spaces, "_", "-" or "." or none, so "service unavailable" also matches
# "ServiceUnavailable" and "SERVICE_UNAVAILABLE". A code in TOP's "isv." namespace (the
# caller's own error, such as isv.invalid-image) is never busy, whatever its message says.
# ocean also uses HTTP-like codes (success is "200"): a code of 500-599 is a server error there.
# seed does not: TOP's 5xx codes are business errors ("506 Parameters Error").
BUSY_MARKERS: tuple[str, ...] = (
    "busy",
    "time out",
    "timed out",
    "service unavailable",
    "temporarily unavailable",
    "system error",
    "server error",
    "internal error",
    "remote service error",
    "繁忙",  # 系统繁忙, 服务繁忙, 服务器繁忙: busy
    "超时",  # timed out
    "系统错误",  # system error
    "系统异常",  # system exception
    "服务异常",  # service exception
    "服务不可用",  # service unavailable
    "服务暂不可用",  # service temporarily unavailable
    "内部错误",  # internal error
    "稍后重试",  # try again later
    "稍后再试",  # try again later
)
OCEAN_BUSY_CODES = range(500, 600)
_BUSY = re.compile(
    "|".join(r"[\s_.\-]*".join(map(re.escape, m.split(" "))) for m in BUSY_MARKERS),
    re.IGNORECASE,
)


def means_busy(code: str, message: str) -> bool:
    """Whether a failure's code or message says the server is busy or failed
    (:data:`BUSY_MARKERS`); never for a code of TOP's ``isv.`` namespace."""
    if code.strip().lower().startswith("isv."):
        return False
    return _BUSY.search(code) is not None or _BUSY.search(message) is not None


def _ocean_busy(code: str, message: str) -> bool:
    digits = code.strip()
    http_like = digits.isascii() and digits.isdigit() and int(digits) in OCEAN_BUSY_CODES
    return http_like or means_busy(code, message)


def _ocean_fatal_fix(code: str, api: str) -> str | None:
    return {
        "gw.SignatureInvalid": SIGNATURE_FIX,
        "gw.SignatureMissing": SIGNATURE_FIX,
        "gw.AppKeyNotFound": APP_KEY_FIX,
        "gw.APIACLDecline": acl_fix(api),
        "gw.APIUnsupported": unsupported_fix(api),
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
    shape for its API. A business failure (``result.success`` false) is an
    :class:`~engine.errors.ImageRejected`, unless its code or message says the server is busy
    (:data:`BUSY_MARKERS`, or a code of 500-599): then it is a
    :class:`~engine.errors.TransientError`. ``api`` names the API in fix sentences; ``secrets``
    are scrubbed from every text of the error.
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
        if failure is None and _ocean_busy(code, message):
            failure = make(TransientError, code, message)
        return failure or make(FatalGatewayError, code, message, fix=unknown_fix(status))
    if status != 200:
        return _unexplained(status, make, retry_after)
    result = data.get("result") if isinstance(data, dict) else None
    if not isinstance(result, dict):
        return _malformed(status, body, secrets)
    success = result.get("success")
    if success in (True, "true"):
        return None
    if success in (False, "false"):
        code, message = _text(result.get("code")), _text(result.get("message"))
        if _ocean_busy(code, message):
            return make(TransientError, code or "business_failure", message or "server busy")
        return make(
            ImageRejected,
            code or "business_failure",
            message or "the gateway refused the request",
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
    (``error_response.code``, refined by ``sub_code``); a platform failure (code 15, an
    ``isp.`` sub code, or a sub code or message in :data:`BUSY_MARKERS`) is transient.
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
            return make(FatalGatewayError, code, message, fix=acl_fix(api))
        if number == 22:
            return make(FatalGatewayError, code, message, fix=unsupported_fix(api))
        if number in SEED_FATAL_FIX:
            return make(FatalGatewayError, code, message, fix=SEED_FATAL_FIX[number])
        if sub_code.startswith("isv."):
            # TOP: isv.* sub-codes are the caller's business errors, isp.* the platform's.
            return make(ImageRejected, code, message)
        failure = _http_failure(status, make, code, message, retry_after)
        if failure is not None:
            return failure
        if number == 15 or sub_code.startswith("isp.") or means_busy(sub_code, message):
            return make(TransientError, code, message)
        return make(FatalGatewayError, code, message, fix=unknown_fix(status))
    if status != 200:
        return _unexplained(status, _Redactor(secrets, status, None), retry_after)
    answer = data.get("image_search_item_response") if isinstance(data, dict) else None
    return None if isinstance(answer, dict) else _malformed(status, body, secrets)
