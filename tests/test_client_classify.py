"""Answer classification: every answer of either protocol maps onto what to do next.

Pure functions, no sandbox: the bodies are the protocols' own error shapes, and anything else.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.client import classify_ocean, classify_seed, parse_retry_after
from engine.client.classify import BUSY_MARKERS
from engine.errors import (
    FatalGatewayError,
    GatewayError,
    ImageRejected,
    RateLimited,
    TokenExpired,
    TransientError,
)
from tests.gateway_kit import APP_SECRET, SECRETS, TOKEN, assert_no_secret


def ocean_body(code: str) -> str:
    return json.dumps({"error_code": code, "error_message": "m", "request_id": "ab12"})


def seed_body(code: int, sub_code: str | None = None) -> str:
    error: dict[str, Any] = {"code": code, "msg": "m"}
    if sub_code:
        error["sub_code"] = sub_code
    return json.dumps({"error_response": error})


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (200, '{"result": {"success": "true", "code": "200", "result": "id"}}', None),
        (200, '{"result": {"success": true, "code": "200", "result": "id"}}', None),
        (400, ocean_body("gw.QosAppFrequencyLimit"), RateLimited),
        (403, ocean_body("gw.QosApiFrequencyLimit"), RateLimited),
        (429, "Too Many Requests", RateLimited),
        (401, ocean_body("401"), TokenExpired),
        (401, "", TokenExpired),
        (500, ocean_body("gw.InternalError"), TransientError),
        (502, "<html>Bad Gateway</html>", TransientError),
        (200, '{"result": {"success": "tr', TransientError),
        (200, '{"other": 1}', TransientError),
        (200, '{"result": {"success": "false", "code": "isv.invalid-image"}}', ImageRejected),
        (200, '{"result": {"success": false, "code": "x", "message": "no"}}', ImageRejected),
        (400, ocean_body("gw.SignatureInvalid"), FatalGatewayError),
        (400, ocean_body("gw.SignatureMissing"), FatalGatewayError),
        (400, ocean_body("gw.AppKeyNotFound"), FatalGatewayError),
        (400, ocean_body("gw.APIACLDecline"), FatalGatewayError),
        (400, ocean_body("gw.APIUnsupported"), FatalGatewayError),
        (400, ocean_body("gw.NoUsageLeftError"), FatalGatewayError),
        (400, ocean_body("gw.ParamMissing"), FatalGatewayError),
        (400, ocean_body("gw.TimestampInvalid"), FatalGatewayError),
        (403, ocean_body("gw.IpNotInWhiteList"), FatalGatewayError),
        (404, "<html>not found</html>", FatalGatewayError),
    ],
)
def test_classify_ocean(status: int, body: str, expected: type | None) -> None:
    error = classify_ocean(status, body, {})
    assert type(error) is expected if expected else error is None


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (200, '{"image_search_item_response": {"total_results": 0, "items": {}}}', None),
        (429, seed_body(7, "accesscontrol.limited-by-app-access-count"), RateLimited),
        (200, seed_body(7), RateLimited),
        (200, seed_body(7, "accesscontrol.limited-by-api-access-count"), FatalGatewayError),
        (200, seed_body(26), TokenExpired),
        (200, seed_body(27), TokenExpired),
        (200, seed_body(15, "isv.invalid-image"), ImageRejected),
        (200, seed_body(15, "isp.remote-service-timeout"), TransientError),
        (403, seed_body(11, "isv.ip-not-in-whitelist"), FatalGatewayError),
        (200, seed_body(11, "isv.api-acl-decline"), FatalGatewayError),
        (200, seed_body(22), FatalGatewayError),
        (200, seed_body(24), FatalGatewayError),
        (200, seed_body(25), FatalGatewayError),
        (200, seed_body(28), FatalGatewayError),
        (200, seed_body(29), FatalGatewayError),
        (200, seed_body(31), FatalGatewayError),
        (200, seed_body(41, "isv.invalid-parameter"), FatalGatewayError),
        (503, "<html>Service Unavailable</html>", TransientError),
        (200, '{"image_search_item_response": {"total_re', TransientError),
        (200, "[]", TransientError),
    ],
)
def test_classify_seed(status: int, body: str, expected: type | None) -> None:
    error = classify_seed(status, body, {})
    assert type(error) is expected if expected else error is None


def test_retry_after_in_seconds_or_as_a_date() -> None:
    limited = classify_ocean(400, ocean_body("gw.QosAppFrequencyLimit"), {"retry-after": "7"})
    assert isinstance(limited, RateLimited) and limited.retry_after == 7
    now = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("Wed, 01 Jan 2025 12:00:30 GMT", now=now) == 30
    assert parse_retry_after("Wed, 01 Jan 2025 11:00:00 GMT", now=now) == 0
    assert parse_retry_after("soon") is None
    limited = classify_seed(429, "", {})
    assert isinstance(limited, RateLimited) and limited.retry_after is None


@given(status=st.integers(min_value=100, max_value=599), body=st.text(max_size=60))
def test_classifiers_never_raise_and_follow_the_status(status: int, body: str) -> None:
    for classify in (classify_ocean, classify_seed):
        error = classify(status, body, {"Retry-After": body[:5]})
        assert error is None or isinstance(error, GatewayError)
        if status == 429:
            assert isinstance(error, RateLimited)
        elif status >= 500 and not body.lstrip().startswith("{"):
            assert isinstance(error, TransientError)
        elif status != 200:
            assert error is not None


@given(
    code=st.sampled_from(
        ["gw.SignatureInvalid", "gw.QosAppFrequencyLimit", "401", "gw.Unknown", "gw.APIACLDecline"]
    ),
    message=st.text(max_size=20),
    secret=st.sampled_from(SECRETS),
)
def test_classifiers_redact_whatever_the_gateway_echoes(
    code: str, message: str, secret: str
) -> None:
    body = json.dumps({"error_code": code, "error_message": message + secret, "request_id": secret})
    error = classify_ocean(400, body, {}, secrets=SECRETS)
    assert error is not None
    assert_no_secret(error)


def test_classifiers_redact_echoed_secrets() -> None:
    echo = json.dumps({"error_code": "gw.SignatureInvalid", "error_message": f"bad {TOKEN}"})
    error = classify_ocean(400, echo, {}, secrets=SECRETS)
    assert isinstance(error, FatalGatewayError)
    assert_no_secret(error)
    seed_echo = json.dumps({"error_response": {"code": 27, "msg": f"session {TOKEN} invalid"}})
    error = classify_seed(200, seed_echo, {}, secrets=SECRETS)
    assert isinstance(error, TokenExpired)
    assert_no_secret(error)
    malformed = classify_seed(200, f'{{"x": "{APP_SECRET}', {}, secrets=SECRETS)
    assert isinstance(malformed, TransientError)
    assert_no_secret(malformed)


def ocean_failure(code: object, message: object) -> str:
    return json.dumps({"result": {"success": "false", "code": code, "message": message}})


def seed_failure(code: int, msg: str, sub_code: str | None = None) -> str:
    error: dict[str, Any] = {"code": code, "msg": msg}
    if sub_code:
        error["sub_code"] = sub_code
    return json.dumps({"error_response": error}, ensure_ascii=False)


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("500", "x"),
        ("503", ""),
        (502, None),
        ("SYSTEM_BUSY", ""),
        ("ServiceUnavailable", "x"),
        ("service.unavailable", "x"),
        ("x", "系统繁忙，请稍后再试"),
        ("x", "服务繁忙"),
        ("x", "系统错误"),
        ("biz_error", "Service busy, try later"),
        ("biz_error", "request TIMED OUT"),
        ("", "Internal Server Error"),
    ],
)
def test_a_busy_business_failure_is_transient(code: object, message: object) -> None:
    error = classify_ocean(200, ocean_failure(code, message), {})
    assert isinstance(error, TransientError)


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("isv.invalid-image", "image too small"),
        ("isv.invalid-image", "invalid image"),
        ("isv.invalid-image", "系统繁忙"),  # the code says whose fault it is
        ("ISV.image-not-found", "imageId is unknown or expired"),
        ("400", "image too small"),
        ("5000", "图片无效"),
        ("x", "image is 500x300, long side over 800"),
        ("business_failure", "the image has an alpha channel"),
    ],
)
def test_an_image_rejection_is_not_mistaken_for_busy(code: object, message: object) -> None:
    error = classify_ocean(200, ocean_failure(code, message), {})
    assert type(error) is ImageRejected


def test_busy_markers_apply_to_seed_and_to_unknown_gateway_codes_only() -> None:
    assert isinstance(classify_seed(200, seed_failure(10, "系统繁忙"), {}), TransientError)
    assert isinstance(classify_seed(200, seed_failure(10, "x", "isp.busy"), {}), TransientError)
    # TOP's 5xx codes are business errors, not HTTP statuses.
    unknown = classify_seed(200, seed_failure(506, "Parameters Error"), {})
    assert isinstance(unknown, FatalGatewayError)
    rejected = classify_seed(200, seed_failure(15, "服务繁忙", "isv.invalid-image"), {})
    assert type(rejected) is ImageRejected
    busy_gateway = json.dumps({"error_code": "gw.SystemBusy", "error_message": "busy"})
    assert isinstance(classify_ocean(400, busy_gateway, {}), TransientError)
    # A known fatal code stays fatal whatever its message says.
    signature = json.dumps({"error_code": "gw.SignatureInvalid", "error_message": "timeout"})
    assert isinstance(classify_ocean(400, signature, {}), FatalGatewayError)


def _spell(marker: str, separator: str, upper: list[bool]) -> str:
    """``marker`` with its spaces replaced by ``separator`` and some letters upper-cased."""
    text = marker.replace(" ", separator)
    return "".join(c.upper() if u else c for c, u in zip(text, upper * len(text), strict=False))


@given(
    marker=st.sampled_from(BUSY_MARKERS),
    separator=st.sampled_from(["", " ", "_", "-", ".", "  "]),
    upper=st.lists(st.booleans(), min_size=1, max_size=8),
    before=st.text(max_size=10),
    after=st.text(max_size=10),
    in_code=st.booleans(),
)
def test_every_busy_marker_matches_in_any_case_and_spelling(
    marker: str, separator: str, upper: list[bool], before: str, after: str, in_code: bool
) -> None:
    text = before + _spell(marker, separator, upper) + after
    code, message = (text, "") if in_code else ("biz", text)
    if in_code and code.strip().lower().startswith("isv."):
        code = "biz " + code
    assert isinstance(classify_ocean(200, ocean_failure(code, message), {}), TransientError)


_REJECTION_WORDS = [
    "image", "too", "small", "large", "invalid", "format", "alpha", "channel", "not",
    "decodable", "size", "pixels", "800", "2MB", "图片", "无效", "尺寸", "过大", "格式", "错误",
    "不支持", "image_id", "unknown", "expired", ",", " ", "_", "-",
]  # fmt: skip


@given(
    suffix=st.text(max_size=20),
    words=st.lists(st.sampled_from(_REJECTION_WORDS), max_size=12),
)
def test_image_rejections_stay_rejections(suffix: str, words: list[str]) -> None:
    # Any isv.* code, whatever the message; and the words of image rules, whatever the code.
    assert type(classify_ocean(200, ocean_failure("isv." + suffix, suffix), {})) is ImageRejected
    message = " ".join(words)
    assert type(classify_ocean(200, ocean_failure("isv.invalid-image", message), {})) is (
        ImageRejected
    )
    assert type(classify_ocean(200, ocean_failure("biz", message), {})) is ImageRejected
