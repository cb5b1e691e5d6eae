"""Gateway answers -> typed offers: parse, de-duplicate, apply the wholesale filters.

:func:`parse_response` takes the raw body of one image-search answer (either protocol) and
returns a :class:`CleanResult`. It never raises: a body that is not JSON, an error body, a
business failure or an item without a usable id all end up as counters and notes.

Every received item is accounted for exactly once::

    received == unparsable + duplicates + removed_by_price + removed_by_moq
                + removed_by_freight + len(offers)

Order: items without a usable item id are dropped, then duplicates (the first, best-ranked
occurrence wins), then the filters in the order price, minimum order, freight; an offer is
counted under the first filter that removes it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Literal, TypeVar, get_args

from engine.errors import ConfigError
from engine.parsers import (
    Parsed,
    PriceTier,
    brief,
    parse_bool,
    parse_freight,
    parse_int,
    parse_labels,
    parse_location,
    parse_min_order,
    parse_price_range,
    parse_price_tiers,
    parse_repurchase_rate,
    parse_similarity,
    parse_text,
    parse_url,
)

T = TypeVar("T")

Protocol = Literal["ocean", "seed"]
FreightFilter = Literal["all", "free", "paid"]

OFFER_URL = "https://detail.1688.com/offer/{item_id}.html"
_FREE_SHIPPING = {"free": True, "paid": False}
_LABEL_LIMIT = 200


@dataclass(frozen=True)
class WholesaleFilters:
    """The client-side wholesale filters, applied to cleaned values for both protocols.

    - price: an offer passes when its own range ``[offer.price_min, offer.price_max]``
      intersects ``[price_min, price_max]``; either bound may be open (``None``).
    - minimum order: ``moq_min <= MOQ <= moq_max``, either bound open.
    - freight: ``"all"`` passes everything; ``"free"``/``"paid"`` only offers known to match.

    An offer whose price (or MOQ, or freight) is unknown passes only when that filter is off.
    Prices may be given as Decimal, int, float or a numeric string; they are stored as Decimal
    with 4 places (floats through their shortest repr, so 10.1 is exactly 10.1000). Invalid
    settings raise :class:`~engine.errors.ConfigError` naming the field.
    """

    price_min: Decimal | None = None
    price_max: Decimal | None = None
    moq_min: int | None = None
    moq_max: int | None = None
    freight: FreightFilter = "all"

    def __post_init__(self) -> None:
        for name in ("price_min", "price_max"):
            raw = getattr(self, name)
            if raw is None:
                continue
            parsed = parse_price_range(raw) if not isinstance(raw, dict) else None
            if parsed is None or parsed.value is None or parsed.value[0] != parsed.value[1]:
                raise ConfigError(f"{name} must be a price in CNY >= 0, got {raw!r}")
            object.__setattr__(self, name, parsed.value[0])  # frozen: normalise once, here
        for name in ("moq_min", "moq_max"):
            raw = getattr(self, name)
            if raw is not None and (not isinstance(raw, int) or isinstance(raw, bool) or raw < 1):
                raise ConfigError(f"{name} must be a whole number >= 1, got {raw!r}")
        if self.freight not in get_args(FreightFilter):
            raise ConfigError(f"freight must be one of all, free, paid, got {self.freight!r}")
        low, high = self.price_min, self.price_max
        if low is not None and high is not None and low > high:
            raise ConfigError(f"price_min {low} is above price_max {high}")
        if self.moq_min is not None and self.moq_max is not None and self.moq_min > self.moq_max:
            raise ConfigError(f"moq_min {self.moq_min} is above moq_max {self.moq_max}")

    def fingerprint(self) -> dict[str, object]:
        """The settings as JSON-ready values; equal settings give equal fingerprints."""
        return {
            "price_min": None if self.price_min is None else str(self.price_min),
            "price_max": None if self.price_max is None else str(self.price_max),
            "moq_min": self.moq_min,
            "moq_max": self.moq_max,
            "freight": self.freight,
        }

    def rejects(self, offer: Offer) -> Literal["price", "moq", "freight"] | None:
        """The first filter that removes ``offer``, or ``None`` when it passes all."""
        if self.price_min is not None or self.price_max is not None:
            if offer.price_min is None or offer.price_max is None:
                return "price"
            if self.price_min is not None and offer.price_max < self.price_min:
                return "price"
            if self.price_max is not None and offer.price_min > self.price_max:
                return "price"
        if self.moq_min is not None or self.moq_max is not None:
            if offer.min_order is None:
                return "moq"
            if self.moq_min is not None and offer.min_order < self.moq_min:
                return "moq"
            if self.moq_max is not None and offer.min_order > self.moq_max:
                return "moq"
        if self.freight != "all" and offer.freight != self.freight:
            return "freight"
        return None


@dataclass(frozen=True)
class Offer:
    """One cleaned offer. Prices are CNY; ``notes`` holds ``"field: problem"`` entries.

    The fields after ``notes`` are the supplier signals only ``ocean`` answers carry (a seed
    offer leaves them at their defaults): ``title_en`` (``subjectTrans``), ``repurchase_rate``
    in ``[0, 1]`` (``repurchaseRate``, ``"23%"`` -> 0.23), ``seller_identities``
    (``sellerIdentities``: badges such as ``super_factory``, de-duplicated, order kept),
    ``one_piece_sale`` (``isOnePsale``: sold by the piece), and from
    ``productSimpleShippingInfo`` ``ship_in`` (``shippingTimeGuarantee``, e.g.
    ``"shipIn48Hours"``) and ``free_shipping`` (``freeShipping``; the same fact ``freight``
    states, ``None`` where it is ``"unknown"``).
    """

    item_id: int
    title: str | None
    price_min: Decimal | None
    price_max: Decimal | None
    price_tiers: tuple[PriceTier, ...]
    min_order: int | None
    unit: str | None
    similarity: float | None
    rank: int
    province: str | None
    city: str | None
    freight: str
    company: str | None
    monthly_sales: int | None
    offer_url: str
    image_url: str | None
    notes: tuple[str, ...] = ()
    title_en: str | None = None
    repurchase_rate: float | None = None
    seller_identities: tuple[str, ...] = ()
    one_piece_sale: bool | None = None
    ship_in: str | None = None
    free_shipping: bool | None = None


@dataclass(frozen=True)
class CleanResult:
    """What one answer yielded, and what was dropped on the way (see the module docstring)."""

    offers: tuple[Offer, ...]
    received: int
    duplicates: int = 0
    removed_by_price: int = 0
    removed_by_moq: int = 0
    removed_by_freight: int = 0
    unparsable: int = 0
    notes: tuple[str, ...] = field(default=())
    failure: str | None = None
    """Set (and also the only note) when the body was no result at all: an error body, a
    business failure, not JSON or an unexpected shape. ``None`` for any result, even empty."""

    @classmethod
    def failed(cls, why: str) -> CleanResult:
        """The result of a body that held no result: no offers, ``why`` as failure and note."""
        return cls((), 0, notes=(why,), failure=why)


@dataclass(frozen=True)
class _RawItem:
    """One item's raw field values, wherever its protocol keeps them (the supplier signals:
    ocean only)."""

    item_id: object
    title: object
    price: object
    tiers: object
    min_order: object
    similarity: object
    location: object
    freight: object
    company: object
    sales: object
    image: object
    title_en: object = None
    repurchase_rate: object = None
    seller_identities: object = None
    one_piece_sale: object = None
    ship_in: object = None
    freight_is_free_shipping: bool = False
    """``freight`` is a free-shipping flag, so it also fills ``Offer.free_shipping``."""


def _ocean_item(item: Mapping[str, object]) -> _RawItem:
    shipping = item.get("productSimpleShippingInfo")
    shipping_info = shipping if isinstance(shipping, dict) else {}
    return _RawItem(
        item_id=item.get("offerId"),
        title=item.get("subject"),
        price=item.get("priceInfo"),
        tiers=item.get("priceRangeList"),
        min_order=item.get("minOrderQuantity"),
        similarity=None,  # ocean has no similarity score
        location=item.get("companyAddress"),
        # freeShipping may be missing (real gateway): that is unknown freight, not junk.
        freight=shipping.get("freeShipping") if isinstance(shipping, dict) else shipping,
        company=item.get("companyName"),
        sales=item.get("monthSold"),
        image=item.get("imageUrl"),
        title_en=item.get("subjectTrans"),
        repurchase_rate=item.get("repurchaseRate"),
        seller_identities=item.get("sellerIdentities"),
        one_piece_sale=item.get("isOnePsale"),
        # A productSimpleShippingInfo that is no object is noted once, under freight.
        ship_in=shipping_info.get("shippingTimeGuarantee"),
        freight_is_free_shipping=True,
    )


def _seed_item(item: Mapping[str, object]) -> _RawItem:
    return _RawItem(
        item_id=item.get("item_id"),
        title=item.get("title"),
        price=item.get("price"),
        tiers=item.get("price_ranges"),
        min_order=item.get("min_order_quantity"),
        similarity=item.get("similarity"),
        location=item.get("address"),
        freight=item.get("freight_type"),
        company=item.get("company_name"),
        sales=item.get("monthly_sales"),
        image=item.get("pic_url"),
    )


def _offer(raw: _RawItem, item_id: int, rank: int) -> Offer:
    """Build the offer for an item whose id has already been parsed."""
    notes: list[str] = []

    def take(name: str, parsed: Parsed[T]) -> T | None:
        if parsed.note:
            notes.append(f"{name}: {parsed.note}")
        return parsed.value

    price = take("price", parse_price_range(raw.price))
    tiers = take("price_tiers", parse_price_tiers(raw.tiers)) or ()
    min_order = take("min_order", parse_min_order(raw.min_order))
    location = take("location", parse_location(raw.location))
    # A range spans both the quoted price and every tier price ("¥12.50-15.00" + tiers).
    prices = [*(price or ()), *(tier.price for tier in tiers)]
    if min_order is None and tiers:  # on 1688 the lowest tier starts at the minimum order
        min_order = (tiers[0].min_quantity, None)
    freight = take("freight", parse_freight(raw.freight)) or "unknown"
    return Offer(
        item_id=item_id,
        title=take("title", parse_text(raw.title)),
        price_min=min(prices) if prices else None,
        price_max=max(prices) if prices else None,
        price_tiers=tiers,
        min_order=min_order[0] if min_order else None,
        unit=min_order[1] if min_order else None,
        similarity=take("similarity", parse_similarity(raw.similarity)),
        rank=rank,
        province=location[0] if location else None,
        city=location[1] if location else None,
        freight=freight,
        company=take("company", parse_text(raw.company)),
        monthly_sales=take("monthly_sales", parse_int(raw.sales, minimum=0)),
        offer_url=OFFER_URL.format(item_id=item_id),
        image_url=take("image_url", parse_url(raw.image)),
        title_en=take("title_en", parse_text(raw.title_en)),
        repurchase_rate=take("repurchase_rate", parse_repurchase_rate(raw.repurchase_rate)),
        seller_identities=take("seller_identities", parse_labels(raw.seller_identities)) or (),
        one_piece_sale=take("one_piece_sale", parse_bool(raw.one_piece_sale)),
        ship_in=take("ship_in", parse_text(raw.ship_in)),
        free_shipping=_FREE_SHIPPING.get(freight) if raw.freight_is_free_shipping else None,
        notes=tuple(notes),
    )


def _label(value: object) -> str:
    """A gateway code or message, short and printable, for a response note."""
    if not isinstance(value, str):
        return brief(value)
    text = parse_text(value).value or "-"
    return text if len(text) <= _LABEL_LIMIT else text[: _LABEL_LIMIT - 1] + "…"


def _failure(body: Mapping[str, object]) -> str | None:
    """The note for an error body or a business failure, or ``None`` for anything else."""
    if "error_code" in body:  # ocean gateway error
        return f"error body: {_label(body['error_code'])}: {_label(body.get('error_message'))}"
    if "error_response" in body:  # seed error
        error = body["error_response"]
        if not isinstance(error, dict):
            return f"error body: {_label(error)}"
        code = _label(error.get("code"))
        if error.get("sub_code") is not None:
            code += f" {_label(error['sub_code'])}"
        return f"error body: {code}: {_label(error.get('msg'))}"
    if "error" in body:  # OAuth error (token endpoint)
        return f"error body: {_label(body['error'])}: {_label(body.get('error_description'))}"
    result = body.get("result")
    if isinstance(result, dict) and result.get("success") in ("false", False):
        return f"business failure: {_label(result.get('code'))}: {_label(result.get('message'))}"
    return None


def _item_list(protocol: str, body: Mapping[str, object]) -> list[object] | str:
    """The answer's items in gateway order, or a note saying why there are none."""
    if protocol == "ocean":
        result = body.get("result")
        page = result.get("result") if isinstance(result, dict) else None
        if not isinstance(page, dict):
            return f"unexpected body: no ocean result page (keys {_label(sorted(body))})"
        data = page.get("data")
    elif protocol == "seed":
        response = body.get("image_search_item_response")
        if not isinstance(response, dict):
            return f"unexpected body: no seed response (keys {_label(sorted(body))})"
        items = response.get("items")
        # TOP-style JSON (converted from XML) wraps the list, and a single item loses its list.
        data = items.get("item") if isinstance(items, dict) else items
        if isinstance(data, dict):
            data = [data]
    else:
        return f"unknown protocol: {_label(protocol)}"
    if data is None or data == "":
        return []
    if not isinstance(data, list):
        return f"unexpected body: items are {type(data).__name__}, not a list"
    return data


def parse_response(protocol: Protocol, raw_body: str, filters: WholesaleFilters) -> CleanResult:
    """Clean one image-search answer of ``protocol``; never raises.

    Args:
        protocol: ``"ocean"`` (``result.result.data``) or ``"seed"``
            (``image_search_item_response.items.item``).
        raw_body: the HTTP body as received.
        filters: the wholesale filters to apply.

    Returns:
        The kept offers in gateway order and the counters; an error body, a business failure,
        or a body that is not JSON gives no offers and a response note saying which.
    """
    if not isinstance(raw_body, str | bytes | bytearray):
        return CleanResult.failed(f"body is {type(raw_body).__name__}, not text")
    try:
        body = json.loads(raw_body)
    except (ValueError, RecursionError) as error:  # RecursionError: absurdly nested JSON
        return CleanResult.failed(f"body is not JSON: {_label(str(error))}")
    if not isinstance(body, dict):
        return CleanResult.failed(f"unexpected body: {type(body).__name__} at top level")
    failure = _failure(body)
    if failure is not None:
        return CleanResult.failed(failure)
    items = _item_list(protocol, body)
    if isinstance(items, str):
        return CleanResult.failed(items)

    notes: list[str] = []
    seen: set[int] = set()
    counts = {"unparsable": 0, "duplicates": 0, "price": 0, "moq": 0, "freight": 0}
    kept: list[Offer] = []
    extract = _ocean_item if protocol == "ocean" else _seed_item
    for rank, item in enumerate(items, start=1):
        if not isinstance(item, dict):
            counts["unparsable"] += 1
            notes.append(f"item {rank}: not an object: {_label(item)}")
            continue
        raw = extract(item)
        item_id = parse_int(raw.item_id, minimum=1)
        if item_id.value is None:
            counts["unparsable"] += 1
            notes.append(f"item {rank}: no usable item id ({item_id.note or 'missing'})")
            continue
        if item_id.value in seen:
            counts["duplicates"] += 1
            continue
        seen.add(item_id.value)
        offer = _offer(raw, item_id.value, rank)
        rejected = filters.rejects(offer)
        if rejected is None:
            kept.append(offer)
        else:
            counts[rejected] += 1
    return CleanResult(
        offers=tuple(kept),
        received=len(items),
        duplicates=counts["duplicates"],
        removed_by_price=counts["price"],
        removed_by_moq=counts["moq"],
        removed_by_freight=counts["freight"],
        unparsable=counts["unparsable"],
        notes=tuple(notes),
    )
