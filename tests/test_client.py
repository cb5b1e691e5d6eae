"""The gateway client against the real sandbox on loopback, both protocols.

Every test starts its own sandbox (port 0) with the behaviour it needs; searches use images of
a small catalogue drawn once per session.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw

from engine.client import (
    OCEAN_QUERY,
    OCEAN_UPLOAD,
    SEED_API,
    SEED_PATH,
    GatewayClient,
    ProtocolName,
    RetryPolicy,
    SearchFilters,
    SearchResult,
    classify_ocean,
    classify_seed,
    form_urlencode,
    ocean_path,
    ocean_query_params,
    ocean_upload_params,
    parse_retry_after,
    seed_search_params,
    sign_ocean,
    sign_seed,
)
from engine.credentials import Credentials, TokenStore
from engine.errors import (
    FatalGatewayError,
    GatewayError,
    ImageRejected,
    RateLimited,
    TokenExpired,
    TransientError,
)
from engine.ratelimit import BudgetExhausted, CallGate, Rate
from engine.sandbox import Faults, Sandbox, SandboxConfig
from engine.sandbox.catalogue import Catalogue
from engine.signing import ocean_signature, seed_signature

APP_KEY = "app-5521"
APP_SECRET = "app-secret-c0ffee"
TOKEN = "access-token-f00d"
REFRESH = "refresh-token-beef"
SECRETS = (APP_SECRET, TOKEN, REFRESH)
PROTOCOLS: tuple[ProtocolName, ...] = ("ocean", "seed")
FAST = RetryPolicy(attempts=1, base_delay=0.01, max_delay=0.05, timeout=10)
LOOSE = Rate(10_000, 1.0)

COLOURS = [(220, 30, 30), (30, 60, 220), (40, 170, 60), (240, 200, 20)]


def draw_jpeg(colour: tuple[int, int, int], side: int = 240) -> bytes:
    img = Image.new("RGB", (side, side), "white")
    ImageDraw.Draw(img).ellipse((side // 5, side // 4, side * 4 // 5, side * 3 // 4), fill=colour)
    out = io.BytesIO()
    img.save(out, "JPEG", quality=90)
    return out.getvalue()


@pytest.fixture(scope="session")
def catalogue(tmp_path_factory: pytest.TempPathFactory) -> Catalogue:
    directory = tmp_path_factory.mktemp("client-catalogue")
    entries = []
    for i, colour in enumerate(COLOURS):
        offer_id = 700_000_000_000 + i
        (directory / f"{offer_id}.jpg").write_bytes(draw_jpeg(colour))
        entries.append(
            {
                "offer_id": offer_id,
                "image": f"{offer_id}.jpg",
                "title": f"商品{i}",
                "title_en": f"product {i}",
                "price": f"{5 * (i + 1)}.00",
                "price_tiers": [],
                "min_order": i + 1,
                "unit": "件",
                "month_sold": 100 * i,
                "company": "测试有限公司",
                "province": "浙江省",
                "city": "杭州市",
                "freight": "free" if i % 2 == 0 else "paid",
                "category_id": 3,
            }
        )
    (directory / "catalogue.json").write_text(json.dumps(entries, ensure_ascii=False), "utf-8")
    return Catalogue.load(directory)


JPEG = draw_jpeg(COLOURS[0])

StartSandbox = Callable[..., Awaitable[Sandbox]]


@pytest.fixture
async def sandbox(catalogue: Catalogue) -> AsyncIterator[StartSandbox]:
    """``await sandbox(**config_changes)`` starts a sandbox that knows our app."""
    async with _sandboxes(catalogue) as start:
        yield start


@asynccontextmanager
async def _sandboxes(catalogue: Catalogue) -> AsyncIterator[StartSandbox]:
    running: list[Sandbox] = []

    async def start(**changes: Any) -> Sandbox:
        config = SandboxConfig(
            port=0,
            rate=LOOSE,
            app_key=APP_KEY,
            app_secret=APP_SECRET,
            access_token=TOKEN,
            refresh_token=REFRESH,
        )
        box = Sandbox(replace(config, **changes), catalogue=catalogue)
        running.append(await box.__aenter__())
        return box

    try:
        yield start
    finally:
        for box in running:
            await box.__aexit__(None, None, None)


def credentials(**changes: Any) -> Credentials:
    return replace(Credentials(APP_KEY, APP_SECRET, TOKEN, REFRESH), **changes)


def client_for(
    box: Sandbox,
    protocol: ProtocolName,
    *,
    gate: CallGate | None = None,
    retry: RetryPolicy = FAST,
    creds: Credentials | None = None,
    store: TokenStore | None = None,
) -> GatewayClient:
    return GatewayClient(
        base_url=box.url,
        protocol=protocol,
        credentials=creds or credentials(),
        gate=gate or CallGate(LOOSE),
        retry=retry,
        token_store=store,
    )


async def search(box: Sandbox, protocol: ProtocolName, **kwargs: Any) -> SearchResult:
    filters = kwargs.pop("filters", SearchFilters())
    image = kwargs.pop("image", JPEG)
    async with client_for(box, protocol, **kwargs) as client:
        return await client.search(image, filters)


async def failure(box: Sandbox, protocol: ProtocolName, **kwargs: Any) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        await search(box, protocol, **kwargs)
    assert_no_secret(caught.value)
    return caught.value


def assert_no_secret(error: BaseException) -> None:
    for text in (str(error), repr(error), *map(str, vars(error).values())):
        for secret in SECRETS:
            assert secret not in text


def offers(result: SearchResult) -> list[dict[str, Any]]:
    """The offers of a raw body, checking the contract's envelope on the way."""
    body = json.loads(result.raw_body)
    if result.protocol == "ocean":
        envelope = body["result"]
        assert envelope["success"] == "true" and envelope["code"] == "200"
        page = envelope["result"]
        assert {"totalRecords", "totalPage", "pageSize", "currentPage", "data"} <= set(page)
        return page["data"]
    answer = body["image_search_item_response"]
    assert isinstance(answer["total_results"], int)
    return answer["items"]["item"]


# --- success --------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_search_answers_in_the_contract_shape(sandbox: StartSandbox, protocol) -> None:
    box = await sandbox()
    gate = CallGate(LOOSE)
    result = await search(box, protocol, gate=gate)
    found = offers(result)
    assert found, "the catalogue holds the searched product"
    if protocol == "ocean":
        assert found[0]["offerId"] == 700_000_000_000
        assert result.image_id and result.http_calls == 2
        assert box.stats()["calls"] == {OCEAN_UPLOAD: 1, OCEAN_QUERY: 1}
    else:
        assert str(found[0]["item_id"]) == "700000000000"
        assert result.image_id is None and result.http_calls == 1
        assert box.stats()["calls"] == {SEED_API: 1}
    assert result.protocol == protocol
    assert result.searched_at.utcoffset() is not None
    assert gate.spent == result.http_calls


async def test_seed_price_zero_is_signed_sent_and_accepted(sandbox: StartSandbox) -> None:
    box = await sandbox()
    filters = SearchFilters(price_min=Decimal("0"), price_max=Decimal("0.00"), min_order_min=0)
    result = await search(box, "seed", filters=filters)
    assert offers(result) == []  # nothing costs 0: the filter reached the sandbox
    cheap = await search(box, "seed", filters=replace(filters, price_max=Decimal("5")))
    assert [str(o["item_id"]) for o in offers(cheap)] == ["700000000000"]

    # The seed's own bug, signing without the falsy price_start it still sends, is refused.
    sent = sign_seed(
        seed_search_params(JPEG, filters), app_key=APP_KEY, access_token=TOKEN, secret=APP_SECRET
    )
    skipped = {k: v for k, v in sent.items() if k != "sign" and v not in ("0", "0.00")}
    sent["sign"] = seed_signature(skipped, APP_SECRET)
    status, body, headers = await post(box.url + "/openapi/" + SEED_PATH, sent)
    error = classify_seed(status, body, headers)
    assert isinstance(error, FatalGatewayError) and error.code == "25"


price = st.decimals(min_value=0, max_value=60, places=2)


@pytest.fixture
async def shared_box(catalogue: Catalogue) -> AsyncIterator[Sandbox]:
    async with _sandboxes(catalogue) as start:
        yield await start()


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    protocol=st.sampled_from(PROTOCOLS),
    low=st.none() | price,
    span=st.none() | price,
    moq=st.none() | st.integers(min_value=0, max_value=6),
    freight=st.sampled_from(["all", "free", "paid"]),
    page_size=st.integers(min_value=1, max_value=50),
)
async def test_the_sandbox_accepts_whatever_the_client_signs(
    shared_box: Sandbox,
    protocol: ProtocolName,
    low: Decimal | None,
    span: Decimal | None,
    moq: int | None,
    freight: Any,
    page_size: int,
) -> None:
    high = None if span is None else (low or Decimal(0)) + span
    filters = SearchFilters(low, high, moq, freight, page_size)
    result = await search(shared_box, protocol, filters=filters)
    found = offers(result)
    assert len(found) <= page_size
    if protocol == "ocean":
        for offer in found:
            offer_price = Decimal(offer["priceInfo"]["price"])
            assert low is None or offer_price >= low
            assert high is None or offer_price <= high
    elif moq is not None:
        assert all(int(o["item_id"]) % 100 + 1 >= moq for o in found)


# --- tampering ------------------------------------------------------------------------------


async def post(url: str, form: dict[str, str]) -> tuple[int, str, dict[str, str]]:
    async with aiohttp.ClientSession() as session, session.post(url, data=form) as response:
        return response.status, await response.text(), dict(response.headers)


def tampered(value: str) -> str:
    """Another value the sandbox would accept just as well, were it signed."""
    if value.startswith("{"):
        return value.replace('"beginPage":1', '"beginPage":2')
    if value.isdigit():
        return str(int(value) + 1)
    return value + "x" if len(value) < 40 else value[:-4] + "AAA="


async def test_ocean_rejects_any_change_after_signing(sandbox: StartSandbox) -> None:
    box = await sandbox()
    image_id = (await search(box, "ocean")).image_id
    assert image_id is not None
    path = ocean_path(OCEAN_QUERY, APP_KEY)
    url = f"{box.url}/openapi/{path}"
    business = ocean_query_params(image_id, SearchFilters(price_min=Decimal("1")))
    signed = sign_ocean(path, business, access_token=TOKEN, secret=APP_SECRET)

    status, body, headers = await post(url, signed)
    assert classify_ocean(status, body, headers) is None
    for key in ("offerQueryParam", "access_token", "_aop_timestamp"):
        changed = {**signed, key: tampered(signed[key])}
        error = classify_ocean(*await post(url, changed))
        assert isinstance(error, FatalGatewayError), key
        assert error.code == "gw.SignatureInvalid", key
        assert "IMG1688_APP_SECRET" in error.fix

    unsigned = {k: v for k, v in signed.items() if k != "_aop_signature"}
    other_path = ocean_path(OCEAN_UPLOAD, APP_KEY)
    wrong_path = {**unsigned, "_aop_signature": ocean_signature(other_path, unsigned, APP_SECRET)}
    error = classify_ocean(*await post(url, wrong_path))
    assert isinstance(error, FatalGatewayError) and error.code == "gw.SignatureInvalid"

    upload_path = ocean_path(OCEAN_UPLOAD, APP_KEY)
    upload = sign_ocean(
        upload_path, ocean_upload_params(JPEG), access_token=TOKEN, secret=APP_SECRET
    )
    upload["uploadImageParam"] = upload["uploadImageParam"].replace('":"', '":"AAAA', 1)
    error = classify_ocean(*await post(f"{box.url}/openapi/{upload_path}", upload))
    assert isinstance(error, FatalGatewayError) and error.code == "gw.SignatureInvalid"


async def test_seed_rejects_any_change_after_signing(sandbox: StartSandbox) -> None:
    box = await sandbox()
    url = f"{box.url}/openapi/{SEED_PATH}"
    filters = SearchFilters(Decimal("0"), Decimal("40"), 1, "free", 10)
    signed = sign_seed(
        seed_search_params(JPEG, filters), app_key=APP_KEY, access_token=TOKEN, secret=APP_SECRET
    )
    assert classify_seed(*await post(url, signed)) is None
    # app_key and method are checked before the signature: they have their own errors.
    for key in sorted(set(signed) - {"sign", "app_key", "method"}):
        changed = {**signed, key: tampered(signed[key])}
        if key == "timestamp":
            changed[key] = signed[key][:-1] + ("1" if signed[key][-1] == "0" else "0")
        if key == "freight_type":
            changed[key] = "paid"
        error = classify_seed(*await post(url, changed))
        assert isinstance(error, FatalGatewayError), key
        assert error.code == "25", key


# --- errors, classified ---------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_rate_limit_carries_retry_after_and_pauses_the_gate(
    sandbox: StartSandbox, protocol: ProtocolName
) -> None:
    box = await sandbox(rate=Rate(1, 30.0))
    gate = CallGate(LOOSE)
    await search(box, "seed", gate=gate)  # fills the sandbox's window
    error = await failure(box, protocol, gate=gate)
    assert isinstance(error, RateLimited)
    assert error.retry_after is not None and error.retry_after >= 1
    assert box.stats()["rate_limited"] == 1
    # The refusal paused every caller of the gate, not just the refused one.
    assert gate.spent == 2
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await gate.acquire()


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_rate_limited_call_is_retried_after_retry_after(
    sandbox: StartSandbox, protocol: ProtocolName
) -> None:
    box = await sandbox(rate=Rate(1, 1.0))
    gate = CallGate(LOOSE)
    retry = replace(FAST, attempts=3)
    await search(box, "seed", gate=gate)
    result = await search(box, protocol, gate=gate, retry=retry)
    assert offers(result)
    stats = box.stats()
    assert stats["rate_limited"] >= 1
    assert gate.spent == stats["total_calls"] == 1 + result.http_calls


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize(
    ("faults", "code"),
    [
        (Faults(error_5xx=1.0), "http_5"),
        (Faults(malformed=1.0), "malformed_body"),
        (Faults(drop=1.0), "connection"),
    ],
)
async def test_transient_failures_are_retried_then_raised(
    sandbox: StartSandbox, protocol: ProtocolName, faults: Faults, code: str
) -> None:
    box = await sandbox(faults=faults)
    gate = CallGate(LOOSE)
    error = await failure(box, protocol, gate=gate, retry=replace(FAST, attempts=3))
    assert isinstance(error, TransientError)
    if code == "http_5":
        assert error.status is not None and error.status >= 500
    else:
        assert error.code == code
    assert gate.spent == box.stats()["total_calls"] == 3


async def test_a_slow_answer_times_out(sandbox: StartSandbox) -> None:
    box = await sandbox(faults=Faults(slow=1.0, slow_seconds=1.0))
    error = await failure(box, "seed", retry=replace(FAST, timeout=0.1))
    assert isinstance(error, TransientError) and error.code == "timeout"


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_half_the_calls_failing_still_succeeds_and_every_attempt_took_a_slot(
    sandbox: StartSandbox, protocol: ProtocolName
) -> None:
    box = await sandbox(faults=Faults(error_5xx=0.5, seed=7))
    gate = CallGate(LOOSE)
    retry = replace(FAST, attempts=12)
    async with client_for(box, protocol, gate=gate, retry=retry) as client:
        results = [await client.search(JPEG, SearchFilters()) for _ in range(4)]
    stats = box.stats()
    assert all(offers(r) for r in results)
    assert stats["faults"]["5xx"] > 0
    assert gate.spent == stats["total_calls"] == sum(r.http_calls for r in results)


async def test_the_budget_stops_calls(sandbox: StartSandbox) -> None:
    box = await sandbox()
    gate = CallGate(LOOSE, budget=3)
    async with client_for(box, "ocean", gate=gate) as client:
        await client.search(JPEG, SearchFilters())
        with pytest.raises(BudgetExhausted):
            await client.search(JPEG, SearchFilters())
    assert gate.spent == box.stats()["total_calls"] == 3


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_expired_token_is_refreshed_once_and_stored(
    sandbox: StartSandbox,
    protocol: ProtocolName,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    box = await sandbox(token_ttl=1.0)
    await asyncio.sleep(1.05)  # the sandbox's clock must pass the first token's lifetime
    store = TokenStore(tmp_path / "tokens.json")
    gate = CallGate(LOOSE)
    with caplog.at_level(logging.DEBUG):
        result = await search(box, protocol, gate=gate, store=store)
    assert "refreshed the access token" in caplog.text
    for secret in SECRETS:
        assert secret not in caplog.text
    assert offers(result)
    stats = box.stats()
    assert stats["calls"]["system.oauth2.getToken"] == 1
    assert result.http_calls == gate.spent == stats["total_calls"] - 1

    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    stored = store.load(APP_KEY)
    assert stored is not None and stored.access_token != TOKEN
    assert stored.refresh_token == REFRESH and stored.expires_at is not None
    # The old token is refused now; the stored one is preferred to it by the next client.
    error = await failure(box, protocol, creds=credentials(refresh_token=None))
    assert isinstance(error, FatalGatewayError) and "IMG1688_REFRESH_TOKEN" in error.fix


async def test_concurrent_searches_refresh_only_once(sandbox: StartSandbox) -> None:
    box = await sandbox()
    async with client_for(box, "seed", creds=credentials(access_token="stale-token")) as client:
        results = await asyncio.gather(*(client.search(JPEG, SearchFilters()) for _ in range(4)))
    assert all(offers(r) for r in results)
    stats = box.stats()
    assert stats["calls"]["system.oauth2.getToken"] == 1
    assert stats["calls"][SEED_API] == 8  # each refused once, then answered


async def test_stored_token_is_preferred_to_the_configured_one(
    sandbox: StartSandbox, tmp_path: Path
) -> None:
    box = await sandbox()
    store = TokenStore(tmp_path / "tokens.json")
    async with client_for(box, "seed", store=store) as client:
        await client.refresh_token()
    before = box.stats()["calls"]["system.oauth2.getToken"]
    # Configured with the replaced token and no refresh token: only the store can help.
    result = await search(box, "seed", store=store, creds=credentials(refresh_token=None))
    assert offers(result)
    assert box.stats()["calls"]["system.oauth2.getToken"] == before == 1


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_expired_token_without_refresh_token_is_fatal(
    sandbox: StartSandbox, protocol: ProtocolName
) -> None:
    box = await sandbox(token_ttl=0.0)
    error = await failure(box, protocol, creds=credentials(refresh_token=None))
    assert isinstance(error, FatalGatewayError)
    assert error.code in ("401", "27")
    assert "IMG1688_ACCESS_TOKEN" in error.fix
    assert box.stats()["total_calls"] == 1


async def test_a_refused_refresh_token_is_fatal(sandbox: StartSandbox) -> None:
    box = await sandbox()
    error = await failure(
        box, "ocean", creds=credentials(access_token="stale-token", refresh_token="bad-refresh")
    )
    assert isinstance(error, FatalGatewayError) and error.code == "invalid_grant"
    assert "bad-refresh" not in str(error)


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_token_expired_again_after_refreshing_is_fatal(
    sandbox: StartSandbox, protocol: ProtocolName
) -> None:
    box = await sandbox(token_ttl=0.0)  # every token, the refreshed one too, is born expired
    error = await failure(box, protocol)
    assert isinstance(error, FatalGatewayError) and "refreshed" in error.fix
    assert box.stats()["calls"]["system.oauth2.getToken"] == 1


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize(
    ("setup", "codes", "fix"),
    [
        ({"creds": {"app_secret": "wrong-secret-1"}}, {"gw.SignatureInvalid", "25"}, "sign"),
        ({"creds": {"app_key": "nobody"}}, {"gw.AppKeyNotFound", "29"}, "IMG1688_APP_KEY"),
        (
            {"config": {"allow_ips": ("10.9.8.7",)}},
            {"gw.IpNotInWhiteList", "isv.ip-not-in-whitelist"},
            "IP whitelist",
        ),
        (
            {"config": {"usage_limit": 0}},
            {"gw.NoUsageLeftError", "accesscontrol.limited-by-api-access-count"},
            "quota",
        ),
    ],
)
async def test_fatal_gateway_errors_say_what_to_fix(
    sandbox: StartSandbox, protocol: ProtocolName, setup: dict, codes: set[str], fix: str
) -> None:
    box = await sandbox(**setup.get("config", {}))
    gate = CallGate(LOOSE)
    creds = credentials(**setup.get("creds", {}))
    error = await failure(box, protocol, creds=creds, gate=gate, retry=replace(FAST, attempts=5))
    assert isinstance(error, FatalGatewayError)
    assert error.code in codes
    assert fix in error.fix
    assert gate.spent == box.stats()["total_calls"] == 1  # never retried


@pytest.mark.parametrize(("protocol", "api"), [("ocean", OCEAN_QUERY), ("seed", SEED_API)])
async def test_denied_api_asks_for_permission(
    sandbox: StartSandbox, protocol: ProtocolName, api: str
) -> None:
    box = await sandbox(deny_apis=(api,))
    error = await failure(box, protocol)
    assert isinstance(error, FatalGatewayError)
    assert error.code in ("gw.APIACLDecline", "isv.api-acl-decline")
    assert f"apply for permission to {api}" in error.fix


def alpha_png() -> bytes:
    out = io.BytesIO()
    Image.new("RGBA", (100, 100), (255, 0, 0, 128)).save(out, "PNG")
    return out.getvalue()


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("image", [alpha_png(), draw_jpeg(COLOURS[1], side=1200)])
async def test_invalid_images_are_rejected(
    sandbox: StartSandbox, protocol: ProtocolName, image: bytes
) -> None:
    box = await sandbox()
    error = await failure(box, protocol, image=image)
    assert isinstance(error, ImageRejected) and error.code == "isv.invalid-image"
    assert box.stats()["total_calls"] == 1


# --- pure classification --------------------------------------------------------------------


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


def test_client_repr_shows_no_credentials() -> None:
    client = GatewayClient(
        base_url="http://127.0.0.1:1",
        protocol="ocean",
        credentials=credentials(),
        gate=CallGate(LOOSE),
    )
    assert repr(client) == "GatewayClient(base_url='http://127.0.0.1:1', protocol='ocean')"
    for secret in SECRETS:
        assert secret not in repr(client) and secret not in repr(credentials())


def test_filters_are_validated() -> None:
    for bad in (
        {"page_size": 0},
        {"page_size": 51},
        {"price_min": Decimal("-1")},
        {"price_min": Decimal("5"), "price_max": Decimal("4")},
        {"price_max": Decimal("NaN")},
        {"min_order_min": -1},
        {"freight": "cheap"},
    ):
        with pytest.raises(ValueError):
            SearchFilters(**bad)


_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)))


@given(st.dictionaries(_text, _text, max_size=5))
def test_the_form_body_is_exactly_what_urlencode_gives(form: dict[str, str]) -> None:
    assert form_urlencode(form) == urlencode(form).encode("ascii")
