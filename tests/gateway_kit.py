"""Helpers for the tests that run the gateway client against the sandbox on loopback.

The fixtures built on these (``client_catalogue``, ``start_sandbox``, ``shared_sandbox``) are in
``conftest.py``. Every sandbox knows one app: :data:`APP_KEY`, :data:`APP_SECRET`, :data:`TOKEN`
and :data:`REFRESH`, and may know :data:`APP2` too (``extra_apps=(APP2,)``); none of their
secrets may ever show in an error.
"""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageDraw

from engine.client import GatewayClient, RetryPolicy, SearchFilters, SearchResult
from engine.credentials import Credentials, TokenStore
from engine.errors import GatewayError
from engine.protocol import ProtocolName
from engine.ratelimit import AppGates, CallGate, Rate
from engine.sandbox import Sandbox, SandboxApp, SandboxConfig
from engine.sandbox.catalogue import Catalogue

APP_KEY = "app-5521"
APP_SECRET = "app-secret-c0ffee"
TOKEN = "access-token-f00d"
REFRESH = "refresh-token-beef"
APP2 = SandboxApp("app-7730", "app2-secret-d00d", "access2-token-cafe", "refresh2-token-babe")
SECRETS = (APP_SECRET, TOKEN, REFRESH, APP2.app_secret, APP2.access_token, "refresh2-token-babe")
FAST = RetryPolicy(attempts=1, base_delay=0.01, max_delay=0.05, timeout=10)
LOOSE = Rate(10_000, 1.0)
UNRESOLVABLE = "http://nonexistent.invalid"
"""A URL whose host name never resolves (``.invalid`` is reserved for that, RFC 2606)."""

COLOURS = [(220, 30, 30), (30, 60, 220), (40, 170, 60), (240, 200, 20)]

StartSandbox = Callable[..., Awaitable[Sandbox]]
"""``await start_sandbox(**config_changes)`` starts a sandbox that knows our app."""


def draw_jpeg(colour: tuple[int, int, int], side: int = 240) -> bytes:
    img = Image.new("RGB", (side, side), "white")
    ImageDraw.Draw(img).ellipse((side // 5, side // 4, side * 4 // 5, side * 3 // 4), fill=colour)
    out = io.BytesIO()
    img.save(out, "JPEG", quality=90)
    return out.getvalue()


JPEG = draw_jpeg(COLOURS[0])
"""The photo of the catalogue's first product (offer 700000000000)."""


def write_catalogue(directory: Path) -> Catalogue:
    """A catalogue of one product per colour of :data:`COLOURS`, written to ``directory``."""
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


@asynccontextmanager
async def sandboxes(catalogue: Catalogue) -> AsyncIterator[StartSandbox]:
    """Start sandboxes on demand; every one is stopped when the context ends."""
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


def credentials_of(app: SandboxApp, **changes: Any) -> Credentials:
    """The credentials of a sandbox's app, with ``changes``."""
    own = Credentials(app.app_key, app.app_secret, app.access_token, app.refresh_token)
    return replace(own, **changes)


def client_for(box: Sandbox, protocol: ProtocolName, **options: Any) -> GatewayClient:
    """A client of our app for the sandbox ``box`` (``options`` as for :func:`client_at`)."""
    return client_at(box.url, protocol, **options)


def client_at(
    url: str,
    protocol: ProtocolName,
    *,
    gate: CallGate | AppGates | None = None,
    retry: RetryPolicy = FAST,
    creds: Credentials | None = None,
    store: TokenStore | None = None,
    **options: Any,
) -> GatewayClient:
    """A client of our app for the gateway at ``url``; ``options`` go to the client as they are
    (``session``, ``contact``)."""
    return GatewayClient(
        base_url=url,
        protocol=protocol,
        credentials=creds or credentials(),
        gate=gate or CallGate(LOOSE),
        retry=retry,
        token_store=store,
        **options,
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
