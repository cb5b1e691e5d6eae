"""The gateway client against the real sandbox on loopback, both protocols.

Every test starts its own sandbox (port 0) with the behaviour it needs; searches use images of
a small catalogue drawn once per session (fixtures in conftest.py, helpers in gateway_kit.py).
"""

from __future__ import annotations

import asyncio
import io
import logging
import socket
import stat
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.abc import AbstractResolver
from PIL import Image

from engine.client import Contact, GatewayClient, SearchFilters, client_session
from engine.credentials import TokenStore
from engine.errors import (
    FatalGatewayError,
    GatewayUnreachable,
    ImageRejected,
    RateLimited,
    TransientError,
    Unreachable,
)
from engine.protocol import OCEAN_QUERY, OCEAN_UPLOAD, PROTOCOLS, SEED_API, ProtocolName
from engine.ratelimit import AppGates, BudgetExhausted, CallBudget, CallGate, Rate, Reservation
from engine.sandbox import Faults
from tests.gateway_kit import (
    APP_KEY,
    COLOURS,
    FAST,
    JPEG,
    LOOSE,
    REFRESH,
    SECRETS,
    TOKEN,
    UNRESOLVABLE,
    StartSandbox,
    assert_no_secret,
    client_at,
    client_for,
    credentials,
    draw_jpeg,
    failure,
    offers,
    search,
)

# --- success --------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_search_answers_in_the_contract_shape(start_sandbox: StartSandbox, protocol) -> None:
    box = await start_sandbox()
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


# --- errors, classified ---------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_rate_limit_carries_retry_after_and_pauses_the_gate(
    start_sandbox: StartSandbox, protocol: ProtocolName
) -> None:
    box = await start_sandbox(rate=Rate(1, 30.0))
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
    start_sandbox: StartSandbox, protocol: ProtocolName
) -> None:
    box = await start_sandbox(rate=Rate(1, 1.0))
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
    start_sandbox: StartSandbox, protocol: ProtocolName, faults: Faults, code: str
) -> None:
    box = await start_sandbox(faults=faults)
    gate = CallGate(LOOSE)
    error = await failure(box, protocol, gate=gate, retry=replace(FAST, attempts=3))
    assert isinstance(error, TransientError)
    if code == "http_5":
        assert error.status is not None and error.status >= 500
    else:
        assert error.code == code
    assert gate.spent == box.stats()["total_calls"] == 3


async def test_a_slow_answer_times_out(start_sandbox: StartSandbox) -> None:
    box = await start_sandbox(faults=Faults(slow=1.0, slow_seconds=1.0))
    error = await failure(box, "seed", retry=replace(FAST, timeout=0.1))
    assert isinstance(error, TransientError) and error.code == "timeout"


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_half_the_calls_failing_still_succeeds_and_every_attempt_took_a_slot(
    start_sandbox: StartSandbox, protocol: ProtocolName
) -> None:
    box = await start_sandbox(faults=Faults(error_5xx=0.5, seed=7))
    gate = CallGate(LOOSE)
    retry = replace(FAST, attempts=12)
    async with client_for(box, protocol, gate=gate, retry=retry) as client:
        results = [await client.search(JPEG, SearchFilters()) for _ in range(4)]
    stats = box.stats()
    assert all(offers(r) for r in results)
    assert stats["faults"]["5xx"] > 0
    assert gate.spent == stats["total_calls"] == sum(r.http_calls for r in results)


async def test_the_budget_stops_calls(start_sandbox: StartSandbox) -> None:
    box = await start_sandbox()
    gate = CallGate(LOOSE, budget=3)
    async with client_for(box, "ocean", gate=gate) as client:
        await client.search(JPEG, SearchFilters())
        with pytest.raises(BudgetExhausted):
            await client.search(JPEG, SearchFilters())
    # The second search reserves its upload and query up front: the one call left is too few,
    # so it sends no upload that could never be queried.
    assert gate.spent == box.stats()["total_calls"] == 2


class RecordingGate(CallGate):
    """A call gate that remembers the reservation each acquire draws from."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.drawn: list[Reservation | None] = []

    async def acquire(self, reservation: Reservation | None = None) -> None:
        self.drawn.append(reservation)
        await super().acquire(reservation)


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_every_attempt_of_a_search_draws_from_its_one_reservation(
    start_sandbox: StartSandbox, protocol: ProtocolName
) -> None:
    box = await start_sandbox(faults=Faults(error_5xx=0.5, seed=7))
    gate = RecordingGate(LOOSE, budget=1000)
    async with client_for(box, protocol, gate=gate, retry=replace(FAST, attempts=12)) as client:
        first = await client.search(JPEG, SearchFilters())
        second = await client.search(JPEG, SearchFilters())
    calls = first.http_calls + second.http_calls
    assert box.stats()["faults"]["5xx"] > 0 and len(gate.drawn) == calls
    one, other = gate.drawn[0], gate.drawn[-1]
    assert isinstance(one, Reservation) and isinstance(other, Reservation) and one is not other
    assert one.calls == other.calls == client.calls_per_search
    # Retries included, each search's attempts drew from its own reservation, and only from it.
    assert gate.drawn == [one] * first.http_calls + [other] * second.http_calls
    assert (one.used, other.used) == (first.http_calls, second.http_calls)


async def test_a_search_the_budget_left_cannot_cover_makes_no_call(
    start_sandbox: StartSandbox,
) -> None:
    box = await start_sandbox()
    gate = CallGate(LOOSE, budget=1)
    # No access token: a search that reserved only after refreshing one would call getToken.
    with pytest.raises(BudgetExhausted, match="too little is left"):
        await search(box, "ocean", gate=gate, creds=credentials(access_token=None))
    assert box.stats()["calls"] == {}
    assert gate.spent == 0
    # One call is all a seed search needs: the gate refused the ocean search's two, not all.
    result = await search(box, "seed", gate=gate)
    assert offers(result)
    assert gate.spent == box.stats()["total_calls"] == 1


async def test_concurrent_searches_never_strand_an_upload(start_sandbox: StartSandbox) -> None:
    box = await start_sandbox()
    gate = CallGate(LOOSE, budget=3)
    async with client_for(box, "ocean", gate=gate) as client:
        outcomes = await asyncio.gather(
            *(client.search(JPEG, SearchFilters()) for _ in range(2)), return_exceptions=True
        )
    assert sorted(type(o).__name__ for o in outcomes) == ["BudgetExhausted", "SearchResult"]
    # Each upload has its query: the search that could not reserve both sent neither.
    assert box.stats()["calls"] == {OCEAN_UPLOAD: 1, OCEAN_QUERY: 1}
    assert gate.spent == 2


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_expired_token_is_refreshed_once_and_stored(
    start_sandbox: StartSandbox,
    protocol: ProtocolName,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    box = await start_sandbox(token_ttl=1.0)
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


async def test_concurrent_searches_refresh_only_once(start_sandbox: StartSandbox) -> None:
    box = await start_sandbox()
    async with client_for(box, "seed", creds=credentials(access_token="stale-token")) as client:
        results = await asyncio.gather(*(client.search(JPEG, SearchFilters()) for _ in range(4)))
    assert all(offers(r) for r in results)
    stats = box.stats()
    assert stats["calls"]["system.oauth2.getToken"] == 1
    assert stats["calls"][SEED_API] == 8  # each refused once, then answered


async def test_stored_token_is_preferred_to_the_configured_one(
    start_sandbox: StartSandbox, tmp_path: Path
) -> None:
    box = await start_sandbox()
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
    start_sandbox: StartSandbox, protocol: ProtocolName
) -> None:
    box = await start_sandbox(token_ttl=0.0)
    error = await failure(box, protocol, creds=credentials(refresh_token=None))
    assert isinstance(error, FatalGatewayError)
    assert error.code in ("401", "27")
    assert "IMG1688_ACCESS_TOKEN" in error.fix
    assert box.stats()["total_calls"] == 1


async def test_a_refused_refresh_token_is_fatal(start_sandbox: StartSandbox) -> None:
    box = await start_sandbox()
    error = await failure(
        box, "ocean", creds=credentials(access_token="stale-token", refresh_token="bad-refresh")
    )
    assert isinstance(error, FatalGatewayError) and error.code == "invalid_grant"
    assert "bad-refresh" not in str(error)


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_token_expired_again_after_refreshing_is_fatal(
    start_sandbox: StartSandbox, protocol: ProtocolName
) -> None:
    box = await start_sandbox(token_ttl=0.0)  # every token, the refreshed one too, is born expired
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
    start_sandbox: StartSandbox, protocol: ProtocolName, setup: dict, codes: set[str], fix: str
) -> None:
    box = await start_sandbox(**setup.get("config", {}))
    gate = CallGate(LOOSE)
    creds = credentials(**setup.get("creds", {}))
    error = await failure(box, protocol, creds=creds, gate=gate, retry=replace(FAST, attempts=5))
    assert isinstance(error, FatalGatewayError)
    assert error.code in codes
    assert fix in error.fix
    assert gate.spent == box.stats()["total_calls"] == 1  # never retried


@pytest.mark.parametrize(("protocol", "api"), [("ocean", OCEAN_QUERY), ("seed", SEED_API)])
async def test_denied_api_asks_for_permission(
    start_sandbox: StartSandbox, protocol: ProtocolName, api: str
) -> None:
    box = await start_sandbox(deny_apis=(api,))
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
    start_sandbox: StartSandbox, protocol: ProtocolName, image: bytes
) -> None:
    box = await start_sandbox()
    error = await failure(box, protocol, image=image)
    assert isinstance(error, ImageRejected) and error.code == "isv.invalid-image"
    assert box.stats()["total_calls"] == 1


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


# --- a gateway that cannot be reached --------------------------------------------------------


@pytest.mark.parametrize(
    ("where", "code", "says"),
    [
        ("refusing", "connect", "Connection refused"),
        ("unresolvable", "dns", "nonexistent.invalid"),
        ("plain http", "tls", "WRONG_VERSION_NUMBER"),  # https:// to a server without TLS
    ],
)
async def test_an_unreachable_gateway_is_fatal_and_costs_no_call(
    start_sandbox: StartSandbox, refusing_url: str, where: str, code: str, says: str
) -> None:
    box = await start_sandbox()
    url = {
        "refusing": refusing_url,
        "unresolvable": UNRESOLVABLE,
        "plain http": box.url.replace("http://", "https://"),
    }[where]
    gate = CallGate(LOOSE, budget=4)
    client = client_at(url, "ocean", gate=gate, retry=replace(FAST, attempts=3))
    with pytest.raises(GatewayUnreachable) as caught:
        async with client:
            await client.search(JPEG, SearchFilters())
    error = caught.value
    assert error.code == code
    assert url in error.message and says in error.message
    assert "gateway.endpoint" in error.fix and "DNS" in error.fix
    assert_no_secret(error)
    # Three attempts, none of which sent a request: nothing spent, nothing in the window.
    assert (gate.spent, gate.budget.spent, gate.calls_in_window()) == (0, 0, 0)
    assert box.stats()["total_calls"] == 0


async def test_once_the_gateway_has_answered_a_refused_connection_is_only_transient(
    refusing_url: str,
) -> None:
    gate = CallGate(LOOSE)
    client = client_at(refusing_url, "seed", gate=gate, contact=Contact(reached=True))
    with pytest.raises(Unreachable) as caught:
        async with client:
            await client.search(JPEG, SearchFilters())
    assert not isinstance(caught.value, FatalGatewayError)
    assert caught.value.code == "connect"
    assert gate.spent == 0


async def test_an_unreachable_token_endpoint_is_not_a_token_problem(refusing_url: str) -> None:
    # No access token: the first thing the client does is refresh one, which cannot connect.
    client = client_at(refusing_url, "seed", creds=credentials(access_token=None))
    with pytest.raises(GatewayUnreachable) as caught:
        async with client:
            await client.search(JPEG, SearchFilters())
    assert "IMG1688_REFRESH_TOKEN" not in caught.value.fix


# --- one window per API ------------------------------------------------------------------------


async def test_per_api_gates_admit_the_upload_and_the_query_each_in_its_window(
    start_sandbox: StartSandbox,
) -> None:
    box = await start_sandbox()
    gates = AppGates.build({OCEAN_UPLOAD: LOOSE, OCEAN_QUERY: LOOSE}, CallBudget())
    async with client_for(box, "ocean", gate=gates) as client:
        for _ in range(2):
            assert offers(await client.search(JPEG, SearchFilters()))
    assert gates.for_api(OCEAN_UPLOAD).spent == gates.for_api(OCEAN_QUERY).spent == 2
    assert gates.budget.spent == box.stats()["total_calls"] == 4


class StuckResolver(AbstractResolver):
    """A DNS lookup that never ends: an attempt waits before it has any connection."""

    def __init__(self) -> None:
        self.asked = asyncio.Event()

    async def resolve(self, host: str, port: int = 0, family: Any = socket.AF_INET) -> Any:
        self.asked.set()
        await asyncio.Event().wait()

    async def close(self) -> None:
        pass


async def test_an_attempt_cancelled_before_it_had_a_connection_costs_nothing() -> None:
    resolver = StuckResolver()
    gate = CallGate(LOOSE, budget=2)
    async with client_session(connector=aiohttp.TCPConnector(resolver=resolver)) as session:
        client = client_at("http://gateway.test", "seed", gate=gate, session=session)
        searching = asyncio.create_task(client.search(JPEG, SearchFilters()))
        await resolver.asked.wait()  # admitted by the gate, now looking the host up
        assert gate.spent == 1
        searching.cancel()
        with pytest.raises(asyncio.CancelledError):
            await searching
    assert (gate.spent, gate.budget.spent, gate.calls_in_window()) == (0, 0, 0)


async def test_an_attempt_cancelled_after_it_reached_the_gateway_counts(
    start_sandbox: StartSandbox,
) -> None:
    box = await start_sandbox(faults=Faults(slow=1.0, slow_seconds=1.0))
    gate = CallGate(LOOSE)
    async with client_for(box, "seed", gate=gate) as client:
        searching = asyncio.create_task(client.search(JPEG, SearchFilters()))
        async with asyncio.timeout(10):
            # The sandbox counts it in-process and says so only in its stats: poll them.
            while not box.stats()["arrivals"]:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        searching.cancel()
        with pytest.raises(asyncio.CancelledError):
            await searching
    assert gate.spent == gate.budget.spent == len(box.stats()["arrivals"]) == 1


async def test_without_a_tracing_session_every_attempt_counts(refusing_url: str) -> None:
    gate = CallGate(LOOSE)
    async with aiohttp.ClientSession() as plain:
        client = client_at(
            refusing_url, "seed", gate=gate, retry=replace(FAST, attempts=2), session=plain
        )
        with pytest.raises(GatewayUnreachable):
            await client.search(JPEG, SearchFilters())
    assert gate.spent == 2  # nothing proves they never left: they count
