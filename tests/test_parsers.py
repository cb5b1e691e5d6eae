"""The field parsers: every documented format, and totality on arbitrary input."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.parsers import (
    INT64_MAX,
    PRICE_LIMIT,
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

D = Decimal

# ---------------------------------------------------------------------------- documented formats


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (1520, 1520),
        ("1520", 1520),
        (" 1,520 ", 1520),
        ("610947572360", 610947572360),
        (1520.0, 1520),
        ("1520.00", 1520),
        ("-3", -3),
        ("１５２０", 1520),  # full-width digits
        (D("42"), 42),
        (INT64_MAX, INT64_MAX),
    ],
)
def test_parse_int_formats(raw: object, expected: int) -> None:
    assert parse_int(raw) == Parsed(expected)


@pytest.mark.parametrize(
    "raw",
    [True, 1.5, float("nan"), float("inf"), "12abc", "1_000", "1e3", [], {}, INT64_MAX + 1,
     "9" * 5000, D("1e999999"), D("NaN")],
)  # fmt: skip
def test_parse_int_rejects_with_a_note(raw: object) -> None:
    parsed = parse_int(raw)
    assert parsed.value is None
    assert parsed.note


def test_parse_int_minimum_and_absence() -> None:
    assert parse_int(0, minimum=1).value is None
    assert parse_int(0, minimum=1).note == "below 1: 0"
    assert parse_int(None) == Parsed(None)
    assert parse_int("  ") == Parsed(None)


@pytest.mark.parametrize(
    ("raw", "low", "high"),
    [
        ("12.50", "12.50", "12.50"),
        ("¥12.50-15.00", "12.50", "15.00"),
        ("￥12.50～15.00", "12.50", "15.00"),  # full-width yen and tilde
        ("12.5元", "12.5", "12.5"),
        (12.5, "12.5", "12.5"),
        (12, "12", "12"),
        (0.1, "0.1", "0.1"),  # through repr: no binary tail
        (D("3.14159"), "3.1416", "3.1416"),  # rounded half-even to 4 places
        ("1,200.00", "1200", "1200"),
        ("RMB 8 - 9", "8", "9"),
        ("12.5~15元/件", "12.5", "15"),
        ("15-12", "12", "15"),  # reversed range put in order
        ("12.50元-15元", "12.50", "15"),
        ({"price": "12.50", "consignPrice": "13.80"}, "12.50", "12.50"),  # ocean priceInfo
        ("0", "0", "0"),
    ],
)
def test_parse_price_range_formats(raw: object, low: str, high: str) -> None:
    parsed = parse_price_range(raw)
    assert parsed == Parsed((D(low), D(high)))
    assert all(v.as_tuple().exponent == -4 for v in parsed.value or ())


@pytest.mark.parametrize(
    "raw",
    ["abc", "-5", -5, float("nan"), float("-inf"), True, [12.5], {"price": None},
     {"price": {"price": 1}}, "12.5 dollars", 10**20, "1" * 30, "12..5", "¥"],
)  # fmt: skip
def test_parse_price_range_rejects_with_a_note(raw: object) -> None:
    parsed = parse_price_range(raw)
    assert parsed.value is None
    assert parsed.note


def test_parse_price_range_absent() -> None:
    assert parse_price_range(None) == Parsed(None)
    assert parse_price_range(" ") == Parsed(None)


def test_parse_price_tiers_both_spellings_sorted() -> None:
    ocean = [{"startQuantity": 10, "price": "12.00"}, {"startQuantity": 2, "price": "15.00"}]
    seed = [{"start_quantity": 2, "price": 15}, {"start_quantity": 10, "price": "¥12"}]
    expected = (PriceTier(2, D("15")), PriceTier(10, D("12")))
    assert parse_price_tiers(ocean) == Parsed(expected)
    assert parse_price_tiers(seed) == Parsed(expected)


def test_parse_price_tiers_keeps_usable_tiers_and_notes_the_rest() -> None:
    raw = [
        {"startQuantity": 2, "price": "15.00"},
        {"startQuantity": 2, "price": "14.00"},  # repeated quantity: the first wins
        {"startQuantity": 0, "price": "1"},
        {"startQuantity": 5, "price": "10-12"},  # a range is not a tier price
        {"price": "9"},
        "junk",
    ]
    parsed = parse_price_tiers(raw)
    assert parsed.value == (PriceTier(2, D("15")),)
    assert parsed.note is not None
    for fragment in ("repeated tier quantity 2", "below 1", "range", "missing", "not an object"):
        assert fragment in parsed.note


@pytest.mark.parametrize(("raw", "note"), [(None, False), ([], False), ("x", True), (5, True)])
def test_parse_price_tiers_absent_or_junk(raw: object, note: bool) -> None:
    parsed = parse_price_tiers(raw)
    assert parsed.value == (() if not note else None)
    assert bool(parsed.note) is note


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (5, (5, None)),
        ("5", (5, None)),
        ("5件", (5, "件")),
        ("≥2", (2, None)),
        ("≥5", (5, None)),
        (">=3", (3, None)),
        ("1个起批", (1, "个")),
        ("5个起批", (5, "个")),
        ("10 双 起订", (10, "双")),
        ("2套起", (2, "套")),
        ("3起批", (3, None)),
        ("100件以上", (100, "件")),
        (5.0, (5, None)),
        ("５件", (5, "件")),
    ],
)
def test_parse_min_order_formats(raw: object, expected: tuple[int, str | None]) -> None:
    assert parse_min_order(raw) == Parsed(expected)


@pytest.mark.parametrize("raw", [0, -1, "0件", 1.5, True, "件", "five", "5-10件", [5], {}])
def test_parse_min_order_rejects_with_a_note(raw: object) -> None:
    parsed = parse_min_order(raw)
    assert parsed.value is None
    assert parsed.note


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (0.93, 0.93),
        ("0.93", 0.93),
        ("93%", 0.93),
        (93, 0.93),
        ("93", 0.93),
        ("93.5 %", 0.935),
        (1, 1.0),
        ("100%", 1.0),
        (0, 0.0),
        ("1%", 0.01),
    ],
)
def test_parse_similarity_formats(raw: object, expected: float) -> None:
    assert parse_similarity(raw) == Parsed(expected)


@pytest.mark.parametrize(
    "raw", [101, -0.1, "150%", float("nan"), True, "未知", "high", [0.9], 10**400]
)
def test_parse_similarity_rejects_with_a_note(raw: object) -> None:
    parsed = parse_similarity(raw)
    assert parsed.value is None
    assert parsed.note


def test_parse_similarity_absent() -> None:
    assert parse_similarity(None) == Parsed(None)
    assert parse_similarity("") == Parsed(None)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("23%", 0.23),  # how ocean writes repurchaseRate
        ("7.5%", 0.075),
        (" 23 % ", 0.23),
        ("０%", 0.0),  # full-width digit
        ("100%", 1.0),
        ("0.23", 0.23),
        (0.23, 0.23),
        (23, 0.23),
        ("23", 0.23),
        (1, 1.0),
        (0, 0.0),
    ],
)
def test_parse_repurchase_rate_formats(raw: object, expected: float) -> None:
    assert parse_repurchase_rate(raw) == Parsed(expected)


@pytest.mark.parametrize(
    ("raw", "note"),
    [
        ("n/a", "not a rate: 'n/a'"),
        ("-5%", "not a rate: '-5%'"),
        ("150%", "out of range: '150%'"),
        (101, "out of range: 101"),
        (float("nan"), "not finite: nan"),
        (True, "not a rate: True"),
        (["23%"], "not a rate: ['23%']"),
        ({"rate": "23%"}, "not a rate: {'rate': '23%'}"),
    ],
)
def test_parse_repurchase_rate_rejects_with_a_note(raw: object, note: str) -> None:
    assert parse_repurchase_rate(raw) == Parsed(None, note)


def test_parse_repurchase_rate_absent() -> None:
    assert parse_repurchase_rate(None) == Parsed(None)
    assert parse_repurchase_rate("  ") == Parsed(None)


@settings(max_examples=200, deadline=None)
@given(
    tenths=st.integers(0, 1000),
    spacing=st.sampled_from(["", " "]),
    fmt=st.sampled_from(["{}%", "{}％"]),
)
def test_a_written_percentage_is_its_hundredth(tenths: int, spacing: str, fmt: str) -> None:
    """Any percentage from 0 to 100 (to a tenth), as a gateway writes it, reads as p / 100."""
    percent = D(tenths) / 10
    text = fmt.format(f"{percent}{spacing}")
    assert parse_repurchase_rate(text) == Parsed(float(percent / 100))


@settings(max_examples=200, deadline=None)
@given(share=st.floats(0.0, 1.0))
def test_a_fraction_reads_as_itself(share: float) -> None:
    assert parse_repurchase_rate(share) == Parsed(share)


@settings(max_examples=200, deadline=None)
@given(share=st.decimals(0, 1, places=4))
def test_a_written_fraction_reads_as_itself(share: Decimal) -> None:
    assert parse_repurchase_rate(f"{share:f}") == Parsed(float(share))


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (True, True),
        (False, False),
        (1, True),
        (0, False),
        (1.0, True),
        ("true", True),
        ("FALSE", False),
        (" Yes ", True),
        ("n", False),
        ("1", True),
        ("0", False),
        (None, None),
        ("", None),
    ],
)
def test_parse_bool_formats(raw: object, expected: bool | None) -> None:
    assert parse_bool(raw) == Parsed(expected)


@pytest.mark.parametrize("raw", ["maybe", 2, -1, 0.5, [], {}, "是否"])
def test_parse_bool_rejects_with_a_note(raw: object) -> None:
    parsed = parse_bool(raw)
    assert parsed.value is None
    assert parsed.note and parsed.note.startswith("not a yes/no flag: ")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (["super_factory", "tp_member"], ("super_factory", "tp_member")),
        (["tp_member", "super_factory", "tp_member"], ("tp_member", "super_factory")),
        ([" super_factory "], ("super_factory",)),
        ("super_factory", ("super_factory",)),
        ([], ()),
        (None, ()),
        ("", ()),
    ],
)
def test_parse_labels_formats(raw: object, expected: tuple[str, ...]) -> None:
    assert parse_labels(raw) == Parsed(expected)


def test_parse_labels_keeps_usable_labels_and_notes_the_rest() -> None:
    assert parse_labels(["factory", 3, " ", None, "factory", "tp"]) == Parsed(
        ("factory", "tp"), "not text: 3; blank label: ' '; blank label: None"
    )
    assert parse_labels({"factory": True}) == Parsed((), "not a list of labels: {'factory': True}")
    assert parse_labels(5) == Parsed((), "not a list of labels: 5")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("free", "free"),
        ("FREE", "free"),
        ("paid", "paid"),
        ("包邮", "free"),
        ("不包邮", "paid"),
        ("免运费", "free"),
        ("运费自理", "paid"),
        (True, "free"),
        (False, "paid"),
        (1, "free"),
        (0, "paid"),
        ("1", "free"),
        ("0", "paid"),
        ("true", "free"),
        ("false", "paid"),
        ("unknown", "unknown"),
        (None, "unknown"),
        ("", "unknown"),
    ],
)
def test_parse_freight_formats(raw: object, expected: str) -> None:
    assert parse_freight(raw) == Parsed(expected)


@pytest.mark.parametrize("raw", ["maybe", 2, {}, [], 0.5, "包"])
def test_parse_freight_junk_is_unknown_with_a_note(raw: object) -> None:
    parsed = parse_freight(raw)
    assert parsed.value == "unknown"
    assert parsed.note


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("浙江省杭州市", ("浙江省", "杭州市")),
        ("浙江省金华市", ("浙江省", "金华市")),
        ("浙江省 杭州市 余杭区", ("浙江省", "杭州市")),
        ("广东省深圳市宝安区", ("广东省", "深圳市")),
        ("浙江杭州", ("浙江省", "杭州")),
        ("上海市", ("上海市", "上海市")),
        ("上海", ("上海市", "上海市")),
        ("北京市朝阳区", ("北京市", "北京市")),
        ("重庆市渝中区", ("重庆市", "重庆市")),
        ("广西壮族自治区南宁市", ("广西壮族自治区", "南宁市")),
        ("内蒙古自治区呼和浩特市", ("内蒙古自治区", "呼和浩特市")),
        ("新疆维吾尔自治区伊犁哈萨克自治州伊宁市", ("新疆维吾尔自治区", "伊犁哈萨克自治州")),
        ("广西南宁", ("广西壮族自治区", "南宁")),
        ("吉林省吉林市", ("吉林省", "吉林市")),
        ("吉林市", ("吉林省", "吉林市")),
        ("黑龙江省哈尔滨市", ("黑龙江省", "哈尔滨市")),
        ("香港特别行政区", ("香港特别行政区", "香港特别行政区")),
        ("浙江省", ("浙江省", None)),
        ("杭州市", (None, "杭州市")),
        ({"province": "浙江省", "city": "杭州市"}, ("浙江省", "杭州市")),
        ({"province": "浙江", "city": "杭州市"}, ("浙江省", "杭州市")),
        ({"province": "上海市"}, ("上海市", "上海市")),
        ({"city": "义乌市"}, (None, "义乌市")),
    ],
)
def test_parse_location_formats(raw: object, expected: tuple[str | None, str | None]) -> None:
    assert parse_location(raw) == Parsed(expected)


@pytest.mark.parametrize("raw", ["Hangzhou", "朝阳区", 5, [], {}, {"province": 5}])
def test_parse_location_rejects_with_a_note(raw: object) -> None:
    parsed = parse_location(raw)
    assert parsed.value is None
    assert parsed.note


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("  杯子  保温 ", "杯子 保温"),
        ("a\tb\nc", "a b c"),
        ("a\x00b", "a b"),
        ("\u3000标题\u3000", "标题"),
        ("", None),
        ("   ", None),
        (None, None),
    ],
)
def test_parse_text_formats(raw: object, expected: str | None) -> None:
    assert parse_text(raw) == Parsed(expected)


def test_parse_text_replaces_lone_surrogates() -> None:
    parsed = parse_text("a\ud800b")
    assert parsed == Parsed("a\ufffdb", "invalid unicode replaced")
    assert parsed.value is not None
    parsed.value.encode("utf-8")


def test_parse_text_refuses_non_text() -> None:
    assert parse_text(12).value is None
    assert parse_text(12).note == "not text: 12"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("https://cbu01.alicdn.com/a.jpg", "https://cbu01.alicdn.com/a.jpg"),
        ("//cbu01.alicdn.com/a.jpg", "https://cbu01.alicdn.com/a.jpg"),
        ("http://x.cn/a b.jpg", "http://x.cn/a%20b.jpg"),
        (None, None),
    ],
)
def test_parse_url_formats(raw: object, expected: str | None) -> None:
    assert parse_url(raw) == Parsed(expected)


@pytest.mark.parametrize("raw", ["ftp://x/a.jpg", "a.jpg", "javascript:alert(1)", 5])
def test_parse_url_rejects_with_a_note(raw: object) -> None:
    assert parse_url(raw).value is None
    assert parse_url(raw).note


def test_brief_is_short_and_never_raises() -> None:
    deep: list[object] = []
    for _ in range(100_000):
        deep = [deep]
    assert brief(deep) == "<list>"
    assert len(brief("x" * 1000)) == 60


# ---------------------------------------------------------------------------- totality

_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text()
    | st.sampled_from(["12.50", "¥12.50-15.00", "5件", "93%", "包邮", "浙江省杭州市", "≥2"])
)
JSON_LIKE = st.recursive(  # what json.loads can return (NaN and Infinity included)
    _SCALARS,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(["price", "startQuantity", "start_quantity", "province", "city"])
            | st.text(max_size=5),
            children,
            max_size=4,
        )
    ),
    max_leaves=12,
)

PARSERS: dict[str, Callable[[object], Parsed[object]]] = {
    "int": parse_int,
    "price_range": parse_price_range,
    "price_tiers": parse_price_tiers,
    "min_order": parse_min_order,
    "similarity": parse_similarity,
    "repurchase_rate": parse_repurchase_rate,
    "bool": parse_bool,
    "labels": parse_labels,
    "freight": parse_freight,
    "location": parse_location,
    "text": parse_text,
    "url": parse_url,
}


def _check_invariants(name: str, parsed: Parsed[object]) -> None:
    assert isinstance(parsed, Parsed)
    assert parsed.note is None or (isinstance(parsed.note, str) and parsed.note)
    value = parsed.value
    if name == "freight":
        assert value in ("free", "paid", "unknown")
    if name == "labels":
        assert isinstance(value, tuple) and len(value) == len(set(value))
        assert all(isinstance(label, str) and label and label == label.strip() for label in value)
        for label in value:
            label.encode("utf-8")
    if value is None:
        return
    if name == "int":
        assert isinstance(value, int) and -INT64_MAX - 1 <= value <= INT64_MAX
    elif name == "price_range":
        low, high = value  # type: ignore[misc]
        assert D(0) <= low <= high < PRICE_LIMIT
        assert low.as_tuple().exponent == high.as_tuple().exponent == -4
    elif name == "price_tiers":
        quantities = [tier.min_quantity for tier in value]  # type: ignore[attr-defined]
        assert quantities == sorted(set(quantities))
        assert all(q >= 1 for q in quantities)
        assert all(D(0) <= tier.price < PRICE_LIMIT for tier in value)  # type: ignore[attr-defined]
    elif name == "min_order":
        quantity, unit = value  # type: ignore[misc]
        assert 1 <= quantity <= INT64_MAX
        assert unit is None or (isinstance(unit, str) and unit)
    elif name in ("similarity", "repurchase_rate"):
        assert isinstance(value, float) and 0.0 <= value <= 1.0
    elif name == "bool":
        assert isinstance(value, bool)
    elif name == "location":
        assert value != (None, None)
        assert all(part is None or (isinstance(part, str) and part) for part in value)  # type: ignore[attr-defined]
    elif name in ("text", "url"):
        assert isinstance(value, str) and value == value.strip() and value
        value.encode("utf-8")  # storable as Arrow/Parquet UTF-8


@pytest.mark.parametrize("name", sorted(PARSERS))
@settings(max_examples=150, deadline=None)
@given(value=JSON_LIKE | st.decimals(allow_nan=True, allow_infinity=True))
def test_parsers_are_total_on_json_like_values(name: str, value: object) -> None:
    _check_invariants(name, PARSERS[name](value))


@pytest.mark.parametrize("name", sorted(PARSERS))
@settings(max_examples=150, deadline=None)
@given(value=st.text() | st.text(alphabet="0123456789.,-~¥%件个≥起批元省市 ", max_size=12))
def test_parsers_are_total_on_text(name: str, value: str) -> None:
    _check_invariants(name, PARSERS[name](value))


@pytest.mark.parametrize("name", sorted(PARSERS))
@pytest.mark.parametrize(
    "value",
    [object(), b"12.5", (5,), {5}, 1j, "\ud800", "9" * 5000, D("1e999999"), D("sNaN"),
     float("1e308"), -0.0, 10**100],
)  # fmt: skip
def test_parsers_are_total_on_odd_python_values(name: str, value: object) -> None:
    _check_invariants(name, PARSERS[name](value))
