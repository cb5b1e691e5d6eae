"""The sandbox gateway over real HTTP on 127.0.0.1, signed with engine.signing."""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from PIL import Image, ImageDraw

from engine.client import classify_ocean, classify_seed
from engine.commands import sandbox as sandbox_command
from engine.errors import TransientError
from engine.ratelimit import Rate
from engine.sandbox import Faults, Sandbox, SandboxApp, SandboxConfig
from engine.sandbox.catalogue import Catalogue
from engine.sandbox.faults import Fault, FaultPicker
from engine.signing import ocean_signature, ocean_timestamp, seed_signature, seed_timestamp

NS = "com.alibaba.fenxiao.crossborder"
UPLOAD = "product.image.upload"
QUERY = "product.search.imageQuery"
SEED = "alibaba.image.search.item"
ROOT = Path(__file__).resolve().parents[1]

# offer_id % 4 covers every seed item style; prices, MOQs, tiers and freight differ.
PRODUCTS = [
    # offer_id, colour, shape, price, tiers, min_order, freight
    (610947572360, (220, 30, 30), "ellipse", "12.50", [(2, "15.00")], 2, "free"),
    (610947572361, (30, 60, 220), "rectangle", "8.00", [], 10, "paid"),
    (610947572362, (40, 170, 60), "triangle", "30.00", [(1, "33.00"), (50, "29.50")], 1, "free"),
    (610947572363, (240, 200, 20), "ellipse", "55.00", [], 5, "paid"),
    (610947572364, (150, 40, 170), "rectangle", "3.20", [(100, "2.90")], 100, "free"),
    (610947572365, (20, 20, 20), "triangle", "19.90", [], 3, "paid"),
]


def _draw(colour: tuple[int, int, int], shape: str, side: int = 400) -> Image.Image:
    img = Image.new("RGB", (side, side), "white")
    draw = ImageDraw.Draw(img)
    box = (side // 5, side // 4, side * 4 // 5, side * 3 // 4)
    if shape == "ellipse":
        draw.ellipse(box, fill=colour)
    elif shape == "rectangle":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon(
            [(side // 2, side // 6), (side // 6, side * 5 // 6), (side * 5 // 6, side * 5 // 6)],
            fill=colour,
        )
    return img


def _encode(img: Image.Image, fmt: str = "JPEG") -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return out.getvalue()


@pytest.fixture(scope="session")
def catalogue_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("catalogue")
    entries = []
    for oid, colour, shape, price, tiers, moq, freight in PRODUCTS:
        name = f"{oid}.jpg"
        (directory / name).write_bytes(_encode(_draw(colour, shape)))
        entries.append(
            {
                "offer_id": oid,
                "image": name,
                "title": f"测试商品{oid % 100}",
                "title_en": f"test product {oid % 100}",
                "price": price,
                "price_tiers": [{"min_quantity": q, "price": p} for q, p in tiers],
                "min_order": moq,
                "unit": "件",
                "month_sold": oid % 1000,
                "company": "义乌市测试有限公司",
                "province": "浙江省",
                "city": "金华市",
                "freight": freight,
                "category_id": 7,
            }
        )
    (directory / "catalogue.json").write_text(json.dumps(entries, ensure_ascii=False), "utf-8")
    return directory


@pytest.fixture(scope="session")
def catalogue(catalogue_dir: Path) -> Catalogue:
    return Catalogue.load(catalogue_dir)


def product_image(catalogue_dir: Path, index: int) -> bytes:
    return (catalogue_dir / f"{PRODUCTS[index][0]}.jpg").read_bytes()


@dataclass
class Reply:
    status: int
    headers: Mapping[str, str]
    text: str

    def json(self) -> Any:
        return json.loads(self.text)


class Wire:
    """A minimal, deliberately independent request builder for both protocols."""

    def __init__(self, session: aiohttp.ClientSession, sandbox: Sandbox) -> None:
        self.session = session
        self.sandbox = sandbox
        self.config = sandbox.config
        self.token = sandbox.config.access_token

    async def post(
        self, path: str, form: Mapping[str, str], query: Mapping[str, str] | None = None
    ) -> Reply:
        async with self.session.post(self.sandbox.url + path, data=form, params=query) as resp:
            return Reply(resp.status, resp.headers, await resp.text())

    async def ocean(
        self,
        api: str,
        params: Mapping[str, str],
        *,
        app_key: str | None = None,
        secret: str | None = None,
        timestamp: str | None = None,
        sign: bool = True,
    ) -> Reply:
        app_key = app_key or self.config.app_key
        form = {
            **params,
            "access_token": self.token,
            "_aop_timestamp": timestamp or ocean_timestamp(),
        }
        url_path = f"param2/1/{NS}/{api}/{app_key}"
        if sign:
            form["_aop_signature"] = ocean_signature(
                url_path, form, secret or self.config.app_secret
            )
        return await self.post("/openapi/" + url_path, form)

    async def upload(self, image: bytes, **kwargs: Any) -> Reply:
        param = json.dumps({"imageBase64": base64.b64encode(image).decode()})
        return await self.ocean(UPLOAD, {"uploadImageParam": param}, **kwargs)

    async def query(self, image_id: str, **fields: Any) -> Reply:
        param = json.dumps(
            {"imageId": image_id, "beginPage": 1, "pageSize": 20, "country": "en", **fields}
        )
        return await self.ocean(QUERY, {"offerQueryParam": param})

    async def image_id(self, image: bytes) -> str:
        reply = await self.upload(image)
        assert reply.status == 200, reply.text
        return reply.json()["result"]["result"]

    async def seed(
        self,
        image: bytes | None,
        *,
        extra: Mapping[str, str] | None = None,
        app_key: str | None = None,
        secret: str | None = None,
        timestamp: str | None = None,
        sign: bool = True,
        in_query: bool = False,
    ) -> Reply:
        system = {
            "app_key": app_key or self.config.app_key,
            "method": SEED,
            "format": "json",
            "v": "2.0",
            "timestamp": timestamp or seed_timestamp(),
            "access_token": self.token,
        }
        business = {"page_size": "20", **(extra or {})}
        if image is not None:
            business["image"] = base64.b64encode(image).decode()
        if sign:
            system["sign"] = seed_signature(
                {**system, **business}, secret or self.config.app_secret
            )
        path = f"/openapi/param2/1/{SEED}/2.0"
        if in_query:
            return await self.post(path, business, query=system)
        return await self.post(path, {**system, **business})

    async def refresh(self, refresh_token: str | None = None) -> Reply:
        form = {
            "grant_type": "refresh_token",
            "client_id": self.config.app_key,
            "client_secret": self.config.app_secret,
            "refresh_token": refresh_token or self.config.refresh_token or "",
        }
        return await self.post(
            f"/openapi/http/1/system.oauth2/getToken/{self.config.app_key}", form
        )


@pytest.fixture
async def open_sandbox(catalogue: Catalogue, catalogue_dir: Path) -> AsyncIterator[Any]:
    """``await open_sandbox(**config)`` -> a running sandbox's :class:`Wire`."""
    async with aiohttp.ClientSession() as session:
        stack: list[Sandbox] = []

        async def start(**changes: Any) -> Wire:
            config = replace(SandboxConfig(catalogue_dir=catalogue_dir), **changes)
            sandbox = Sandbox(config, catalogue=catalogue)
            await sandbox.__aenter__()
            stack.append(sandbox)
            return Wire(session, sandbox)

        yield start
        for sandbox in stack:
            await sandbox.__aexit__(None, None, None)


def ocean_error(reply: Reply) -> tuple[int, str]:
    body = reply.json()
    assert set(body) == {"error_code", "error_message", "exception", "request_id"}
    return reply.status, body["error_code"]


def seed_error(reply: Reply) -> tuple[int, int, str | None]:
    error = reply.json()["error_response"]
    return reply.status, error["code"], error.get("sub_code")


def alpha_png() -> bytes:
    return _encode(_draw((220, 30, 30), "ellipse").convert("RGBA"), "PNG")


def large_jpeg() -> bytes:
    return _encode(_draw((220, 30, 30), "ellipse", side=1200))


# --- successful searches --------------------------------------------------------------------


async def test_ocean_search_ranks_the_true_product_first(open_sandbox, catalogue_dir):
    wire = await open_sandbox()
    for index in (0, 2, 4):
        image = product_image(catalogue_dir, index)
        upload = await wire.upload(image)
        assert upload.status == 200
        assert upload.json()["result"]["success"] == "true"
        reply = await wire.query(upload.json()["result"]["result"])
        assert reply.status == 200
        result = reply.json()["result"]
        assert (result["success"], result["code"]) == ("true", "200")
        page = result["result"]
        assert page["totalRecords"] == len(PRODUCTS)
        assert (page["totalPage"], page["pageSize"], page["currentPage"]) == (1, 20, 1)
        offer = page["data"][0]
        oid, _, _, price, tiers, moq, freight = PRODUCTS[index]
        assert offer["offerId"] == oid
        assert "similarity" not in offer
        assert offer["imageUrl"] == f"{wire.sandbox.url}/img/ibank/O1CN01{oid}.jpg"
        lowest = min([price, *(p for _, p in tiers)], key=float)
        assert offer["priceInfo"]["price"] == lowest
        assert float(offer["priceInfo"]["consignPrice"]) > float(lowest)
        assert offer["minOrderQuantity"] == moq
        assert offer["productSimpleShippingInfo"]["freeShipping"] is (freight == "free")
        assert offer["companyAddress"] == "浙江省金华市"
        assert offer["priceRangeList"] == [{"startQuantity": q, "price": p} for q, p in tiers]
    no_tiers = next(o for o in page["data"] if o["offerId"] == PRODUCTS[1][0])
    assert "priceRangeList" not in no_tiers
    searches = wire.sandbox.stats()["searches"]
    assert searches[hashlib.sha256(product_image(catalogue_dir, 4)).hexdigest()] == 1


async def test_ocean_pages_and_filters_price_but_not_moq_or_freight(open_sandbox, catalogue_dir):
    wire = await open_sandbox()
    image_id = await wire.image_id(product_image(catalogue_dir, 0))
    full = (await wire.query(image_id)).json()["result"]["result"]["data"]
    second = (await wire.query(image_id, pageSize=2, beginPage=2)).json()["result"]["result"]
    assert (second["totalPage"], second["currentPage"]) == (3, 2)
    assert [o["offerId"] for o in second["data"]] == [o["offerId"] for o in full[2:4]]
    priced = (await wire.query(image_id, priceStart="8", priceEnd="30")).json()["result"]["result"]
    prices = sorted(float(o["priceInfo"]["price"]) for o in priced["data"])
    assert prices == [8.0, 12.5, 19.9, 29.5]
    assert priced["totalRecords"] == 4
    # MOQ 100 and paid freight offers stay: ocean never filters them.
    assert {o["minOrderQuantity"] for o in full} >= {100, 1}


async def test_seed_search_ranks_true_product_first_in_varied_formats(open_sandbox, catalogue_dir):
    wire = await open_sandbox()
    reply = await wire.seed(product_image(catalogue_dir, 2), in_query=True)
    assert reply.status == 200, reply.text
    body = reply.json()["image_search_item_response"]
    assert body["total_results"] == len(PRODUCTS)
    items = body["items"]["item"]
    assert int(items[0]["item_id"]) == PRODUCTS[2][0]
    by_id = {int(item["item_id"]): item for item in items}
    styles = [by_id[oid] for oid, *_ in PRODUCTS[:4]]
    assert isinstance(styles[0]["item_id"], int) and isinstance(styles[1]["item_id"], str)
    assert styles[0]["price"] == "12.50" and styles[0]["min_order_quantity"] == 2
    assert isinstance(styles[0]["similarity"], float)
    assert styles[1]["price"] == "¥8.00" and styles[1]["min_order_quantity"] == "10件"
    assert styles[1]["similarity"].endswith("%") and styles[1]["freight_type"] == "不包邮"
    assert styles[1]["address"] == "浙江省金华市"
    assert styles[2]["price"] == "29.5元" and styles[2]["min_order_quantity"] == "≥1"
    assert "similarity" not in styles[2] and styles[2]["address"]["city"] == "金华市"
    assert styles[2]["price_ranges"] == [
        {"start_quantity": 1, "price": "33.00"},
        {"start_quantity": 50, "price": "29.50"},
    ]
    assert styles[3]["price"] == 55.0 and styles[3]["min_order_quantity"] == "5个起批"
    top = next(i for i in items if int(i["item_id"]) == PRODUCTS[0][0])
    assert top["freight_type"] == "free"
    assert top["pic_url"] == f"{wire.sandbox.url}/img/ibank/O1CN01{PRODUCTS[0][0]}.jpg"


async def test_seed_filters_price_moq_and_freight(open_sandbox, catalogue_dir):
    wire = await open_sandbox()
    extra = {
        "price_start": "3",
        "price_end": "20",
        "min_order_quantity": "3",
        "freight_type": "paid",
    }
    reply = await wire.seed(product_image(catalogue_dir, 1), extra=extra)
    items = reply.json()["image_search_item_response"]["items"]["item"]
    assert sorted(int(i["item_id"]) for i in items) == [PRODUCTS[1][0], PRODUCTS[5][0]]
    capped = await wire.seed(product_image(catalogue_dir, 1), extra={"page_size": "2"})
    body = capped.json()["image_search_item_response"]
    assert (len(body["items"]["item"]), body["total_results"]) == (2, len(PRODUCTS))


# --- refusals -------------------------------------------------------------------------------


async def test_ocean_gateway_refusals(open_sandbox, catalogue_dir):
    image = product_image(catalogue_dir, 0)
    wire = await open_sandbox(deny_apis=(QUERY,))
    assert ocean_error(await wire.upload(image, secret="wrong")) == (400, "gw.SignatureInvalid")
    assert ocean_error(await wire.upload(image, sign=False)) == (400, "gw.SignatureMissing")
    assert ocean_error(await wire.upload(image, app_key="nobody")) == (400, "gw.AppKeyNotFound")
    stale = str(int((time.time() - 700) * 1000))
    assert ocean_error(await wire.upload(image, timestamp=stale)) == (400, "gw.TimestampInvalid")
    assert ocean_error(await wire.query("whatever")) == (400, "gw.APIACLDecline")
    unknown = await wire.ocean("product.unknown", {})
    assert ocean_error(unknown) == (400, "gw.APIUnsupported")
    wire.token = "forged"
    assert ocean_error(await wire.upload(image)) == (401, "401")
    stats = wire.sandbox.stats()
    assert stats["arrivals"] == []  # nothing was admitted
    assert stats["error_codes"]["gw.SignatureInvalid"] == 1 and stats["statuses"]["400"] == 6


async def test_ocean_expired_token_ip_and_usage(open_sandbox, catalogue_dir):
    image = product_image(catalogue_dir, 0)
    expired = await open_sandbox(token_ttl=1e-9)
    assert ocean_error(await expired.upload(image)) == (401, "401")
    walled = await open_sandbox(allow_ips=("10.9.9.9",))
    assert ocean_error(await walled.upload(image)) == (403, "gw.IpNotInWhiteList")
    limited = await open_sandbox(usage_limit=1)
    assert (await limited.upload(image)).status == 200
    assert ocean_error(await limited.upload(image)) == (400, "gw.NoUsageLeftError")


async def test_ocean_business_failures(open_sandbox, catalogue_dir):
    wire = await open_sandbox()
    for bad in (alpha_png(), large_jpeg(), b"not an image at all"):
        reply = await wire.upload(bad)
        assert reply.status == 200
        assert reply.json()["result"]["success"] == "false"
        assert reply.json()["result"]["code"] == "isv.invalid-image"
    image_id = await wire.image_id(product_image(catalogue_dir, 0))
    too_big = (await wire.query(image_id, pageSize=51)).json()["result"]
    assert (too_big["success"], too_big["code"]) == ("false", "isv.invalid-parameter")
    assert (await wire.query("feedface")).json()["result"]["success"] == "false"
    assert wire.sandbox.stats()["searches"] == {}


async def test_image_byte_limit(open_sandbox, catalogue_dir):
    image = product_image(catalogue_dir, 0)
    wire = await open_sandbox(max_image_bytes=len(image) - 1)
    assert (await wire.upload(image)).json()["result"]["code"] == "isv.invalid-image"
    assert seed_error(await wire.seed(image)) == (200, 15, "isv.invalid-image")


async def test_seed_refusals(open_sandbox, catalogue_dir):
    image = product_image(catalogue_dir, 0)
    wire = await open_sandbox()
    assert seed_error(await wire.seed(image, secret="wrong")) == (200, 25, None)
    assert seed_error(await wire.seed(image, sign=False)) == (200, 24, None)
    assert seed_error(await wire.seed(image, app_key="nobody")) == (200, 29, None)
    stale = "2020-01-01 00:00:00"
    assert seed_error(await wire.seed(image, timestamp=stale)) == (200, 31, None)
    assert seed_error(await wire.seed(image, extra={"page_size": "51"})) == (
        200,
        41,
        "isv.invalid-parameter",
    )
    assert seed_error(await wire.seed(alpha_png())) == (200, 15, "isv.invalid-image")
    assert seed_error(await wire.seed(large_jpeg())) == (200, 15, "isv.invalid-image")
    wire.token = "forged"
    assert seed_error(await wire.seed(image)) == (200, 27, None)
    assert wire.sandbox.stats()["error_codes"]["isv.invalid-image"] == 2


async def test_seed_expired_token_ip_acl_and_usage(open_sandbox, catalogue_dir):
    image = product_image(catalogue_dir, 0)
    expired = await open_sandbox(token_ttl=1e-9)
    assert seed_error(await expired.seed(image)) == (200, 27, None)
    walled = await open_sandbox(allow_ips=("10.9.9.9",))
    assert seed_error(await walled.seed(image)) == (403, 11, "isv.ip-not-in-whitelist")
    denied = await open_sandbox(deny_apis=(SEED,))
    assert seed_error(await denied.seed(image)) == (200, 11, "isv.api-acl-decline")
    limited = await open_sandbox(usage_limit=1)
    assert (await limited.seed(image)).status == 200
    no_usage = seed_error(await limited.seed(image))
    assert no_usage == (200, 7, "accesscontrol.limited-by-api-access-count")


async def test_seed_wrong_method_is_invalid_method(open_sandbox):
    wire = await open_sandbox()
    reply = await wire.post("/openapi/param2/1/alibaba.other.api/2.0", {"app_key": "sandbox-app"})
    assert seed_error(reply) == (200, 22, None)


# --- tokens ---------------------------------------------------------------------------------


async def test_refresh_issues_a_new_token_and_kills_the_old(open_sandbox, catalogue_dir):
    image = product_image(catalogue_dir, 0)
    wire = await open_sandbox()
    assert (await wire.refresh("not-the-refresh-token")).status == 401
    assert (await wire.refresh("not-the-refresh-token")).json()["error"] == "invalid_grant"
    reply = await wire.refresh()
    assert reply.status == 200
    body = reply.json()
    assert body["expires_in"] == "36000" and body["refresh_token"] == wire.config.refresh_token
    assert body["refresh_token_timeout"].endswith("+0800")
    old, wire.token = wire.token, body["access_token"]
    assert wire.token != old
    assert (await wire.upload(image)).status == 200
    assert (await wire.seed(image)).status == 200
    wire.token = old
    assert ocean_error(await wire.upload(image)) == (401, "401")
    assert seed_error(await wire.seed(image)) == (200, 27, None)
    assert wire.sandbox.stats()["calls"]["system.oauth2.getToken"] == 3


# --- rate window ----------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["ocean", "seed"])
async def test_rate_window_refuses_the_fourth_call_until_a_slot_frees(
    open_sandbox, catalogue_dir, protocol
):
    wire = await open_sandbox(rate=Rate(3, 1.0))
    image = product_image(catalogue_dir, 0)
    call = wire.upload if protocol == "ocean" else wire.seed
    for _ in range(3):
        assert (await call(image)).status == 200
    refused = await call(image)
    assert refused.headers["Retry-After"] == "1"
    if protocol == "ocean":
        assert ocean_error(refused) == (400, "gw.QosAppFrequencyLimit")
    else:
        assert seed_error(refused) == (429, 7, "accesscontrol.limited-by-app-access-count")
    stats = wire.sandbox.stats()
    assert len(stats["arrivals"]) == 3 and stats["rate_limited"] == 1
    await asyncio.sleep(stats["arrivals"][0] + 1.0 - time.monotonic() + 0.05)
    assert (await call(image)).status == 200
    assert len(wire.sandbox.stats()["arrivals"]) == 4


async def test_both_protocols_share_one_window_and_refusals_do_not_count(
    open_sandbox, catalogue_dir
):
    wire = await open_sandbox(rate=Rate(2, 30.0))
    image = product_image(catalogue_dir, 0)
    assert (await wire.upload(image)).status == 200
    assert (await wire.seed(image)).status == 200
    for _ in range(3):
        assert (await wire.seed(image)).status == 429
    assert (await wire.upload(image)).headers["Retry-After"] in {"29", "30"}
    assert len(wire.sandbox.stats()["arrivals"]) == 2


# --- faults ---------------------------------------------------------------------------------


async def test_fault_5xx(open_sandbox, catalogue_dir):
    wire = await open_sandbox(faults=Faults(error_5xx=1.0))
    statuses = set()
    for _ in range(6):
        reply = await wire.upload(product_image(catalogue_dir, 0))
        statuses.add(reply.status)
        if reply.headers["Content-Type"].startswith("application/json"):
            assert reply.json()["error_code"].startswith("gw.")
    assert statuses <= {500, 502, 503} and statuses
    seed = await wire.seed(product_image(catalogue_dir, 0))
    assert seed.status in {500, 502, 503} and "<html>" in seed.text
    stats = wire.sandbox.stats()
    assert stats["faults"]["5xx"] == 7 and len(stats["arrivals"]) == 7


async def test_fault_malformed(open_sandbox, catalogue_dir):
    wire = await open_sandbox(faults=Faults(malformed=1.0))
    for reply in (await wire.upload(product_image(catalogue_dir, 0)), await wire.seed(b"x")):
        assert reply.status == 200
        with pytest.raises(json.JSONDecodeError):
            reply.json()
    assert wire.sandbox.stats()["faults"]["malformed"] == 2


async def test_fault_drop_disconnects(open_sandbox, catalogue_dir):
    wire = await open_sandbox(faults=Faults(drop=1.0))
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await wire.upload(product_image(catalogue_dir, 0))
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await wire.seed(product_image(catalogue_dir, 0))
    stats = wire.sandbox.stats()
    assert stats["faults"]["drop"] == 2 and stats["statuses"] == {}


async def test_fault_spurious_rate_limit(open_sandbox, catalogue_dir):
    wire = await open_sandbox(faults=Faults(spurious_rate_limit=1.0))
    assert ocean_error(await wire.upload(product_image(catalogue_dir, 0))) == (
        400,
        "gw.QosAppFrequencyLimit",
    )
    seed = await wire.seed(product_image(catalogue_dir, 0))
    assert seed_error(seed)[:2] == (429, 7) and seed.headers["Retry-After"] == "1"
    stats = wire.sandbox.stats()
    assert stats["faults"]["spurious_rate_limit"] == 2 and stats["rate_limited"] == 0


async def test_fault_busy_is_a_business_failure_the_client_retries(open_sandbox, catalogue_dir):
    wire = await open_sandbox(faults=Faults(busy=1.0))
    upload = await wire.upload(product_image(catalogue_dir, 0))
    assert upload.status == 200
    assert upload.json()["result"]["success"] == "false"
    assert isinstance(classify_ocean(upload.status, upload.text, {}), TransientError)
    seed = await wire.seed(product_image(catalogue_dir, 0))
    assert seed_error(seed) == (200, 15, "isp.remote-service-error")
    assert isinstance(classify_seed(seed.status, seed.text, {}), TransientError)
    stats = wire.sandbox.stats()
    assert stats["faults"]["busy"] == 2 and stats["searches"] == {}


async def test_fault_slow_still_answers(open_sandbox, catalogue_dir):
    wire = await open_sandbox(faults=Faults(slow=1.0, slow_seconds=0.05))
    assert (await wire.upload(product_image(catalogue_dir, 0))).status == 200
    assert wire.sandbox.stats()["faults"]["slow"] == 1


def test_fault_draws_repeat_with_the_seed_and_respect_shares():
    faults = Faults(error_5xx=0.2, drop=0.3, slow=0.5, seed=7)
    a, b = FaultPicker(faults), FaultPicker(faults)
    draws = [a.decide() for _ in range(400)]
    assert draws == [b.decide() for _ in range(400)]
    counts = {kind: sum(d.fault is kind for d in draws) for kind in Fault}
    assert 40 < counts[Fault.SERVER_ERROR] < 120 and 80 < counts[Fault.DROP] < 160
    assert counts[Fault.MALFORMED] == 0 == counts[Fault.SPURIOUS_RATE_LIMIT]
    with pytest.raises(ValueError, match="exceed 1"):
        Faults(error_5xx=0.6, malformed=0.6)
    with pytest.raises(ValueError, match="not in"):
        Faults(slow=1.5)


# --- stats ----------------------------------------------------------------------------------


async def test_stats_endpoint_counts_and_resets(open_sandbox, catalogue_dir):
    wire = await open_sandbox()
    first, second = product_image(catalogue_dir, 0), product_image(catalogue_dir, 3)
    image_id = await wire.image_id(first)
    await wire.query(image_id)
    await wire.query(image_id)
    await wire.seed(second)
    await wire.seed(first, secret="wrong")
    async with wire.session.get(wire.sandbox.url + "/__sandbox__/stats") as resp:
        stats = await resp.json()
    assert stats == wire.sandbox.stats()
    assert stats["calls"] == {UPLOAD: 1, QUERY: 2, SEED: 2}
    assert stats["total_calls"] == 5
    assert stats["statuses"] == {"200": 5}
    assert stats["error_codes"] == {"25": 1}
    assert stats["searches"] == {
        hashlib.sha256(first).hexdigest(): 2,
        hashlib.sha256(second).hexdigest(): 1,
    }
    assert len(stats["arrivals"]) == 4 and stats["arrivals"] == sorted(stats["arrivals"])
    async with wire.session.post(wire.sandbox.url + "/__sandbox__/reset") as resp:
        assert resp.status == 200
    zeroed = wire.sandbox.stats()
    assert zeroed["total_calls"] == 0 and zeroed["searches"] == {} and zeroed["arrivals"] == []
    assert (await wire.query(image_id)).status == 200  # uploads survive a reset


# --- command line ---------------------------------------------------------------------------


def test_flags_build_the_config():
    parser = argparse.ArgumentParser()
    sandbox_command.add_parser(parser.add_subparsers())
    args = parser.parse_args(
        [
            "sandbox",
            "--port",
            "0",
            "--rate",
            "3/2s",
            "--token-ttl",
            "5",
            "--allow-ip",
            "10.0.0.1",
            "10.0.0.2",
            "--deny-api",
            SEED,
            "--usage-limit",
            "9",
            "--fault-5xx",
            "0.1",
            "--fault-drop",
            "0.2",
            "--fault-busy",
            "0.3",
            "--fault-seed",
            "4",
        ]
    )
    config = sandbox_command.config_from_args(args)
    assert config.rate == Rate(3, 2.0) and config.token_ttl == 5.0
    assert config.allow_ips == ("10.0.0.1", "10.0.0.2") and config.deny_apis == (SEED,)
    assert config.usage_limit == 9
    assert config.faults == Faults(error_5xx=0.1, drop=0.2, busy=0.3, seed=4)
    with pytest.raises(SystemExit):
        parser.parse_args(["sandbox", "--fault-5xx", "1.5"])


def test_command_serves_until_interrupted(catalogue_dir):
    script = (
        "import argparse, sys\n"
        "from engine.commands import sandbox\n"
        "p = argparse.ArgumentParser(); sandbox.add_parser(p.add_subparsers())\n"
        "a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-c", script, "sandbox", "--port", "0"]
    command += ["--catalogue", str(catalogue_dir)]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    ) as proc:
        try:
            banner = proc.stdout.readline()
            assert banner.startswith("img1688 sandbox listening on http://127.0.0.1:"), banner
            url = banner.split()[-1]
            lines = []
            for line in proc.stdout:
                lines.append(line)
                if line.startswith("press Ctrl-C"):
                    break

            async def fetch() -> dict:
                async with (
                    aiohttp.ClientSession() as session,
                    session.get(url + "/__sandbox__/stats") as resp,
                ):
                    return await resp.json()

            assert asyncio.run(fetch())["total_calls"] == 0
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, err
    assert "  app secret    sandbox-secret\n" in lines
    assert (
        f"  offer images  GET  {url}/img/ibank/O1CN01<offerId>.jpg (or ..._<W>x<H>.jpg)\n" in lines
    )
    assert out == "sandbox stopped\n"
    assert "Traceback" not in err


# --- several apps ---------------------------------------------------------------------------

OTHER = SandboxApp("other-app", "other-secret", "other-token", "other-refresh")


async def test_each_app_has_its_own_window_token_and_stats(open_sandbox, catalogue_dir):
    wire = await open_sandbox(rate=Rate(2, 30.0), extra_apps=(OTHER,))
    image = product_image(catalogue_dir, 0)
    mine = {"app_key": wire.config.app_key, "secret": wire.config.app_secret}
    other = {"app_key": OTHER.app_key, "secret": OTHER.app_secret}
    for _ in range(2):
        assert (await wire.upload(image, **mine)).status == 200
    assert ocean_error(await wire.upload(image, **mine)) == (400, "gw.QosAppFrequencyLimit")
    # The first app's window is full; the other app's is its own.
    assert ocean_error(await wire.upload(image, **other)) == (401, "401")  # the first's token
    wire.token = OTHER.access_token
    assert (await wire.upload(image, **other)).status == 200
    assert (await wire.seed(image, **other)).status == 200
    assert seed_error(await wire.seed(image, **other))[:2] == (429, 7)
    assert seed_error(await wire.seed(image, **mine)) == (200, 27, None)  # the other's token
    assert ocean_error(await wire.upload(image, app_key=OTHER.app_key)) == (
        400,
        "gw.SignatureInvalid",  # signed with the first app's secret
    )
    async with wire.session.get(wire.sandbox.url + "/__sandbox__/stats") as resp:
        apps = (await resp.json())["apps"]
    assert set(apps) == {wire.config.app_key, OTHER.app_key}
    first, second = apps[wire.config.app_key], apps[OTHER.app_key]
    assert first["calls"] == {UPLOAD: 3, SEED: 1} and first["rate_limited"] == 1
    assert second["calls"] == {UPLOAD: 3, SEED: 2} and second["rate_limited"] == 1
    assert len(first["arrivals"]) == len(second["arrivals"]) == 2
    assert second["api_arrivals"] == {UPLOAD: second["arrivals"][:1], SEED: second["arrivals"][1:]}
    assert wire.sandbox.stats()["rate_limited"] == 2


async def test_an_app_refreshes_its_own_token_and_has_its_own_usage(open_sandbox, catalogue_dir):
    limited = replace(OTHER, usage_limit=1)
    wire = await open_sandbox(extra_apps=(limited,))
    image = product_image(catalogue_dir, 0)
    form = {
        "grant_type": "refresh_token",
        "client_id": OTHER.app_key,
        "client_secret": OTHER.app_secret,
        "refresh_token": "other-refresh",
    }
    path = f"/openapi/http/1/system.oauth2/getToken/{OTHER.app_key}"
    assert (await wire.post(path, {**form, "client_secret": wire.config.app_secret})).status == 401
    reply = await wire.post(path, form)
    assert reply.status == 200
    wire.token = reply.json()["access_token"]
    other = {"app_key": OTHER.app_key, "secret": OTHER.app_secret}
    assert (await wire.upload(image, **other)).status == 200
    assert ocean_error(await wire.upload(image, **other)) == (400, "gw.NoUsageLeftError")
    # The first app's token and usage are untouched by the other's.
    wire.token = wire.config.access_token
    assert (await wire.upload(image)).status == 200
    assert (await wire.upload(image)).status == 200


async def test_an_api_with_a_window_of_its_own(open_sandbox, catalogue_dir):
    wire = await open_sandbox(rate=Rate(5, 30.0), api_rates={UPLOAD: Rate(1, 30.0)})
    image = product_image(catalogue_dir, 0)
    assert (await wire.upload(image)).status == 200
    assert ocean_error(await wire.upload(image)) == (400, "gw.QosAppFrequencyLimit")
    # The other APIs share the app's window, which the upload did not use.
    for _ in range(5):
        assert (await wire.seed(image)).status == 200
    assert (await wire.seed(image)).status == 429


def test_flags_add_apps():
    parser = argparse.ArgumentParser()
    sandbox_command.add_parser(parser.add_subparsers())
    args = parser.parse_args(["sandbox", "--extra-app", "k2:s2:t2", "--extra-app", "k3:s3:t3:r3"])
    config = sandbox_command.config_from_args(args)
    assert config.extra_apps == (SandboxApp("k2", "s2", "t2"), SandboxApp("k3", "s3", "t3", "r3"))
    assert [app.app_key for app in config.apps] == [config.app_key, "k2", "k3"]
    assert "s2" not in repr(config.extra_apps) and "t2" not in repr(config.extra_apps)
    for bad in ("k2:s2", "k2::t2", "a:b:c:d:e"):
        with pytest.raises(SystemExit):
            parser.parse_args(["sandbox", "--extra-app", bad])
    with pytest.raises(ValueError, match="distinct app keys"):
        sandbox_command.config_from_args(
            parser.parse_args(["sandbox", "--extra-app", f"{config.app_key}:s:t"])
        )
