"""The sandbox as a CDN and as an editable catalogue, over real HTTP on 127.0.0.1: offer photos
at the image URLs its answers give (originals, renditions, ETags, faults), offers sharing one
photo, supplier fields stated in catalogue.json, reloads, and the query keywords it saw."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict
from PIL import Image, UnidentifiedImageError
from test_sandbox import NS, QUERY, Wire, _draw, _encode

from engine.clean import WholesaleFilters, parse_response
from engine.sandbox import Sandbox, SandboxConfig
from engine.sandbox.catalogue import Catalogue, Match, Product
from engine.signing import ocean_signature, ocean_timestamp

FACTORY, RESELLER, WIDE, MISSING, CORRUPT, HTML = (
    710000000011,
    710000000012,
    710000000013,
    710000000014,
    710000000015,
    710000000016,
)
RED_ELLIPSE = _draw((220, 30, 30), "ellipse")
WIDE_PNG = Image.new("RGB", (640, 480), "white")
WIDE_PNG.paste(_draw((30, 60, 220), "rectangle", side=400), (120, 40))
GREEN_TRIANGLE = _draw((40, 170, 60), "triangle")


def entry(offer_id: int, image: str, price: str, **optional: Any) -> dict[str, Any]:
    return {
        "offer_id": offer_id,
        "image": image,
        "title": f"测试商品{offer_id % 100}",
        "title_en": f"test product {offer_id % 100}",
        "price": price,
        "price_tiers": [],
        "min_order": 2,
        "unit": "件",
        "month_sold": 10,
        "company": f"公司{offer_id % 100}",
        "province": "浙江省",
        "city": "金华市",
        "freight": "free",
        "category_id": 7,
        **optional,
    }


# The reseller comes first in the file: ties rank by offer id, not by catalogue order.
ENTRIES = [
    entry(
        RESELLER,
        "red.jpg",
        "11.00",
        repurchase_rate="7.5%",
        seller_identities=["tp_member", "verified", "tp_member"],
        one_piece_sale=True,
        ship_in="shipIn24Hours",
    ),
    entry(FACTORY, "red.jpg", "9.50"),
    entry(WIDE, "blue.png", "30.00"),
    entry(MISSING, "green.jpg", "5.00", image_fault="missing"),
    entry(CORRUPT, "green.jpg", "5.10", image_fault="corrupt"),
    entry(HTML, "green.jpg", "5.20", image_fault="html"),
]


def write_catalogue(directory: Path, entries: list[dict[str, Any]] = ENTRIES) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "red.jpg").write_bytes(_encode(RED_ELLIPSE))
    (directory / "green.jpg").write_bytes(_encode(GREEN_TRIANGLE))
    (directory / "blue.png").write_bytes(_encode(WIDE_PNG, "PNG"))
    (directory / "catalogue.json").write_text(json.dumps(entries, ensure_ascii=False), "utf-8")
    return directory


@pytest.fixture(scope="module")
def shared_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_catalogue(tmp_path_factory.mktemp("images-catalogue"))


@pytest.fixture(scope="module")
def shared_catalogue(shared_dir: Path) -> Catalogue:
    return Catalogue.load(shared_dir)


Start = Callable[..., Awaitable[Wire]]


@pytest.fixture
async def start(shared_catalogue: Catalogue) -> AsyncIterator[Start]:
    """``await start(catalogue_dir=None, **config)``: a running sandbox's :class:`Wire`; over
    the shared catalogue unless ``catalogue_dir`` names a folder for it to load itself."""
    async with aiohttp.ClientSession() as session:
        running: list[Sandbox] = []

        async def begin(catalogue_dir: Path | None = None, **changes: Any) -> Wire:
            if catalogue_dir is None:
                config = replace(SandboxConfig(), **changes)
                sandbox = Sandbox(config, catalogue=shared_catalogue)
            else:
                sandbox = Sandbox(replace(SandboxConfig(catalogue_dir=catalogue_dir), **changes))
            await sandbox.__aenter__()
            running.append(sandbox)
            return Wire(session, sandbox)

        yield begin
        for sandbox in running:
            await sandbox.__aexit__(None, None, None)


async def get(wire: Wire, url: str, **headers: str) -> tuple[int, CIMultiDict[str], bytes]:
    async with wire.session.get(url, headers=headers) as resp:
        return resp.status, resp.headers.copy(), await resp.read()


async def ocean_offers(wire: Wire, image: bytes, **fields: Any) -> list[dict[str, Any]]:
    reply = await wire.query(await wire.image_id(image), **fields)
    assert reply.status == 200, reply.text
    data: list[dict[str, Any]] = reply.json()["result"]["result"]["data"]
    return data


def photo_url(wire: Wire, offer_id: int, rendition: str = "") -> str:
    return f"{wire.sandbox.url}/img/ibank/O1CN01{offer_id}.jpg{rendition}"


def decoded(body: bytes) -> Image.Image:
    with Image.open(io.BytesIO(body)) as img:
        img.load()
        return img


# --- offers sharing one photo, and the photo behind each image URL -------------------------


async def test_offers_sharing_a_photo_are_each_returned_and_served_the_same_bytes(
    start: Start, shared_dir: Path
) -> None:
    wire = await start()
    photo = (shared_dir / "red.jpg").read_bytes()
    offers = await ocean_offers(wire, photo)
    # Both offers of the one photo, tied, ranked by offer id; each with its own price.
    assert [o["offerId"] for o in offers[:2]] == [FACTORY, RESELLER]
    assert [o["priceInfo"]["price"] for o in offers[:2]] == ["9.50", "11.00"]
    served = []
    for offer in offers[:2]:
        assert offer["imageUrl"] == photo_url(wire, offer["offerId"])
        status, headers, body = await get(wire, offer["imageUrl"])
        assert (status, headers["Content-Type"]) == (200, "image/jpeg")
        assert headers["Cache-Control"].startswith("public, max-age=")
        served.append((body, headers["ETag"]))
    assert served[0] == served[1] and served[0][0] == photo
    assert served[0][1] == f'"{hashlib.sha256(photo).hexdigest()[:32]}"'
    images = wire.sandbox.stats()["images"]
    assert images["requests"] == 2
    assert images["by_offer"] == {str(FACTORY): 1, str(RESELLER): 1}


async def test_seed_items_point_at_the_sandbox_too(start: Start, shared_dir: Path) -> None:
    wire = await start()
    reply = await wire.seed((shared_dir / "red.jpg").read_bytes())
    items = reply.json()["image_search_item_response"]["items"]["item"]
    assert [int(i["item_id"]) for i in items[:2]] == [FACTORY, RESELLER]
    assert items[0]["pic_url"] == photo_url(wire, FACTORY)
    status, _, body = await get(wire, items[0]["pic_url"])
    assert (status, body) == (200, (shared_dir / "red.jpg").read_bytes())
    # The seed names no supplier signals: its items carry none.
    assert not {"repurchaseRate", "sellerIdentities", "isOnePsale"} & set(items[0])


async def test_the_image_url_follows_the_host_the_client_called(
    start: Start, shared_dir: Path
) -> None:
    wire = await start()
    port = wire.sandbox.url.rsplit(":", 1)[1]
    image_id = await wire.image_id((shared_dir / "red.jpg").read_bytes())
    as_called = (await wire.query(image_id)).json()["result"]["result"]["data"][0]
    assert as_called["imageUrl"] == f"http://127.0.0.1:{port}/img/ibank/O1CN01{FACTORY}.jpg"
    renamed = await _query_with_host(wire, image_id, f"img-host.test:{port}")
    assert renamed["imageUrl"] == f"http://img-host.test:{port}/img/ibank/O1CN01{FACTORY}.jpg"


async def _query_with_host(wire: Wire, image_id: str, host: str) -> dict[str, Any]:
    """The first offer of a query sent to the sandbox with ``Host: host``."""
    url_path = f"param2/1/{NS}/{QUERY}/{wire.config.app_key}"
    form = {
        "offerQueryParam": json.dumps({"imageId": image_id, "pageSize": 1}),
        "access_token": wire.token,
        "_aop_timestamp": ocean_timestamp(),
    }
    form["_aop_signature"] = ocean_signature(url_path, form, wire.config.app_secret)
    async with wire.session.post(
        f"{wire.sandbox.url}/openapi/{url_path}", data=form, headers={"Host": host}
    ) as resp:
        body = await resp.json()
    offer: dict[str, Any] = body["result"]["result"]["data"][0]
    return offer


# --- originals, renditions, revalidation ---------------------------------------------------


async def test_a_png_photo_keeps_its_type_and_renditions_fit_the_box(
    start: Start, shared_dir: Path
) -> None:
    wire = await start()
    original = (shared_dir / "blue.png").read_bytes()
    status, headers, body = await get(wire, photo_url(wire, WIDE))
    assert (status, headers["Content-Type"], body) == (200, "image/png", original)
    sizes = {}
    for box in ("100x100", "50x200", "2000x2000"):
        status, headers, body = await get(wire, photo_url(wire, WIDE, f"_{box}.jpg"))
        assert (status, headers["Content-Type"]) == (200, "image/jpeg")
        image = decoded(body)
        assert image.format == "JPEG"
        sizes[box] = image.size
        assert headers["ETag"].endswith(f'-{box}"')
    assert sizes["100x100"] == (100, 75)  # 640x480 fitted: the width binds
    assert sizes["50x200"][0] == 50 and abs(sizes["50x200"][1] - 37.5) <= 1
    assert sizes["2000x2000"] == (640, 480)  # never enlarged
    # A rendition shows the photo: its centre is the rectangle's blue.
    red, green, blue = decoded(body).getpixel((320, 240))
    assert blue > 180 and red < 80 and green < 100
    images = wire.sandbox.stats()["images"]
    assert (images["requests"], images["renditions"]) == (4, 3)


async def test_an_etag_the_client_holds_gets_304_without_a_body(start: Start) -> None:
    wire = await start()
    for rendition in ("", "_64x64.jpg"):
        url = photo_url(wire, FACTORY, rendition)
        _, headers, _ = await get(wire, url)
        etag = headers["ETag"]
        status, again, body = await get(wire, url, **{"If-None-Match": etag})
        assert (status, body, again["ETag"]) == (304, b"", etag)
        status, _, _ = await get(wire, url, **{"If-None-Match": f'"other", W/{etag}'})
        assert status == 304
        status, _, body = await get(wire, url, **{"If-None-Match": '"other"'})
        assert status == 200 and body
    assert wire.sandbox.stats()["images"]["not_modified"] == 4


@pytest.mark.parametrize(
    "name",
    [
        "O1CN01999999999999.jpg",  # no such offer
        f"O1CN01{FACTORY}.png",  # another scheme
        f"{FACTORY}.jpg",
        f"O1CN01{FACTORY}.jpg_0x64.jpg",  # no side of 0
        f"O1CN01{FACTORY}.jpg_5000x64.jpg",  # over the largest rendition
        f"O1CN01{FACTORY}.jpg_64x64.webp",
    ],
)
async def test_names_the_cdn_does_not_serve_are_404(start: Start, name: str) -> None:
    wire = await start()
    status, _, _ = await get(wire, f"{wire.sandbox.url}/img/ibank/{name}")
    assert status == 404
    assert wire.sandbox.stats()["images"]["not_found"] == 1


async def test_image_faults_serve_the_photo_broken(start: Start) -> None:
    wire = await start()
    for rendition in ("", "_64x64.jpg"):
        status, _, _ = await get(wire, photo_url(wire, MISSING, rendition))
        assert status == 404
        status, headers, body = await get(wire, photo_url(wire, CORRUPT, rendition))
        assert (status, headers["Content-Type"]) == (200, "image/jpeg")
        assert body.startswith(b"\xff\xd8")  # looks like a JPEG, decodes as none
        with pytest.raises((UnidentifiedImageError, OSError)):
            decoded(body)
        status, headers, body = await get(wire, photo_url(wire, HTML, rendition))
        assert (status, headers["Content-Type"]) == (200, "text/html")
        assert body.startswith(b"<!DOCTYPE html>")


async def test_images_pass_no_gateway_check_and_spend_no_call(start: Start) -> None:
    """An IP allowlist that excludes us, no usage left: the gateway refuses, the CDN serves."""
    wire = await start(allow_ips=("10.9.9.9",), usage_limit=0)
    assert (await wire.upload(_encode(RED_ELLIPSE))).status == 403
    for _ in range(3):
        status, _, _ = await get(wire, photo_url(wire, FACTORY))
        assert status == 200
    stats = wire.sandbox.stats()
    assert stats["images"]["requests"] == 3
    assert stats["total_calls"] == 1 and stats["arrivals"] == []


# --- supplier fields ------------------------------------------------------------------------


async def test_supplier_fields_stated_in_the_catalogue_reach_the_cleaned_offer(
    start: Start, shared_dir: Path
) -> None:
    wire = await start()
    image_id = await wire.image_id((shared_dir / "red.jpg").read_bytes())
    reply = await wire.query(image_id, pageSize=2)
    factory, reseller = reply.json()["result"]["result"]["data"]
    # Stated: as catalogue.json writes them. Derived: from the offer id and the MOQ.
    assert reseller["repurchaseRate"] == "7.5%"
    assert reseller["sellerIdentities"] == ["tp_member", "verified", "tp_member"]
    assert reseller["isOnePsale"] is True
    assert reseller["productSimpleShippingInfo"]["shippingTimeGuarantee"] == "shipIn24Hours"
    assert factory["repurchaseRate"] == f"{10 + FACTORY % 40}%"
    assert factory["isOnePsale"] is False  # min_order 2
    assert factory["productSimpleShippingInfo"]["shippingTimeGuarantee"] == "shipIn48Hours"
    cleaned = parse_response("ocean", reply.text, WholesaleFilters())
    first, second = cleaned.offers
    assert (second.title_en, second.repurchase_rate) == (f"test product {RESELLER % 100}", 0.075)
    assert second.seller_identities == ("tp_member", "verified")  # de-duplicated, order kept
    assert (second.one_piece_sale, second.ship_in, second.free_shipping) == (
        True,
        "shipIn24Hours",
        True,
    )
    assert first.repurchase_rate == (10 + FACTORY % 40) / 100
    assert first.one_piece_sale is False and first.notes == second.notes == ()


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("seller_identities", "factory"),
        ("seller_identities", ["factory", 3]),
        ("repurchase_rate", 0.2),
        ("one_piece_sale", "yes"),
        ("ship_in", 48),
        ("image_fault", "gone"),
    ],
)
def test_a_wrongly_typed_optional_field_names_its_key(key: str, value: object) -> None:
    raw = entry(FACTORY, "red.jpg", "9.50", **{key: value})
    with pytest.raises(ValueError, match=key):
        Product.from_json(raw)


def test_optional_fields_survive_a_round_trip_and_are_left_out_when_unset() -> None:
    stated = Product.from_json(ENTRIES[0])
    assert stated.seller_identities == ("tp_member", "verified", "tp_member")
    assert Product.from_json(stated.to_json()) == stated
    assert stated.to_json() == ENTRIES[0]
    plain = Product.from_json(ENTRIES[1])
    assert set(plain.to_json()) == set(ENTRIES[1])


# --- reloading the catalogue ----------------------------------------------------------------


async def test_an_edited_catalogue_is_reloaded_on_the_same_endpoint(
    start: Start, tmp_path: Path, shared_dir: Path
) -> None:
    folder = write_catalogue(tmp_path / "catalogue")
    wire = await start(catalogue_dir=folder)
    url = wire.sandbox.url
    photo = (folder / "red.jpg").read_bytes()
    assert (await ocean_offers(wire, photo))[0]["priceInfo"]["price"] == "9.50"
    edited = [dict(e) for e in ENTRIES]
    edited[1]["price"] = "109.50"  # FACTORY; the new length changes the file's size too
    added = entry(710000000099, "green.jpg", "1.00")
    (folder / "catalogue.json").write_text(json.dumps([*edited, added]), "utf-8")
    offers = await ocean_offers(wire, photo)
    assert wire.sandbox.url == url
    assert {o["offerId"]: o["priceInfo"]["price"] for o in offers}[FACTORY] == "109.50"
    status, _, _ = await get(wire, photo_url(wire, 710000000099))
    assert status == 200  # the new product's photo is served
    assert wire.sandbox.stats()["reloads"] == 1
    await ocean_offers(wire, photo)
    assert wire.sandbox.stats()["reloads"] == 1  # unchanged: not read again


async def test_a_broken_edit_keeps_the_previous_catalogue_until_it_is_fixed(
    start: Start, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = write_catalogue(tmp_path / "catalogue")
    wire = await start(catalogue_dir=folder)
    photo = (folder / "red.jpg").read_bytes()
    (folder / "catalogue.json").write_text('[{"offer_id": ', "utf-8")
    offers = await ocean_offers(wire, photo)
    assert offers[0]["offerId"] == FACTORY and wire.sandbox.stats()["reloads"] == 0
    assert "not reloaded, the previous one stays" in caplog.text
    async with wire.session.post(wire.sandbox.url + "/__sandbox__/reload") as resp:
        assert resp.status == 422
        assert "catalogue.json" in (await resp.json())["error"]
    edited = [dict(e) for e in ENTRIES]
    edited[1]["price"] = "8.00"
    (folder / "catalogue.json").write_text(json.dumps(edited), "utf-8")
    assert (await ocean_offers(wire, photo))[0]["priceInfo"]["price"] == "8.00"


async def test_post_reload_reads_the_folder_even_when_catalogue_json_is_unchanged(
    start: Start, tmp_path: Path
) -> None:
    """A photo replaced under the same name: searches find it after a forced reload."""
    folder = write_catalogue(tmp_path / "catalogue")
    wire = await start(catalogue_dir=folder)
    blue = (folder / "blue.png").read_bytes()
    assert (await ocean_offers(wire, blue))[0]["offerId"] == WIDE
    shutil.copy(folder / "blue.png", folder / "red.jpg")
    assert (await ocean_offers(wire, blue))[0]["offerId"] == WIDE  # descriptors as loaded
    async with wire.session.post(wire.sandbox.url + "/__sandbox__/reload") as resp:
        assert (resp.status, await resp.json()) == (200, {"reloaded": True, "products": 6})
    assert [o["offerId"] for o in (await ocean_offers(wire, blue))[:3]] == sorted(
        [FACTORY, RESELLER, WIDE]
    )


class _InMemory(Catalogue):
    """A catalogue built in memory, as the benchmarks build one: no folder, no photos."""

    def __init__(self, products: tuple[Product, ...]) -> None:
        self.products = products

    def search(self, image: bytes) -> list[Match]:
        return [Match(p, 0.5) for p in self.products]


async def test_a_catalogue_built_in_memory_serves_no_photo_and_cannot_be_reloaded(
    shared_catalogue: Catalogue,
) -> None:
    async with (
        Sandbox(catalogue=_InMemory(shared_catalogue.products)) as sandbox,
        aiohttp.ClientSession() as session,
    ):
        wire = Wire(session, sandbox)
        offers = await ocean_offers(wire, _encode(RED_ELLIPSE))
        assert offers[0]["imageUrl"] == photo_url(wire, offers[0]["offerId"])
        status, _, _ = await get(wire, offers[0]["imageUrl"])
        assert status == 404
        async with session.post(sandbox.url + "/__sandbox__/reload") as resp:
            assert resp.status == 422
            assert (await resp.json())["error"] == "the catalogue was not loaded from a folder"


# --- keywords -------------------------------------------------------------------------------


async def test_query_keywords_are_recorded_and_must_be_text(start: Start) -> None:
    wire = await start()
    image_id = await wire.image_id(_encode(RED_ELLIPSE))
    assert (await wire.query(image_id, keyword="保温杯 500ml")).status == 200
    assert (await wire.query(image_id)).status == 200  # no keyword, nothing recorded
    refused = (await wire.query(image_id, keyword=["a"])).json()["result"]
    assert (refused["success"], refused["code"]) == ("false", "isv.invalid-parameter")
    assert wire.sandbox.stats()["keywords"] == ["保温杯 500ml"]
