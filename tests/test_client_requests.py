"""Request building: what the client signs is what the sandbox accepts, and nothing else.

Pure builders and the form encoding, then signed requests sent to the sandbox on loopback (as
sent, tampered with after signing, or over any filters).
"""

from __future__ import annotations

import json
from dataclasses import replace
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs, urlencode

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.client import (
    SearchFilters,
    classify_ocean,
    classify_seed,
    form_urlencode,
    ocean_path,
    ocean_query_params,
    ocean_upload_params,
    seed_search_params,
    sign_ocean,
    sign_seed,
)
from engine.errors import FatalGatewayError
from engine.protocol import OCEAN_QUERY, OCEAN_UPLOAD, PROTOCOLS, SEED_PATH, ProtocolName
from engine.sandbox import Sandbox
from engine.signing import ocean_signature, seed_signature
from tests.gateway_kit import APP_KEY, APP_SECRET, JPEG, TOKEN, StartSandbox, offers, search

# --- pure builders --------------------------------------------------------------------------


def test_filters_are_validated() -> None:
    for bad in (
        {"page_size": 0},
        {"page_size": 51},
        {"price_min": Decimal("-1")},
        {"price_min": Decimal("5"), "price_max": Decimal("4")},
        {"price_max": Decimal("NaN")},
        {"min_order_min": -1},
        {"freight": "cheap"},
        {"keyword": ""},
        {"keyword": " \t"},
        {"keyword": 3},
    ):
        with pytest.raises(ValueError):
            SearchFilters(**bad)


def test_the_keyword_goes_in_the_ocean_query_only_when_given() -> None:
    plain = json.loads(ocean_query_params("img-1", SearchFilters())["offerQueryParam"])
    assert "keyword" not in plain
    titled = SearchFilters(keyword='连衣裙 & co, 100% "silk"')
    query = json.loads(ocean_query_params("img-1", titled)["offerQueryParam"])
    assert query == {**plain, "keyword": '连衣裙 & co, 100% "silk"'}
    # seed's search has no field for it: the form is the one without a keyword.
    assert seed_search_params(JPEG, titled) == seed_search_params(JPEG, SearchFilters())


_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)))


@given(st.dictionaries(_text, _text, max_size=5))
def test_the_form_body_is_exactly_what_urlencode_gives(form: dict[str, str]) -> None:
    assert form_urlencode(form) == urlencode(form).encode("ascii")


# --- signed, sent, accepted -----------------------------------------------------------------


async def test_seed_price_zero_is_signed_sent_and_accepted(start_sandbox: StartSandbox) -> None:
    box = await start_sandbox()
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
    keyword=st.none() | _text.filter(str.strip),
)
async def test_the_sandbox_accepts_whatever_the_client_signs(
    shared_sandbox: Sandbox,
    protocol: ProtocolName,
    low: Decimal | None,
    span: Decimal | None,
    moq: int | None,
    freight: Any,
    page_size: int,
    keyword: str | None,
) -> None:
    high = None if span is None else (low or Decimal(0)) + span
    filters = SearchFilters(low, high, moq, freight, page_size, keyword)
    result = await search(shared_sandbox, protocol, filters=filters)
    found = offers(result)
    assert len(found) <= page_size
    if protocol == "ocean":
        for offer in found:
            offer_price = Decimal(offer["priceInfo"]["price"])
            assert low is None or offer_price >= low
            assert high is None or offer_price <= high
    elif moq is not None:
        assert all(int(o["item_id"]) % 100 + 1 >= moq for o in found)


@pytest.mark.parametrize("keyword", [None, "Red dress 连衣裙 &=+%"])
async def test_a_keyword_is_signed_sent_and_accepted(
    shared_sandbox: Sandbox, keyword: str | None
) -> None:
    sent: list[bytes] = []

    async def record(_: object, __: object, params: aiohttp.TraceRequestChunkSentParams) -> None:
        sent.append(params.chunk)

    trace = aiohttp.TraceConfig()
    trace.on_request_chunk_sent.append(record)
    async with aiohttp.ClientSession(trace_configs=[trace]) as session:
        result = await search(
            shared_sandbox, "ocean", filters=SearchFilters(keyword=keyword), session=session
        )

    assert [str(o["offerId"]) for o in offers(result)][:1] == ["700000000000"]
    forms = [parse_qs(chunk.decode("ascii")) for chunk in sent]
    [query] = [json.loads(f["offerQueryParam"][0]) for f in forms if "offerQueryParam" in f]
    assert query.get("keyword") == keyword


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


async def test_ocean_rejects_any_change_after_signing(start_sandbox: StartSandbox) -> None:
    box = await start_sandbox()
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


async def test_seed_rejects_any_change_after_signing(start_sandbox: StartSandbox) -> None:
    box = await start_sandbox()
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
