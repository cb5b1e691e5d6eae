"""The sandbox's own checks (:mod:`engine.sandbox.verify`) against the engine's signing.

The two are separate implementations of FACTS.md, sharing no code, so their agreement over
random parameters is evidence about both. Fixed vectors (FACTS.md's published ones and complete
requests signed by the official SDKs' code) are in ``test_signing.py``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.client import (
    SearchFilters,
    form_urlencode,
    ocean_path,
    ocean_query_params,
    seed_search_params,
    sign_ocean,
    sign_seed,
)
from engine.protocol import OCEAN_QUERY, SEED_PATH
from engine.sandbox import Sandbox, verify
from engine.signing import ocean_signature, ocean_timestamp, seed_signature, seed_timestamp
from tests.gateway_kit import APP_KEY, APP_SECRET, TOKEN

SIGNATURES = ("_aop_signature", "sign")

_char = st.characters(blacklist_categories=("Cs",))  # what a UTF-8 form can carry
# Keys over a tiny alphabet are often prefixes of one another ("a", "ab", "ab_"), where sorting
# "key + value" strings and sorting keys part ways; real names mix in.
keys = (
    st.text(alphabet="ab_", min_size=1, max_size=4)
    | st.sampled_from(["access_token", "_aop_timestamp", "image", "page_size", "price_start"])
    | st.text(alphabet=_char, min_size=1, max_size=6)
).filter(lambda key: key not in SIGNATURES)
values = st.sampled_from(["", "0", "00", "连衣裙"]) | st.text(alphabet=_char, max_size=12)
param_maps = st.dictionaries(keys, values, min_size=1, max_size=7)
paths = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789.", min_size=1, max_size=30).map(
    lambda tail: "param2/1/" + tail
)
secrets_ = st.text(alphabet=_char, min_size=1, max_size=16)
moments = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31), timezones=st.just(UTC)
)


def ocean_message(path: str, params: dict[str, str]) -> str:
    """What FACTS.md says is signed, for deciding whether two forms must sign differently."""
    return path + "".join(sorted(key + value for key, value in params.items()))


# --- the two implementations agree ----------------------------------------------------------


@given(paths, param_maps, secrets_)
def test_engine_signatures_are_what_the_sandbox_expects(
    path: str, params: dict[str, str], secret: str
) -> None:
    ocean = ocean_signature(path, params, secret)
    assert verify.expected_ocean(path, params, secret) == ocean
    assert verify.ocean_accepts(path, {**params, "_aop_signature": ocean}, secret)
    seed = seed_signature(params, secret)
    assert verify.expected_seed(params, secret) == seed
    assert verify.seed_accepts({**params, "sign": seed}, secret)


@given(param_maps, secrets_, moments)
def test_sandbox_accepts_the_engines_complete_forms(
    business: dict[str, str], secret: str, now: datetime
) -> None:
    path = ocean_path(OCEAN_QUERY, APP_KEY)
    ocean = sign_ocean(path, business, access_token=TOKEN, secret=secret, now=now)
    assert verify.ocean_accepts(path, ocean, secret)
    assert verify.millis_fresh(ocean["_aop_timestamp"], now.timestamp(), 0.001)
    seed = sign_seed(business, app_key=APP_KEY, access_token=TOKEN, secret=secret, now=now)
    assert verify.seed_accepts(seed, secret)
    # The text drops the fraction of a second: within one second, never more.
    assert verify.gmt8_fresh(seed["timestamp"], now.timestamp(), 1.0)


@given(paths, param_maps, secrets_, st.data())
def test_changing_one_value_changes_both_signatures(
    path: str, params: dict[str, str], secret: str, data: st.DataObject
) -> None:
    key = data.draw(st.sampled_from(sorted(params)), label="key")
    changed = {**params, key: data.draw(values.filter(lambda v: v != params[key]), label="new")}

    seed = seed_signature(params, secret)
    assert seed_signature(changed, secret) != seed
    assert verify.expected_seed(changed, secret) != seed
    assert not verify.seed_accepts({**changed, "sign": seed}, secret)

    # ocean joins sorted "key + value" strings with nothing between, so two forms can share one
    # message (test_signing.py shows such a pair): the signature must change whenever the
    # message does, and a longer value always changes it.
    ocean = ocean_signature(path, params, secret)
    longer = {**params, key: params[key] + data.draw(st.text(_char, min_size=1, max_size=3))}
    others = [longer]
    if ocean_message(path, changed) != ocean_message(path, params):
        others.append(changed)
    for other in others:
        assert ocean_signature(path, other, secret) != ocean
        assert verify.expected_ocean(path, other, secret) != ocean
        assert not verify.ocean_accepts(path, {**other, "_aop_signature": ocean}, secret)


def test_a_missing_or_lower_case_signature_is_refused() -> None:
    params = {"b": "2", "a": "1"}
    path = "param2/1/system/currentTime/1000000"
    assert not verify.ocean_accepts(path, params, "test123")
    assert not verify.seed_accepts(params, "test")
    lower = ocean_signature(path, params, "test123").lower()
    assert not verify.ocean_accepts(path, {**params, "_aop_signature": lower}, "test123")


# --- timestamps -----------------------------------------------------------------------------


@given(moments)
def test_timestamps_are_read_back_as_the_engine_wrote_them(now: datetime) -> None:
    stamp = seed_timestamp(now)
    assert verify.gmt8_fresh(stamp, now.timestamp(), 1.0)
    # Read as UTC (or as the machine's zone) it would be eight hours off.
    assert not verify.gmt8_fresh(stamp, now.timestamp() + 8 * 3600, 600.0)
    assert verify.millis_fresh(ocean_timestamp(now), now.timestamp(), 0.001)


def test_the_skew_allowed_is_inclusive() -> None:
    sent = datetime(2025, 3, 14, 9, 26, 53, tzinfo=UTC).timestamp()
    for skew in (-600.0, 600.0):
        assert verify.millis_fresh("1741944413000", sent + skew, 600.0)
        assert verify.gmt8_fresh("2025-03-14 17:26:53", sent + skew, 600.0)
    for skew in (-600.001, 600.001):
        assert not verify.millis_fresh("1741944413000", sent + skew, 600.0)
        assert not verify.gmt8_fresh("2025-03-14 17:26:53", sent + skew, 600.0)


NOW = datetime(2025, 3, 14, 9, 26, 53, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    "stamp", ["", "1741944413000.0", "1_741_944_413_000", " 1741944413000", "-1741944413000"]
)
def test_malformed_millis_are_refused(stamp: str) -> None:
    assert not verify.millis_fresh(stamp, NOW, 600.0)


@pytest.mark.parametrize(
    "stamp",
    [
        None,
        "",
        "2025-3-14 17:26:53",  # every field is zero-padded
        "2025-03-14T17:26:53",
        "2025-03-14 17:26:53+08:00",
        "２０２５-03-14 17:26:53",  # full-width digits
        "2025-02-30 17:26:53",
        "2025-03-14 24:00:00",
    ],
)
def test_malformed_gmt8_text_is_refused(stamp: str | None) -> None:
    assert not verify.gmt8_fresh(stamp, NOW, 10 * 366 * 86400.0)


# --- over the wire --------------------------------------------------------------------------


async def post(url: str, body: bytes) -> tuple[int, str]:
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=body, headers=headers) as response,
    ):
        return response.status, await response.text()


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    extra=st.dictionaries(
        keys.filter(lambda key: key not in ("access_token", "_aop_timestamp", "page_size")),
        values,
        max_size=4,
    )
)
async def test_the_sandbox_accepts_odd_parameters_as_encoded_on_the_wire(
    shared_sandbox: Sandbox, extra: dict[str, str]
) -> None:
    """Unicode, empty, ``+``, ``&``, ``=`` and ``%`` survive the form encoding and the server's
    decoding, and the signature over them still holds: each call gets past the signature
    check to a business answer (an unknown image id, an image that is not base64)."""
    now = datetime.now(UTC)
    query = {**extra, **ocean_query_params("no-such-image", SearchFilters())}
    path = ocean_path(OCEAN_QUERY, APP_KEY)
    form = sign_ocean(path, query, access_token=TOKEN, secret=APP_SECRET, now=now)
    status, text = await post(f"{shared_sandbox.url}/openapi/{path}", form_urlencode(form))
    assert (status, "isv.image-not-found" in text) == (200, True), text

    reserved = {"app_key", "method", "format", "v", "timestamp", "image", "price_start"}
    business = {k: v for k, v in extra.items() if k not in reserved}
    business |= seed_search_params(b"", SearchFilters(price_min=Decimal("0")))
    business["image"] = "not base64!"
    form = sign_seed(business, app_key=APP_KEY, access_token=TOKEN, secret=APP_SECRET, now=now)
    status, text = await post(f"{shared_sandbox.url}/openapi/{SEED_PATH}", form_urlencode(form))
    assert (status, "isv.invalid-image" in text) == (200, True), text
