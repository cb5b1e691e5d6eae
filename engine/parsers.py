"""Total field parsers: any input in, a typed value or ``None`` plus a note out.

Gateways disagree on how they spell a field (``"¥12.50-15.00"``, ``"5件"``, ``"93%"``,
``"包邮"``, ``{"province": ..., "city": ...}``). Each parser here accepts *anything* a JSON
body can hold (and more), never raises, and returns a :class:`Parsed`:

- ``value`` is the typed value, or ``None`` when there is none;
- ``note`` says why the input could not be used, or is ``None`` when the value is fine
  or the field was legitimately absent (``None`` or a blank string).

Prices are :class:`~decimal.Decimal` rounded half-even to 4 places and below ``10**14``, so
they fit Arrow ``decimal128(18, 4)`` exactly. Integers fit int64.
"""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Context, Decimal, InvalidOperation
from typing import Generic, TypeGuard, TypeVar

T = TypeVar("T")

INT64_MAX = 2**63 - 1
PRICE_LIMIT = Decimal(10) ** 14
"""Prices must be below this: ``decimal128(18, 4)`` leaves 14 digits before the point."""

_SCALE = Decimal("0.0001")
_CONTEXT = Context(prec=34, rounding=ROUND_HALF_EVEN)
_BRIEF_LIMIT = 60


@dataclass(frozen=True)
class Parsed(Generic[T]):
    """A parsed field: the value (or ``None``) and why it could not be parsed, if so."""

    value: T | None
    note: str | None = None


@dataclass(frozen=True)
class PriceTier:
    """One quantity tier: buying at least ``min_quantity`` units costs ``price`` CNY each."""

    min_quantity: int
    price: Decimal


def brief(value: object) -> str:
    """A short rendering of ``value`` (its repr, cut to 60 characters) for notes; never raises."""
    try:
        text = repr(value)
    except Exception:  # reprs of huge ints or deep nesting can raise; a note must not
        text = f"<{type(value).__name__}>"
    return text if len(text) <= _BRIEF_LIMIT else text[: _BRIEF_LIMIT - 1] + "…"


def _fail(problem: str, value: object) -> Parsed[T]:
    return Parsed(None, f"{problem}: {brief(value)}")


def _squash(text: str) -> str:
    """NFKC (full-width digits and signs become ASCII) with every whitespace removed."""
    return re.sub(r"\s+", "", unicodedata.normalize("NFKC", text))


def _is_number(value: object) -> TypeGuard[int | float | Decimal]:
    # bool is an int subclass, but True is never a count or a price.
    return isinstance(value, int | float | Decimal) and not isinstance(value, bool)


# ---------------------------------------------------------------------------- text


def parse_text(value: object) -> Parsed[str]:
    """Clean free text: strip, collapse whitespace, drop control characters.

    Lone surrogates (possible from JSON ``\\ud800`` escapes, not encodable as UTF-8) become
    U+FFFD with a note. ``None`` and blank strings give ``None``; non-strings give a note.
    """
    if value is None:
        return Parsed(None)
    if not isinstance(value, str):
        return _fail("not text", value)
    note = None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        note = "invalid unicode replaced"
    text = _CONTROL_CHARACTERS.sub(" ", value)
    text = " ".join(text.split())
    return Parsed(text or None, note)


_CONTROL_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f]")
"""Unicode category Cc, exactly: C0 controls, DEL and C1 controls."""


def parse_url(value: object) -> Parsed[str]:
    """An http(s) URL; protocol-relative ``//host/path`` (common on 1688) becomes https."""
    text = parse_text(value)
    if text.value is None:
        return text
    url = text.value.replace(" ", "%20")
    if url.startswith("//"):
        url = "https:" + url
    if not re.match(r"(?i)https?://[^/\s]+", url):
        return _fail("not an http(s) URL", value)
    return Parsed(url, text.note)


# ---------------------------------------------------------------------------- integers

_INT_TEXT = re.compile(r"[+-]?(?:[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.0+)?")


def parse_int(value: object, *, minimum: int | None = None) -> Parsed[int]:
    """An int64: ints, whole floats, and strings like ``"1520"``, ``"1,520"``, ``"1520.0"``.

    Args:
        value: anything.
        minimum: values below it give ``None`` and a note.
    """
    if value is None:
        return Parsed(None)
    if isinstance(value, bool):
        return _fail("boolean is not a number", value)
    if isinstance(value, float | Decimal):
        finite = value.is_finite() if isinstance(value, Decimal) else math.isfinite(value)
        if not finite:
            return _fail("not finite", value)
        if not -INT64_MAX - 1 <= value <= INT64_MAX + 1:  # before int(Decimal("1e999999"))
            return _fail("out of int64 range", value)
        if value != int(value):
            return _fail("not a whole number", value)
        number = int(value)
    elif isinstance(value, int):
        number = value
    elif isinstance(value, str):
        text = _squash(value)
        if not text:
            return Parsed(None)
        if not _INT_TEXT.fullmatch(text):
            return _fail("not an integer", value)
        whole = text.split(".")[0].replace(",", "")
        if len(whole.lstrip("+-").lstrip("0")) > 19:  # int() refuses very long digit strings
            return _fail("out of int64 range", value)
        number = int(whole)
    else:
        return _fail("not a number", value)
    if not -INT64_MAX - 1 <= number <= INT64_MAX:
        return _fail("out of int64 range", value)
    if minimum is not None and number < minimum:
        return _fail(f"below {minimum}", value)
    return Parsed(number)


# ---------------------------------------------------------------------------- prices

_NUM = r"(?:[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.[0-9]+)?"
_CUR = r"(?:¥|RMB|CNY)?"
_PRICE_TEXT = re.compile(
    rf"(?i){_CUR}(?P<low>{_NUM})元?(?:(?:-|~|至|—|–){_CUR}(?P<high>{_NUM})元?)?(?:/\D{{1,3}})?"
)


def _price(value: int | float | Decimal | str) -> Parsed[Decimal]:
    """One non-negative price from a number or a bare numeric string."""
    if isinstance(value, float) and not math.isfinite(value):
        return _fail("not finite", value)
    if isinstance(value, int) and abs(value) >= PRICE_LIMIT:  # before Decimal(): huge ints
        return _fail("out of range", value)
    try:
        # repr() of a float is its shortest round-trip form: 0.1 -> Decimal("0.1").
        number = Decimal(repr(value) if isinstance(value, float) else value)
    except (InvalidOperation, ValueError, TypeError):
        return _fail("not a price", value)
    if not number.is_finite():
        return _fail("not finite", value)
    if number < 0:
        return _fail("negative price", value)
    if number >= PRICE_LIMIT:
        return _fail("out of range", value)
    return Parsed(number.quantize(_SCALE, context=_CONTEXT))


def parse_price_range(value: object) -> Parsed[tuple[Decimal, Decimal]]:
    """A CNY price range ``(low, high)`` with ``0 <= low <= high``.

    Accepts numbers (``12.5``), strings ``"12.50"``, ``"¥12.50-15.00"``, ``"12.5元"``,
    ``"￥1,200.00"``, ``"12.5~15元/件"``, and a dict with a ``"price"`` key (ocean's
    ``priceInfo``). A single price gives ``(p, p)``; a reversed range is put in order.
    """
    if value is None:
        return Parsed(None)
    if isinstance(value, dict):
        inner = value.get("price")
        if inner is None or isinstance(inner, dict):  # one level only: nesting is junk
            return _fail("no usable price key", value)
        return parse_price_range(inner)
    if _is_number(value):
        single = _price(value)
        return Parsed(None, single.note) if single.value is None else Parsed((single.value,) * 2)
    if not isinstance(value, str):
        return _fail("not a price", value)
    text = _squash(value)
    if not text:
        return Parsed(None)
    match = _PRICE_TEXT.fullmatch(text)
    if match is None:
        return _fail("not a price", value)
    bounds = [_price(part.replace(",", "")) for part in match.group("low", "high") if part]
    for bound in bounds:
        if bound.value is None:
            return Parsed(None, bound.note)
    ordered = sorted(bound.value for bound in bounds if bound.value is not None)
    return Parsed((ordered[0], ordered[-1]))


_TIER_QUANTITY_KEYS = ("startQuantity", "start_quantity", "min_quantity", "minQuantity")


def _tier(entry: object) -> Parsed[PriceTier]:
    if not isinstance(entry, dict):
        return _fail("tier is not an object", entry)
    raw_quantity = next((entry[k] for k in _TIER_QUANTITY_KEYS if k in entry), None)
    quantity = parse_int(raw_quantity, minimum=1)
    if quantity.value is None:
        return Parsed(None, f"tier quantity {quantity.note or 'missing'}")
    if isinstance(entry.get("price"), dict):
        return _fail("tier price is not a price", entry)
    price = parse_price_range(entry.get("price"))
    if price.value is None:
        return Parsed(None, f"tier price {price.note or 'missing'}")
    low, high = price.value
    if low != high:
        return _fail("tier price is a range", entry)
    return Parsed(PriceTier(quantity.value, low))


def parse_price_tiers(value: object) -> Parsed[tuple[PriceTier, ...]]:
    """Quantity price tiers, sorted by quantity; ``()`` when absent.

    Accepts ocean's ``[{"startQuantity": 2, "price": "15.00"}]`` and seed's
    ``[{"start_quantity": 2, "price": "15.00"}]``. Unusable tiers and repeated quantities
    are dropped (the first wins) and noted; the usable ones are kept.
    """
    if value is None:
        return Parsed(())
    if not isinstance(value, list):
        return _fail("tiers are not a list", value)
    tiers: dict[int, PriceTier] = {}
    problems: list[str] = []
    for entry in value:
        tier = _tier(entry)
        if tier.value is None:
            problems.append(tier.note or "unusable tier")
        elif tier.value.min_quantity in tiers:
            problems.append(f"repeated tier quantity {tier.value.min_quantity}")
        else:
            tiers[tier.value.min_quantity] = tier.value
    ordered = tuple(tiers[quantity] for quantity in sorted(tiers))
    return Parsed(ordered, "; ".join(problems) or None)


# ---------------------------------------------------------------------------- minimum order

_MIN_ORDER_TEXT = re.compile(
    r"(?:≥|>=|>|大于等于|最少|起批量|起订量)?(?P<qty>[0-9]+)"
    r"(?P<unit>[^\W\d_起批订以上]{1,4})?(?:起批|起订|起|以上)?"
)


def parse_min_order(value: object) -> Parsed[tuple[int, str | None]]:
    """Minimum order quantity (>= 1) and its unit: ``5``, ``"5件"``, ``"≥2"``, ``"1个起批"``.

    ``"5件"`` gives ``(5, "件")``; a bare number or ``"≥2"`` has no unit (``None``).
    A quantity of 0 or less is not a minimum order: ``None`` and a note.
    """
    if value is None:
        return Parsed(None)
    if isinstance(value, str):
        text = _squash(value)
        if not text:
            return Parsed(None)
        match = _MIN_ORDER_TEXT.fullmatch(text)
        if match is None:
            return _fail("not a minimum order", value)
        quantity = parse_int(match.group("qty"), minimum=1)
        unit = match.group("unit")
    else:
        quantity = parse_int(value, minimum=1)
        unit = None
    if quantity.value is None:
        return Parsed(None, quantity.note)
    return Parsed((quantity.value, unit))


# ---------------------------------------------------------------------------- shares

_SHARE_TEXT = re.compile(r"(?P<num>[0-9]+(?:\.[0-9]+)?|\.[0-9]+)(?P<percent>%)?")
_HUNDRED = Decimal(100)


def _share(value: object, what: str) -> Parsed[float]:
    """A share in ``[0, 1]`` from a fraction or a percentage; ``what`` names it in notes."""
    if value is None:
        return Parsed(None)
    percent = False
    if isinstance(value, str):
        text = _squash(value)
        if not text:
            return Parsed(None)
        match = _SHARE_TEXT.fullmatch(text)
        if match is None:
            return _fail(f"not a {what}", value)
        number = Decimal(match.group("num"))
        percent = match.group("percent") is not None
    elif isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value <= 100:  # checked before Decimal(): ints may be huge
            return _fail("out of range", value)
        number = Decimal(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            return _fail("not finite", value)
        number = Decimal(repr(value))
    else:
        return _fail(f"not a {what}", value)
    if not 0 <= number <= 100:
        return _fail("out of range", value)
    if percent or number > 1:
        number = _CONTEXT.divide(number, _HUNDRED)
    return Parsed(float(number))


def parse_similarity(value: object) -> Parsed[float]:
    """A similarity score in ``[0, 1]``: ``0.93``, ``"0.93"``, ``"93%"``, ``93`` -> ``0.93``.

    A number above 1 (and at most 100) is read as a percentage. Anything outside ``[0, 100]``
    gives ``None`` and a note; absence gives ``None`` without one (ocean never has a score).
    """
    return _share(value, "similarity")


def parse_repurchase_rate(value: object) -> Parsed[float]:
    """A repurchase rate in ``[0, 1]``, read as :func:`parse_similarity` reads a score:
    ``"23%"`` (how ocean's ``repurchaseRate`` is written, as a string), ``"23.5%"``, ``0.23``,
    ``"0.23"`` and ``23`` give ``0.23`` / ``0.235``; a bare number above 1 is a percentage, so
    ``1`` is 100%. Absence gives ``None`` without a note; junk and values outside ``[0, 100]``
    give ``None`` and a note.
    """
    return _share(value, "rate")


# ---------------------------------------------------------------------------- freight

FREIGHT_VALUES = ("free", "paid", "unknown")

_FREE_WORDS = frozenset(
    {"free", "freeshipping", "包邮", "免运费", "卖家承担运费", "卖家包邮", "true", "yes", "1"}
)
_PAID_WORDS = frozenset(
    {"paid", "notfree", "不包邮", "运费自理", "买家承担运费", "收运费", "false", "no", "0"}
)
_UNKNOWN_WORDS = frozenset({"unknown", "未知"})


def parse_freight(value: object) -> Parsed[str]:
    """Freight terms: ``"free"``, ``"paid"`` or ``"unknown"`` (never ``None``).

    Words (``"free"``, ``"paid"``, ``"包邮"``, ``"不包邮"``, ``"true"``/``"false"``), booleans
    and the codes 1/0 (and ``"1"``/``"0"``) read as "free shipping?": 1 and true mean free.
    Absence and ``"unknown"`` give ``"unknown"`` without a note; anything else with one.
    """
    if value is None:
        return Parsed("unknown")
    if isinstance(value, bool):
        return Parsed("free" if value else "paid")
    if isinstance(value, int | float) and value in (0, 1):
        return Parsed("free" if value == 1 else "paid")
    if not isinstance(value, str):
        return Parsed("unknown", f"not a freight term: {brief(value)}")
    word = re.sub(r"[\s_-]+", "", unicodedata.normalize("NFKC", value)).lower()
    if word in _FREE_WORDS:
        return Parsed("free")
    if word in _PAID_WORDS:
        return Parsed("paid")
    if not word or word in _UNKNOWN_WORDS:
        return Parsed("unknown")
    return Parsed("unknown", f"not a freight term: {brief(value)}")


# ---------------------------------------------------------------------------- flags and badges

_TRUE_WORDS = frozenset({"true", "yes", "y", "1"})
_FALSE_WORDS = frozenset({"false", "no", "n", "0"})


def parse_bool(value: object) -> Parsed[bool]:
    """A yes/no flag: booleans, the numbers 1 and 0, and ``"true"``/``"false"``,
    ``"yes"``/``"no"``, ``"y"``/``"n"``, ``"1"``/``"0"`` in any case (gateways send flags such
    as ``isOnePsale`` as JSON booleans or as strings). Absence or a blank string gives ``None``
    without a note; anything else ``None`` and a note.
    """
    if value is None:
        return Parsed(None)
    if isinstance(value, bool):
        return Parsed(value)
    if isinstance(value, int | float) and value in (0, 1):
        return Parsed(value == 1)
    if not isinstance(value, str):
        return _fail("not a yes/no flag", value)
    word = _squash(value).lower()
    if not word:
        return Parsed(None)
    if word in _TRUE_WORDS:
        return Parsed(True)
    if word in _FALSE_WORDS:
        return Parsed(False)
    return _fail("not a yes/no flag", value)


def parse_labels(value: object) -> Parsed[tuple[str, ...]]:
    """A list of labels (ocean's ``sellerIdentities``: ``["super_factory", "tp_member"]``) as
    given, each cleaned as :func:`parse_text` cleans text, repeats dropped, order kept; ``()``
    when absent. A single string is one label. Entries that are not text (or blank) are dropped
    with a note; the usable ones are kept.
    """
    if value is None or (isinstance(value, str) and not parse_text(value).value):
        return Parsed(())
    entries = [value] if isinstance(value, str) else value
    if not isinstance(entries, list):
        return Parsed((), f"not a list of labels: {brief(value)}")
    labels: dict[str, None] = {}  # insertion-ordered set
    problems: list[str] = []
    for entry in entries:
        text = parse_text(entry)
        if text.note:
            problems.append(text.note)
        if text.value is not None:
            labels[text.value] = None
        elif not text.note:
            problems.append(f"blank label: {brief(entry)}")
    return Parsed(tuple(labels), "; ".join(problems) or None)


# ---------------------------------------------------------------------------- location

_MUNICIPALITIES = ("北京市", "上海市", "天津市", "重庆市")
_SPECIAL_REGIONS = ("香港特别行政区", "澳门特别行政区")
_PROVINCES = (
    *("河北省", "山西省", "辽宁省", "吉林省", "黑龙江省", "江苏省", "浙江省", "安徽省"),
    *("福建省", "江西省", "山东省", "河南省", "湖北省", "湖南省", "广东省", "海南省"),
    *("四川省", "贵州省", "云南省", "陕西省", "甘肃省", "青海省", "台湾省"),
)
_AUTONOMOUS_REGIONS = {
    "内蒙古自治区": "内蒙古",
    "广西壮族自治区": "广西",
    "西藏自治区": "西藏",
    "宁夏回族自治区": "宁夏",
    "新疆维吾尔自治区": "新疆",
}


def _province_prefixes() -> tuple[tuple[str, str], ...]:
    """(prefix, full name) pairs, longest prefix first, so "吉林省" wins over "吉林"."""
    pairs = [(name, name) for name in (*_MUNICIPALITIES, *_PROVINCES, *_SPECIAL_REGIONS)]
    pairs += [(name[:-1], name) for name in (*_MUNICIPALITIES, *_PROVINCES)]
    pairs += [(name[:2], name) for name in _SPECIAL_REGIONS]
    pairs += [(name, name) for name in _AUTONOMOUS_REGIONS]
    pairs += [(short, name) for name, short in _AUTONOMOUS_REGIONS.items()]
    return tuple(sorted(pairs, key=lambda pair: -len(pair[0])))


_PROVINCE_PREFIXES = _province_prefixes()
_CITY_LEVEL = frozenset((*_MUNICIPALITIES, *_SPECIAL_REGIONS))
_CITY_TEXT = re.compile(r".+?(?:自治州|地区|盟|市)")


def _split_address(text: str) -> tuple[str | None, str | None]:
    for prefix, province in _PROVINCE_PREFIXES:
        if not text.startswith(prefix):
            continue
        if province in _CITY_LEVEL:  # 直辖市 and SARs are their own city: "北京市朝阳区"
            return province, province
        rest = text[len(prefix) :]
        if rest.startswith("市"):  # "吉林市": the city that shares its province's name
            return province, prefix + "市"
        city = _CITY_TEXT.match(rest)
        return province, (city.group(0) if city else rest) or None
    city = _CITY_TEXT.match(text)
    return None, city.group(0) if city else None


def _province_name(text: str) -> str:
    """The full name of a province written in full or short ("浙江" -> "浙江省")."""
    return next((full for prefix, full in _PROVINCE_PREFIXES if text == prefix), text)


def parse_location(value: object) -> Parsed[tuple[str | None, str | None]]:
    """Province and city from ``"浙江省杭州市"`` or ``{"province": ..., "city": ...}``.

    Provinces come out in full ("浙江杭州" -> 浙江省 / 杭州). A municipality or special
    region is its own city ("北京市朝阳区" -> 北京市 / 北京市). The city is the first unit
    ending in 市, 自治州, 地区 or 盟 (districts are dropped), else the rest of the text.
    A string whose province is not recognised keeps only a leading city unit, if any.
    """
    if value is None:
        return Parsed(None)
    if isinstance(value, dict):
        province = parse_text(value.get("province", value.get("prov")))
        city = parse_text(value.get("city"))
        notes = [
            f"{name} {part.note}"
            for name, part in (("province", province), ("city", city))
            if part.note
        ]
        province_name = _province_name(_squash(province.value)) if province.value else None
        city_name = city.value
        if city_name is None and province_name in _CITY_LEVEL:
            city_name = province_name
        if province_name is None and city_name is None:
            return Parsed(None, "; ".join(notes) or f"no province or city: {brief(value)}")
        return Parsed((province_name, city_name), "; ".join(notes) or None)
    text = parse_text(value)
    if text.value is None:
        return Parsed(None, text.note)
    province_name, city_name = _split_address(_squash(text.value))
    if province_name is None and city_name is None:
        return _fail("unrecognised address", value)
    return Parsed((province_name, city_name), text.note)
