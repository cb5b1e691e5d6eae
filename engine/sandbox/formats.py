"""The sandbox's answers, shaped exactly as each protocol writes them.

Every function returns an :class:`Answer`: the HTTP status, the body, extra headers and the
error code the stats count. Nothing here decides *whether* to answer so; the gateway does.
Offers' image URLs point at the sandbox's own CDN (:mod:`engine.sandbox.images`) under the
``origin`` the client called.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, TypeVar

from engine.protocol import ProtocolName
from engine.sandbox.catalogue import Match, Product
from engine.sandbox.images import DEFAULT_ORIGIN, image_url
from engine.sandbox.verify import GMT8

CENT = Decimal("0.01")
T = TypeVar("T")


@dataclass(frozen=True)
class Answer:
    """One HTTP answer. ``body`` is JSON-encoded unless it is already ``str``.

    ``code`` is what the stats count under ``error_codes`` (``None`` for a success).
    """

    status: int
    body: dict[str, Any] | str
    code: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"

    def text(self) -> str:
        """The body as sent."""
        if isinstance(self.body, str):
            return self.body
        return json.dumps(self.body, ensure_ascii=False)


def request_id() -> str:
    """A fresh gateway request id (hex)."""
    return secrets.token_hex(12)


# --- prices ---------------------------------------------------------------------------------


def lowest_price(product: Product) -> Decimal:
    """The product's lowest unit price over its base price and every tier."""
    return min(_prices(product))


def _prices(product: Product) -> list[Decimal]:
    return [Decimal(product.price), *(Decimal(t.price) for t in product.price_tiers)]


def _money(value: Decimal) -> str:
    return str(value.quantize(CENT, rounding=ROUND_HALF_UP))


# --- ocean ----------------------------------------------------------------------------------


def ocean_error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> Answer:
    """A gateway error: ``{"error_code", "error_message", "exception", "request_id"}``."""
    body = {
        "error_code": code,
        "error_message": message,
        "exception": message,
        "request_id": request_id(),
    }
    return Answer(status, body, code=code, headers=headers or {})


def ocean_failure(code: str, message: str) -> Answer:
    """A business failure: HTTP 200 with ``result.success = "false"``."""
    body = {"result": {"success": "false", "code": code, "message": message}}
    return Answer(200, body, code=code)


def ocean_success(result: Any) -> Answer:
    """A business success wrapping ``result``."""
    return Answer(
        200, {"result": {"success": "true", "code": "200", "message": "", "result": result}}
    )


def ocean_offer(product: Product, origin: str = DEFAULT_ORIGIN) -> dict[str, Any]:
    """One offer of ``product.search.imageQuery``, its image served at ``origin``. The supplier
    fields are the product's own where the catalogue states them; they, and the other extra
    fields, derive from the offer id otherwise."""
    oid = product.offer_id
    low = lowest_price(product)
    offer: dict[str, Any] = {
        "offerId": oid,
        "subject": product.title,
        "subjectTrans": product.title_en,
        "imageUrl": image_url(origin, oid),
        "priceInfo": {
            "price": _money(low),
            "jxhyPrice": None,
            "pfJxhyPrice": None,
            "consignPrice": _money(low * Decimal("1.1")),
            "promotionPrice": None,
        },
        "minOrderQuantity": product.min_order,
        "monthSold": product.month_sold,
        "companyName": product.company,
        "companyAddress": product.province + product.city,
        "repurchaseRate": _default(product.repurchase_rate, f"{10 + oid % 40}%"),
        "isOnePsale": _default(product.one_piece_sale, product.min_order == 1),
        "sellerIdentities": list(
            _default(
                product.seller_identities, ("super_factory",) if oid % 3 == 0 else ("tp_member",)
            )
        ),
        "topCategoryId": product.category_id,
        "secondCategoryId": product.category_id * 100 + oid % 10,
        "thirdCategoryId": product.category_id * 10_000 + oid % 100,
        "createDate": _date(days_before=30 + oid % 400),
        "modifyDate": _date(days_before=oid % 30),
        "productSimpleShippingInfo": {
            "shippingTimeGuarantee": _default(product.ship_in, "shipIn48Hours"),
            "freeShipping": product.freight == "free",
        },
    }
    if product.price_tiers:
        offer["priceRangeList"] = [
            {"startQuantity": t.min_quantity, "price": t.price} for t in product.price_tiers
        ]
    return offer


def _default(stated: T | None, derived: T) -> T:
    return derived if stated is None else stated


def _date(days_before: int) -> str:
    # A fixed epoch, not "now": the same offer must always read the same.
    moment = datetime(2025, 6, 1, 10, 0, tzinfo=GMT8) - timedelta(days=days_before)
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def ocean_token(access_token: str, refresh_token: str) -> Answer:
    """The ``system.oauth2.getToken`` answer; the refresh token lives about half a year."""
    timeout = datetime.now(UTC).astimezone(GMT8) + timedelta(days=180)
    body = {
        "access_token": access_token,
        "expires_in": "36000",
        "refresh_token": refresh_token,
        "refresh_token_timeout": timeout.strftime("%Y%m%d%H%M%S") + "000+0800",
    }
    return Answer(200, body)


def oauth_error(status: int, error: str, description: str) -> Answer:
    """An OAuth error: ``{"error", "error_description"}``."""
    return Answer(status, {"error": error, "error_description": description}, code=error)


# --- seed -----------------------------------------------------------------------------------


def seed_error(
    status: int,
    code: int,
    msg: str,
    sub_code: str | None = None,
    sub_msg: str | None = None,
    headers: dict[str, str] | None = None,
) -> Answer:
    """A TOP-style ``error_response``; the stats key is ``sub_code`` when given, else ``code``."""
    error: dict[str, Any] = {"code": code, "msg": msg}
    if sub_code is not None:
        error["sub_code"] = sub_code
        error["sub_msg"] = sub_msg or msg
    return Answer(
        status, {"error_response": error}, code=sub_code or str(code), headers=headers or {}
    )


def seed_success(matches: list[Match], total: int, origin: str = DEFAULT_ORIGIN) -> Answer:
    """``image_search_item_response`` holding ``matches`` in their varied formats, their images
    served at ``origin``."""
    body = {
        "image_search_item_response": {
            "total_results": total,
            "items": {"item": [seed_item(m, origin) for m in matches]},
            "request_id": request_id(),
        }
    }
    return Answer(200, body)


def seed_item(match: Match, origin: str = DEFAULT_ORIGIN) -> dict[str, Any]:
    """One seed item, its image served at ``origin``. The seed names no supplier signals, so
    an item has none. The field formats vary with ``offer_id % 4`` so cleaning gets exercised:

    ====== ========= ================ =========== ========== ======== ==========
    style  item_id   price            MOQ         similarity address  freight
    ====== ========= ================ =========== ========== ======== ==========
    0      int       ``"12.50"``      ``5``       ``0.93``   dict     free/paid
    1      str       ``"¥12.50-15.00"`` ``"5件"`` ``"93%"``  string   包邮/不包邮
    2      int       ``"12.5元"``     ``"≥5"``    absent     dict     free/paid
    3      str       ``12.5``         ``"5个起批"`` ``0.93``  string   包邮/不包邮
    ====== ========= ================ =========== ========== ======== ==========
    """
    product = match.product
    oid = product.offer_id
    style = oid % 4
    prices = _prices(product)
    low, high = min(prices), max(prices)
    price: str | float
    moq: int | str
    if style == 0:
        price, moq = _money(low), product.min_order
    elif style == 1:
        span = _money(low) if low == high else f"{_money(low)}-{_money(high)}"
        price, moq = f"¥{span}", f"{product.min_order}件"
    elif style == 2:
        price, moq = f"{_plain(low)}元", f"≥{product.min_order}"
    else:
        price, moq = float(low), f"{product.min_order}个起批"
    item: dict[str, Any] = {
        "item_id": oid if style % 2 == 0 else str(oid),
        "title": product.title,
        "price": price,
        "min_order_quantity": moq,
    }
    if style == 1:
        item["similarity"] = f"{match.similarity * 100:.0f}%"
    elif style != 2:
        item["similarity"] = round(match.similarity, 4)
    if product.price_tiers:
        item["price_ranges"] = [
            {"start_quantity": t.min_quantity, "price": t.price} for t in product.price_tiers
        ]
    chinese = style % 2 == 1
    item["address"] = (
        product.province + product.city
        if chinese
        else {"province": product.province, "city": product.city}
    )
    if chinese:
        item["freight_type"] = "包邮" if product.freight == "free" else "不包邮"
    else:
        item["freight_type"] = product.freight
    item["monthly_sales"] = product.month_sold
    item["company_name"] = product.company
    item["pic_url"] = image_url(origin, oid)
    return item


def _plain(value: Decimal) -> str:
    """``12.50`` -> ``12.5``, ``10.00`` -> ``10``."""
    text = _money(value)
    return text.rstrip("0").rstrip(".") if "." in text else text


# --- refusals both protocols make ----------------------------------------------------------


def acl_declined(protocol: ProtocolName, api: str) -> Answer:
    """The app may not call ``api``."""
    if protocol == "ocean":
        return ocean_error(400, "gw.APIACLDecline", f"app has no permission for api {api}")
    return seed_error(200, 11, "Insufficient isv permissions", "isv.api-acl-decline")


def rate_limited(protocol: ProtocolName, retry_after: int) -> Answer:
    """Over the rate limit; ``Retry-After`` says in how many whole seconds a slot frees."""
    headers = {"Retry-After": str(retry_after)}
    if protocol == "ocean":
        return ocean_error(400, "gw.QosAppFrequencyLimit", "app call frequency limited", headers)
    return seed_error(
        429, 7, "App Call Limited", "accesscontrol.limited-by-app-access-count", headers=headers
    )


def no_usage_left(protocol: ProtocolName) -> Answer:
    """The app's call quota is used up."""
    if protocol == "ocean":
        return ocean_error(400, "gw.NoUsageLeftError", "no usage left for this app")
    return seed_error(200, 7, "App Call Limited", "accesscontrol.limited-by-api-access-count")


# --- injected faults ------------------------------------------------------------------------

_HTML_5XX = (
    "<html><head><title>{status}</title></head><body><h1>{status} {reason}</h1></body></html>"
)
_REASONS = {500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}
_OCEAN_5XX_CODES = {500: "gw.InternalError", 503: "gw.ServiceUnavailable"}
_TRUNCATED: dict[ProtocolName, str] = {
    "ocean": '{"result": {"success": "true", "code": "200", "message": "", "result": {"totalRe',
    "seed": '{"image_search_item_response": {"total_results": 20, "items": {"item": [{"item_',
}


def server_error(protocol: ProtocolName, status: int) -> Answer:
    """An injected 5xx. Ocean's gateway answers 500/503 in its error shape; a 502 (and every
    seed 5xx) comes from the proxy in front as an HTML page."""
    code = _OCEAN_5XX_CODES.get(status) if protocol == "ocean" else None
    if code is not None:
        return ocean_error(status, code, _REASONS[status])
    page = _HTML_5XX.format(status=status, reason=_REASONS[status])
    return Answer(status, page, content_type="text/html")


def truncated(protocol: ProtocolName) -> Answer:
    """An injected HTTP 200 whose JSON body stops midway."""
    return Answer(200, _TRUNCATED[protocol])


def busy(protocol: ProtocolName) -> Answer:
    """An injected HTTP 200 business failure saying the system is busy: ocean's ``result``
    with ``success = "false"`` and an HTTP-like code; seed's TOP ``error_response`` with a
    platform (``isp.``) sub code. The codes and wording are sandbox assumptions."""
    if protocol == "ocean":
        return ocean_failure("500", "系统繁忙，请稍后再试")
    return seed_error(200, 15, "Remote service error", "isp.remote-service-error", "系统繁忙")
