"""Cleaning whole answers: both protocols, filters, de-duplication, failures and garbage."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_parsers import JSON_LIKE

from engine.clean import CleanResult, Offer, WholesaleFilters, parse_response
from engine.errors import ConfigError
from engine.parsers import PriceTier
from engine.sandbox import formats
from engine.sandbox.catalogue import DEFAULT_CATALOGUE, Product

D = Decimal
NO_FILTERS = WholesaleFilters()


def ocean_offer(offer_id: int, **changes: Any) -> dict[str, Any]:
    """An imageQuery offer exactly as the wire contract writes it."""
    offer: dict[str, Any] = {
        "offerId": offer_id,
        "subject": "不锈钢保温杯 500ml",
        "subjectTrans": "Stainless steel vacuum cup 500ml",
        "imageUrl": f"https://cbu01.alicdn.com/img/ibank/O1CN01{offer_id}.jpg",
        "priceInfo": {
            "price": "12.50",
            "jxhyPrice": None,
            "pfJxhyPrice": None,
            "consignPrice": "13.80",
            "promotionPrice": None,
        },
        "minOrderQuantity": 2,
        "monthSold": 1520,
        "companyName": "义乌市好物日用品有限公司",
        "companyAddress": "浙江省金华市",
        "repurchaseRate": "25%",
        "isOnePsale": True,
        "sellerIdentities": ["super_factory"],
        "topCategoryId": 1,
        "secondCategoryId": 2,
        "thirdCategoryId": 3,
        "createDate": "2024-03-01 10:00:00",
        "modifyDate": "2025-06-01 10:00:00",
        "productSimpleShippingInfo": {
            "shippingTimeGuarantee": "shipIn48Hours",
            "freeShipping": True,
        },
    }
    offer.update(changes)
    return offer


def ocean_body(offers: list[dict[str, Any]]) -> str:
    page = {"totalRecords": len(offers), "totalPage": 1, "pageSize": 20, "currentPage": 1}
    result = {"success": "true", "code": "200", "message": "", "result": {**page, "data": offers}}
    return json.dumps({"result": result}, ensure_ascii=False)


ABSENT = object()
"""Passed for a field to leave it out of the item."""


def seed_item(item_id: int | str, **changes: Any) -> dict[str, Any]:
    """A seed item in its plainest format; ``changes`` set the varying fields."""
    item: dict[str, Any] = {
        "item_id": item_id,
        "title": "不锈钢保温杯",
        "price": "12.50",
        "min_order_quantity": 5,
        "similarity": 0.93,
        "address": {"province": "浙江省", "city": "杭州市"},
        "freight_type": "free",
        "monthly_sales": 1520,
        "company_name": "杭州某某贸易有限公司",
        "pic_url": f"https://cbu01.alicdn.com/img/ibank/O1CN01{item_id}.jpg",
    }
    item.update(changes)
    return {k: v for k, v in item.items() if v is not ABSENT}


def seed_body(items: list[dict[str, Any]] | dict[str, Any]) -> str:
    response = {"total_results": 3, "items": {"item": items}, "request_id": "0a1b2c"}
    return json.dumps({"image_search_item_response": response}, ensure_ascii=False)


def assert_accounted(result: CleanResult) -> None:
    removed = result.removed_by_price + result.removed_by_moq + result.removed_by_freight
    dropped = result.unparsable + result.duplicates + removed
    assert result.received == dropped + len(result.offers)


# ---------------------------------------------------------------------------- ocean


def test_ocean_offer_with_price_tiers() -> None:
    tiers = [{"startQuantity": 2, "price": "15.00"}, {"startQuantity": 100, "price": "12.50"}]
    result = parse_response(
        "ocean", ocean_body([ocean_offer(610947572360, priceRangeList=tiers)]), NO_FILTERS
    )
    assert result.notes == ()
    assert (result.received, len(result.offers)) == (1, 1)
    offer = result.offers[0]
    assert offer == Offer(
        item_id=610947572360,
        title="不锈钢保温杯 500ml",
        price_min=D("12.50"),
        price_max=D("15.00"),
        price_tiers=(PriceTier(2, D("15.00")), PriceTier(100, D("12.50"))),
        min_order=2,
        unit=None,
        similarity=None,
        rank=1,
        province="浙江省",
        city="金华市",
        freight="free",
        company="义乌市好物日用品有限公司",
        monthly_sales=1520,
        offer_url="https://detail.1688.com/offer/610947572360.html",
        image_url="https://cbu01.alicdn.com/img/ibank/O1CN01610947572360.jpg",
        notes=(),
        title_en="Stainless steel vacuum cup 500ml",
        repurchase_rate=0.25,
        seller_identities=("super_factory",),
        one_piece_sale=True,
        ship_in="shipIn48Hours",
        free_shipping=True,
    )


def test_ocean_freight_variants_and_ranks() -> None:
    offers = [
        ocean_offer(
            1,
            productSimpleShippingInfo={
                "shippingTimeGuarantee": "shipIn48Hours",
                "freeShipping": False,
            },
        ),
        ocean_offer(2, productSimpleShippingInfo={"shippingTimeGuarantee": "shipIn48Hours"}),
        ocean_offer(3),
    ]
    result = parse_response("ocean", ocean_body(offers), NO_FILTERS)
    assert [(o.item_id, o.rank, o.freight, o.free_shipping) for o in result.offers] == [
        (1, 1, "paid", False),
        (2, 2, "unknown", None),  # the real gateway has no freeShipping: unknown, and no note
        (3, 3, "free", True),
    ]
    assert all(o.notes == () and o.similarity is None for o in result.offers)


def test_ocean_without_tiers_has_a_single_price() -> None:
    result = parse_response("ocean", ocean_body([ocean_offer(7)]), NO_FILTERS)
    offer = result.offers[0]
    assert (offer.price_min, offer.price_max, offer.price_tiers) == (D("12.5"), D("12.5"), ())


def test_ocean_moq_falls_back_to_the_lowest_tier() -> None:
    tiers = [{"startQuantity": 3, "price": "15.00"}]
    result = parse_response(
        "ocean",
        ocean_body([ocean_offer(7, minOrderQuantity=None, priceRangeList=tiers)]),
        NO_FILTERS,
    )
    assert result.offers[0].min_order == 3


def test_ocean_junk_fields_are_noted_not_fatal() -> None:
    offer = ocean_offer(
        8, priceInfo={"price": "call us"}, monthSold=-4, companyAddress=["x"], imageUrl="img.jpg"
    )
    result = parse_response("ocean", ocean_body([offer]), NO_FILTERS)
    cleaned = result.offers[0]
    assert (cleaned.price_min, cleaned.monthly_sales, cleaned.province, cleaned.image_url) == (
        None,
        None,
        None,
        None,
    )
    assert [note.split(":")[0] for note in cleaned.notes] == [
        "price",
        "location",
        "monthly_sales",
        "image_url",
    ]


def test_ocean_supplier_signals_from_a_sandbox_answer() -> None:
    """The sandbox's own answer over its built-in catalogue: every supplier field read."""
    raw = json.loads((DEFAULT_CATALOGUE / "catalogue.json").read_text(encoding="utf-8"))
    products = [Product.from_json(entry) for entry in raw]
    page = {"totalRecords": len(products), "totalPage": 1, "pageSize": 50, "currentPage": 1}
    data = [formats.ocean_offer(p, "http://127.0.0.1:8688") for p in products]
    body = formats.ocean_success({**page, "data": data}).text()
    result = parse_response("ocean", body, NO_FILTERS)
    assert len(result.offers) == len(products) and result.notes == ()
    for offer, sent in zip(result.offers, data, strict=True):
        assert offer.notes == ()
        assert offer.title_en == sent["subjectTrans"]
        assert offer.repurchase_rate == pytest.approx(float(sent["repurchaseRate"][:-1]) / 100)
        assert offer.seller_identities == tuple(sent["sellerIdentities"])
        assert offer.one_piece_sale is sent["isOnePsale"]
        shipping = sent["productSimpleShippingInfo"]
        assert offer.ship_in == shipping["shippingTimeGuarantee"]
        assert offer.free_shipping is shipping["freeShipping"]
        assert offer.image_url == f"http://127.0.0.1:8688/img/ibank/O1CN01{offer.item_id}.jpg"
    # The built-in catalogue varies them: both badges, both kinds of sale and of shipping.
    assert {o.seller_identities for o in result.offers} == {("super_factory",), ("tp_member",)}
    assert {o.one_piece_sale for o in result.offers} == {True, False}
    assert {o.free_shipping for o in result.offers} == {True, False}


def test_ocean_supplier_signals_as_given_and_de_duplicated() -> None:
    offer = ocean_offer(
        9,
        repurchaseRate="0.3",
        sellerIdentities=["tp_member", " super_factory", "tp_member"],
        isOnePsale="false",
        subjectTrans="  Vacuum\tcup ",
    )
    cleaned = parse_response("ocean", ocean_body([offer]), NO_FILTERS).offers[0]
    assert cleaned.notes == ()
    assert (cleaned.repurchase_rate, cleaned.one_piece_sale, cleaned.title_en) == (
        0.3,
        False,
        "Vacuum cup",
    )
    assert cleaned.seller_identities == ("tp_member", "super_factory")


def test_ocean_supplier_signal_junk_is_noted_not_fatal() -> None:
    offer = ocean_offer(
        8,
        subjectTrans=5,
        repurchaseRate="high",
        sellerIdentities={"factory": True},
        isOnePsale="maybe",
        productSimpleShippingInfo={"shippingTimeGuarantee": ["48h"], "freeShipping": "perhaps"},
    )
    cleaned = parse_response("ocean", ocean_body([offer]), NO_FILTERS).offers[0]
    assert (cleaned.title_en, cleaned.repurchase_rate, cleaned.seller_identities) == (
        None,
        None,
        (),
    )
    assert (cleaned.one_piece_sale, cleaned.ship_in, cleaned.free_shipping) == (None, None, None)
    assert cleaned.freight == "unknown"
    # One note per field; the junk freeShipping is noted once, under freight.
    assert sorted(note.split(":")[0] for note in cleaned.notes) == [
        "freight",
        "one_piece_sale",
        "repurchase_rate",
        "seller_identities",
        "ship_in",
        "title_en",
    ]
    assert "repurchase_rate: not a rate: 'high'" in cleaned.notes


def test_ocean_supplier_signals_absent_stay_unknown_without_notes() -> None:
    offer = ocean_offer(7)
    for key in ("subjectTrans", "repurchaseRate", "sellerIdentities", "isOnePsale"):
        del offer[key]
    offer["productSimpleShippingInfo"] = None
    cleaned = parse_response("ocean", ocean_body([offer]), NO_FILTERS).offers[0]
    assert cleaned.notes == ()
    assert (cleaned.title_en, cleaned.repurchase_rate, cleaned.seller_identities) == (
        None,
        None,
        (),
    )
    assert (cleaned.one_piece_sale, cleaned.ship_in, cleaned.free_shipping) == (None, None, None)


def test_ocean_empty_page() -> None:
    body = json.dumps(
        {
            "result": {
                "success": True,
                "code": "200",
                "message": "",
                "result": {"totalRecords": 0, "data": []},
            }
        }
    )
    assert parse_response("ocean", body, NO_FILTERS) == CleanResult((), 0)


# ---------------------------------------------------------------------------- seed

SEED_VARIANTS = [
    # the four formats the contract lists (style 0..3), and what each cleans to
    (
        dict(item_id=610947572360, price="12.50", min_order_quantity=5, similarity=0.93,
             address={"province": "浙江省", "city": "杭州市"}, freight_type="free"),
        (D("12.50"), D("12.50"), 5, None, 0.93, "浙江省", "杭州市", "free"),
    ),
    (
        dict(item_id="610947572361", price="¥12.50-15.00", min_order_quantity="5件",
             similarity="93%", address="浙江省杭州市", freight_type="包邮"),
        (D("12.50"), D("15.00"), 5, "件", 0.93, "浙江省", "杭州市", "free"),
    ),
    (
        dict(item_id=610947572362, price="12.5元", min_order_quantity="≥5", similarity=ABSENT,
             address={"province": "广东省", "city": "深圳市"}, freight_type="paid"),
        (D("12.5"), D("12.5"), 5, None, None, "广东省", "深圳市", "paid"),
    ),
    (
        dict(item_id="610947572363", price=12.5, min_order_quantity="5个起批", similarity=0.93,
             address="上海市", freight_type="不包邮"),
        (D("12.5"), D("12.5"), 5, "个", 0.93, "上海市", "上海市", "paid"),
    ),
]  # fmt: skip


@pytest.mark.parametrize(("fields", "expected"), SEED_VARIANTS)
def test_seed_item_variants(fields: dict[str, Any], expected: tuple[object, ...]) -> None:
    result = parse_response("seed", seed_body([seed_item(**fields)]), NO_FILTERS)
    assert result.notes == ()
    (offer,) = result.offers
    got = (offer.price_min, offer.price_max, offer.min_order, offer.unit, offer.similarity,
           offer.province, offer.city, offer.freight)  # fmt: skip
    assert got == expected
    assert offer.item_id == int(fields["item_id"])
    assert offer.offer_url == f"https://detail.1688.com/offer/{int(fields['item_id'])}.html"
    assert offer.notes == ()


def test_seed_price_ranges_widen_the_price_range() -> None:
    tiers = [{"start_quantity": 2, "price": "15.00"}, {"start_quantity": 50, "price": "11.00"}]
    result = parse_response(
        "seed", seed_body([seed_item(1, price="¥12.50-15.00", price_ranges=tiers)]), NO_FILTERS
    )
    offer = result.offers[0]
    assert (offer.price_min, offer.price_max) == (D("11"), D("15"))
    assert offer.price_tiers == (PriceTier(2, D("15")), PriceTier(50, D("11")))


def test_seed_offers_carry_no_supplier_signals() -> None:
    """The seed names none: ocean's field names in a seed item are not read, and a known
    freight does not make free_shipping (an ocean field) known."""
    item = seed_item(
        3, subjectTrans="cup", repurchaseRate="23%", sellerIdentities=["x"], isOnePsale=True
    )
    offer = parse_response("seed", seed_body([item]), NO_FILTERS).offers[0]
    assert offer.freight == "free"
    assert (offer.title_en, offer.repurchase_rate, offer.seller_identities) == (None, None, ())
    assert (offer.one_piece_sale, offer.ship_in, offer.free_shipping) == (None, None, None)


def test_seed_single_item_not_in_a_list() -> None:
    result = parse_response("seed", seed_body(seed_item(5)), NO_FILTERS)
    assert [o.item_id for o in result.offers] == [5]


@pytest.mark.parametrize("items", [{}, "", None, {"item": []}])
def test_seed_no_results(items: object) -> None:
    body = json.dumps({"image_search_item_response": {"total_results": 0, "items": items}})
    assert parse_response("seed", body, NO_FILTERS) == CleanResult((), 0)


def test_items_without_a_usable_id_are_counted_and_noted() -> None:
    items = [seed_item(1), seed_item("abc"), seed_item(-2), "junk", seed_item(ABSENT), seed_item(3)]
    result = parse_response("seed", seed_body(items), NO_FILTERS)
    assert [(o.item_id, o.rank) for o in result.offers] == [(1, 1), (3, 6)]
    assert result.unparsable == 4
    assert result.failure is None  # item problems are not a failed answer
    assert [n.split(":")[0] for n in result.notes] == ["item 2", "item 3", "item 4", "item 5"]
    assert_accounted(result)


# ---------------------------------------------------------------------------- de-dup


def test_duplicates_keep_the_first_best_ranked() -> None:
    items = [seed_item(1, title="first"), seed_item(2), seed_item("1", title="again"), seed_item(2)]
    result = parse_response("seed", seed_body(items), NO_FILTERS)
    assert [(o.item_id, o.rank, o.title) for o in result.offers] == [
        (1, 1, "first"),
        (2, 2, "不锈钢保温杯"),
    ]
    assert result.duplicates == 2
    assert_accounted(result)


def test_duplicates_are_removed_before_filters() -> None:
    # The best-ranked copy fails the filter: the later copy must not sneak through.
    items = [seed_item(1, freight_type="paid"), seed_item(1, freight_type="free")]
    result = parse_response("seed", seed_body(items), WholesaleFilters(freight="free"))
    assert (result.offers, result.duplicates, result.removed_by_freight) == ((), 1, 1)


# ---------------------------------------------------------------------------- filters


def _prices_body() -> str:
    prices = ["5", "8-10", "10", "15", "20-30", "31", None]
    return seed_body([seed_item(i, price=p) for i, p in enumerate(prices, start=1)])


@pytest.mark.parametrize(
    ("low", "high", "kept"),
    [
        (None, None, [1, 2, 3, 4, 5, 6, 7]),
        (D(10), D(20), [2, 3, 4, 5]),  # ranges touching a bound intersect it
        (D("10.01"), None, [4, 5, 6]),
        (None, D("9.99"), [1, 2]),
        (D(31), D(31), [6]),
        (D(11), D(14), []),
    ],
)
def test_price_filter_keeps_intersecting_ranges(
    low: Decimal | None, high: Decimal | None, kept: list[int]
) -> None:
    result = parse_response("seed", _prices_body(), WholesaleFilters(price_min=low, price_max=high))
    assert [o.item_id for o in result.offers] == kept
    assert result.removed_by_price == 7 - len(kept)
    assert result.removed_by_moq == result.removed_by_freight == 0
    assert_accounted(result)


@pytest.mark.parametrize(
    ("low", "high", "kept"),
    [
        (None, None, [1, 2, 3, 4, 5]),
        (2, None, [2, 3, 4]),
        (None, 10, [1, 2, 3]),
        (5, 10, [2, 3]),
    ],
)
def test_moq_filter(low: int | None, high: int | None, kept: list[int]) -> None:
    moqs = [1, "≥5", "10件", 100, "call"]  # the last is unknown: kept only without a MOQ filter
    body = seed_body([seed_item(i, min_order_quantity=m) for i, m in enumerate(moqs, start=1)])
    result = parse_response("seed", body, WholesaleFilters(moq_min=low, moq_max=high))
    assert [o.item_id for o in result.offers] == kept
    assert result.removed_by_moq == 5 - len(kept)
    assert_accounted(result)


@pytest.mark.parametrize(
    ("freight", "kept"), [("all", [1, 2, 3, 4]), ("free", [1, 3]), ("paid", [2])]
)
def test_freight_filter(freight: str, kept: list[int]) -> None:
    terms = ["free", "不包邮", "包邮", ABSENT]
    body = seed_body([seed_item(i, freight_type=t) for i, t in enumerate(terms, start=1)])
    result = parse_response("seed", body, WholesaleFilters(freight=freight))  # type: ignore[arg-type]
    assert [o.item_id for o in result.offers] == kept
    assert result.removed_by_freight == 4 - len(kept)
    assert_accounted(result)


def test_filters_apply_to_ocean_too_and_count_each_offer_once() -> None:
    offers = [
        ocean_offer(1),  # 12.50, MOQ 2, free: kept
        ocean_offer(2, priceInfo={"price": "99"}, minOrderQuantity=1000),  # price fails first
        ocean_offer(3, minOrderQuantity=1000),  # MOQ
        ocean_offer(4, productSimpleShippingInfo={"freeShipping": False}),  # freight
    ]
    filters = WholesaleFilters(price_max=D(50), moq_max=100, freight="free")
    result = parse_response("ocean", ocean_body(offers), filters)
    assert [o.item_id for o in result.offers] == [1]
    assert (result.removed_by_price, result.removed_by_moq, result.removed_by_freight) == (1, 1, 1)


def test_filter_settings_are_normalised_and_fingerprinted() -> None:
    a = WholesaleFilters(price_min=10, price_max="50.00", moq_min=5)  # type: ignore[arg-type]
    b = WholesaleFilters(price_min=D("10.0"), price_max=50.0, moq_min=5)  # type: ignore[arg-type]
    assert a == b
    assert (
        a.fingerprint()
        == b.fingerprint()
        == {
            "price_min": "10.0000",
            "price_max": "50.0000",
            "moq_min": 5,
            "moq_max": None,
            "freight": "all",
        }
    )
    assert json.loads(json.dumps(a.fingerprint())) == a.fingerprint()
    assert WholesaleFilters(**a.fingerprint()) == a  # stored fingerprints rebuild the filters
    assert WholesaleFilters(freight="free").fingerprint() != WholesaleFilters().fingerprint()


@pytest.mark.parametrize(
    ("settings_", "field"),
    [
        ({"price_min": -1}, "price_min"),
        ({"price_max": "cheap"}, "price_max"),
        ({"price_min": "5-10"}, "price_min"),
        ({"price_min": 20, "price_max": 10}, "price_min"),
        ({"moq_min": 0}, "moq_min"),
        ({"moq_max": 2.5}, "moq_max"),
        ({"moq_min": True}, "moq_min"),
        ({"moq_min": 10, "moq_max": 5}, "moq_min"),
        ({"freight": "cheap"}, "freight"),
    ],
)
def test_invalid_filter_settings_name_the_field(settings_: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        WholesaleFilters(**settings_)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- failures


QOS = {"error_code": "gw.QosAppFrequencyLimit", "error_message": "app call frequency limited"}
INVALID_IMAGE = {"code": 15, "msg": "Remote service error", "sub_code": "isv.invalid-image"}


@pytest.mark.parametrize(
    ("protocol", "body", "note"),
    [
        ("ocean", {**QOS, "exception": "x", "request_id": "ab12"},
         "error body: gw.QosAppFrequencyLimit: app call frequency limited"),
        ("ocean", {"error_code": "401", "error_message": "Request need user authorized"},
         "error body: 401: Request need user authorized"),
        ("ocean", {"result": {"success": "false", "code": "isv.invalid-image", "message": "bad"}},
         "business failure: isv.invalid-image: bad"),
        ("ocean", {"result": {"success": False, "code": "500", "message": "busy"}},
         "business failure: 500: busy"),
        ("ocean", {"error": "invalid_grant", "error_description": "refresh token invalid"},
         "error body: invalid_grant: refresh token invalid"),
        ("seed", {"error_response": {**INVALID_IMAGE, "sub_msg": "image invalid"}},
         "error body: 15 isv.invalid-image: Remote service error"),
        ("seed", {"error_response": {"code": 27, "msg": "Invalid session"}},
         "error body: 27: Invalid session"),
        ("seed", {"error_response": "boom"}, "error body: boom"),
        ("seed", {"result": {"success": "true", "result": {"data": []}}},
         "unexpected body: no seed response"),
        ("ocean", {"image_search_item_response": {"items": {"item": []}}},
         "unexpected body: no ocean result page"),
        ("ocean", {"result": {"success": "true", "result": {"data": "nope"}}},
         "unexpected body: items are str, not a list"),
    ],
)  # fmt: skip
def test_error_bodies_and_business_failures(protocol: str, body: dict[str, Any], note: str) -> None:
    result = parse_response(protocol, json.dumps(body), NO_FILTERS)  # type: ignore[arg-type]
    assert (result.offers, result.received) == ((), 0)
    assert result.notes == (result.failure,)
    assert result.failure is not None and result.failure.startswith(note)


@pytest.mark.parametrize(
    ("raw", "note"),
    [
        ("<html><body><h1>502 Bad Gateway</h1></body></html>", "body is not JSON"),
        ('{"image_search_item_response": {"total_results": 20, "items": {"item": [{"it', "body is"),
        ("", "body is not JSON"),
        ("null", "unexpected body: NoneType at top level"),
        ("[1, 2]", "unexpected body: list at top level"),
        ("[" * 100_000, "body is not JSON"),
    ],
)  # fmt: skip
def test_garbage_bodies(raw: str, note: str) -> None:
    result = parse_response("seed", raw, NO_FILTERS)
    assert (result.offers, result.received) == ((), 0)
    assert result.failure is not None and result.failure.startswith(note)


def test_unknown_protocol_is_a_note() -> None:
    result = parse_response("taobao", seed_body([seed_item(1)]), NO_FILTERS)  # type: ignore[arg-type]
    assert result.failure == "unknown protocol: taobao"


# ---------------------------------------------------------------------------- totality

FILTERS = st.builds(
    WholesaleFilters,
    price_min=st.none() | st.sampled_from([D(0), D(10), D("12.5")]),
    price_max=st.none() | st.sampled_from([D(13), D(50), D(1000)]),
    moq_min=st.none() | st.integers(1, 5),
    moq_max=st.none() | st.integers(5, 200),
    freight=st.sampled_from(["all", "free", "paid"]),
)

OCEAN_TIERS = [{"startQuantity": 2, "price": "15.00"}]
SEED_TIERS = [{"start_quantity": 2, "price": "15.00"}]
REAL_BODIES = {
    "ocean": ocean_body(
        [ocean_offer(1, priceRangeList=OCEAN_TIERS), ocean_offer(2), ocean_offer(1)]
    ),
    "seed": seed_body(
        [
            *(seed_item(**fields) for fields, _ in SEED_VARIANTS),
            seed_item(9, price_ranges=SEED_TIERS),
        ]
    ),
}


@st.composite
def mutated(draw: st.DrawFn, node: object) -> object:
    """``node`` with random parts replaced by JSON-like junk or dropped."""
    if draw(st.integers(0, 7)) == 0:
        return draw(JSON_LIKE)
    if isinstance(node, dict):
        return {k: draw(mutated(v)) for k, v in node.items() if draw(st.integers(0, 9))}
    if isinstance(node, list):
        return [draw(mutated(v)) for v in node]
    return node


def check_result(result: CleanResult, filters: WholesaleFilters, protocol: str) -> None:
    assert isinstance(result, CleanResult)
    assert_accounted(result)
    assert min(result.duplicates, result.unparsable, result.removed_by_price) >= 0
    ids = [o.item_id for o in result.offers]
    assert len(ids) == len(set(ids))
    ranks = [o.rank for o in result.offers]
    assert ranks == sorted(ranks) and all(1 <= r <= result.received for r in ranks)
    for offer in result.offers:
        assert filters.rejects(offer) is None
        assert offer.item_id >= 1
        assert offer.freight in ("free", "paid", "unknown")
        if offer.price_min is not None:
            assert offer.price_max is not None and D(0) <= offer.price_min <= offer.price_max
        assert offer.similarity is None or 0 <= offer.similarity <= 1
        assert offer.min_order is None or offer.min_order >= 1
        assert all(":" in note for note in offer.notes)
        assert offer.repurchase_rate is None or 0 <= offer.repurchase_rate <= 1
        assert len(set(offer.seller_identities)) == len(offer.seller_identities)
        assert all(isinstance(label, str) and label for label in offer.seller_identities)
        assert offer.one_piece_sale in (None, True, False)
        # Ocean's freight is its freeShipping flag; the seed has no such flag.
        flag = {"free": True, "paid": False}.get(offer.freight) if protocol == "ocean" else None
        assert offer.free_shipping is flag
        if protocol == "seed":
            assert (offer.title_en, offer.repurchase_rate, offer.ship_in) == (None, None, None)


@pytest.mark.parametrize("protocol", ["ocean", "seed"])
@settings(max_examples=120, deadline=None)
@given(data=st.data(), filters=FILTERS)
def test_total_on_mutated_real_bodies(
    protocol: str, data: st.DataObject, filters: WholesaleFilters
) -> None:
    body = data.draw(mutated(json.loads(REAL_BODIES[protocol])))
    result = parse_response(protocol, json.dumps(body, ensure_ascii=False), filters)  # type: ignore[arg-type]
    check_result(result, filters, protocol)


@pytest.mark.parametrize("protocol", ["ocean", "seed"])
@settings(max_examples=120, deadline=None)
@given(raw=st.text() | st.text(alphabet='{}[]":,0123456789ntrueflsa', max_size=40))
def test_total_on_random_text(protocol: str, raw: str) -> None:
    result = parse_response(protocol, raw, NO_FILTERS)  # type: ignore[arg-type]
    check_result(result, NO_FILTERS, protocol)


def test_unmutated_real_bodies_clean_without_notes() -> None:
    for protocol, body in REAL_BODIES.items():
        result = parse_response(protocol, body, NO_FILTERS)  # type: ignore[arg-type]
        assert result.notes == ()
        assert all(o.notes == () for o in result.offers)
