"""An app's tokens: refreshed once for every task that met the expiry, kept, and kept secret."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from engine.client.fixes import TOKEN_FIX
from engine.client.tokens import AppTokens
from engine.credentials import Credentials, TokenStore
from engine.errors import FatalGatewayError, GatewayError, TokenExpired

APP = Credentials("app-1", "s3cret", access_token="old-access", refresh_token="old-refresh")
EXPIRED = TokenExpired("401", "Request need user authorized")


class Exchange:
    """Stands for the gateway's token endpoint: counts calls, answers a new pair."""

    def __init__(self, *pairs: tuple[str, str]) -> None:
        self.pairs = list(pairs)
        self.asked: list[str] = []

    async def __call__(self, refresh: str) -> tuple[str, str, float | None]:
        self.asked.append(refresh)
        await asyncio.sleep(0)  # let the other tasks pile up on the lock
        access, rotated = self.pairs.pop(0)
        return access, rotated, time.time() + 36_000


async def test_tasks_that_met_the_same_expiry_refresh_once(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "tokens.json")
    tokens = AppTokens(APP, store)
    exchange = Exchange(("new-access", "new-refresh"))
    await asyncio.gather(*(tokens.replace("old-access", EXPIRED, exchange) for _ in range(5)))
    assert exchange.asked == ["old-refresh"]
    assert (tokens.access, tokens.refresh) == ("new-access", "new-refresh")
    stored = store.load("app-1")
    assert stored is not None
    assert (stored.access_token, stored.refresh_token) == ("new-access", "new-refresh")
    # Every token the app held stays secret, the replaced ones too.
    assert {"s3cret", "old-access", "old-refresh", "new-access", "new-refresh"} <= set(
        tokens.secrets()
    )


async def test_a_valid_stored_token_is_preferred_and_an_expired_one_only_lends_its_refresh(
    tmp_path: Path,
) -> None:
    store = TokenStore(tmp_path / "tokens.json")
    store.save("app-1", "stored-access", "stored-refresh", time.time() + 3600)
    assert AppTokens(APP, store).access == "stored-access"
    store.save("app-1", "stale-access", "stale-refresh", time.time() - 1)
    tokens = AppTokens(APP, store)
    assert (tokens.access, tokens.refresh) == ("old-access", "stale-refresh")
    assert "stale-access" in tokens.secrets()


async def test_without_a_refresh_token_an_expiry_is_fatal_with_the_fix() -> None:
    tokens = AppTokens(Credentials("app-1", "s", access_token="a"), None)
    with pytest.raises(FatalGatewayError) as caught:
        await tokens.replace("a", EXPIRED, Exchange())
    assert (caught.value.code, caught.value.fix) == ("401", TOKEN_FIX)
    with pytest.raises(FatalGatewayError, match="no access token and no refresh token"):
        await AppTokens(Credentials("app-1", "s"), None).replace(None, None, Exchange())


async def test_a_refused_refresh_is_fatal_but_a_fatal_answer_keeps_its_own_fix() -> None:
    async def refused(refresh: str) -> tuple[str, str, float | None]:
        raise GatewayError("invalid_grant", "refresh token expired", status=400)

    with pytest.raises(FatalGatewayError) as caught:
        await AppTokens(APP, None).replace("old-access", EXPIRED, refused)
    assert (caught.value.code, caught.value.fix) == ("invalid_grant", TOKEN_FIX)

    async def ip_refused(refresh: str) -> tuple[str, str, float | None]:
        raise FatalGatewayError("gw.IpNotInWhiteList", "ip", fix="add the IP")

    with pytest.raises(FatalGatewayError) as caught:
        await AppTokens(APP, None).replace("old-access", EXPIRED, ip_refused)
    assert caught.value.fix == "add the IP"


async def test_a_token_already_replaced_by_another_task_is_not_refreshed_again() -> None:
    tokens = AppTokens(APP, None)
    exchange = Exchange(("new-access", "new-refresh"), ("newer", "newer-refresh"))
    await tokens.replace("old-access", EXPIRED, exchange)
    await tokens.replace("old-access", EXPIRED, exchange)  # a late task with the old token
    assert exchange.asked == ["old-refresh"]
    await tokens.replace("new-access", EXPIRED, exchange)  # the new one expired in turn
    assert tokens.access == "newer"
