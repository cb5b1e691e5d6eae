"""Signatures of both protocols: published vectors, complete requests signed by the official
SDKs' code, ordering, timestamps, properties, CLI.

Every fixed vector is checked against both the engine (:mod:`engine.signing`, the forms of
:mod:`engine.client`) and the sandbox's independent check (:mod:`engine.sandbox.verify`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.cli import main
from engine.client import (
    SearchFilters,
    ocean_query_params,
    ocean_upload_params,
    seed_search_params,
    sign_ocean,
    sign_seed,
)
from engine.commands.sign import SECRET_MARK
from engine.protocol import OCEAN_QUERY, OCEAN_UPLOAD, ocean_path
from engine.sandbox import verify
from engine.signing import ocean_signature, seed_signature, seed_timestamp

OCEAN_PATH = "param2/1/system/currentTime/1000000"
OCEAN_VECTOR = "33E54F4F7B989E3E0E912D3FBD2F1A03CA7CCE88"
SEED_PARAMS = {
    "method": "taobao.user.seller.get",
    "timestamp": "2013-05-06 13:52:03",
    "format": "xml",
    "app_key": "test",
    "v": "2.0",
    "fields": "nick",
    "sign_method": "md5",
    "session": "test",
}
SEED_VECTOR = "72CB4D809B375A54502C09360D879C64"


OceanSign = Callable[[str, Mapping[str, str], str], str]
SeedSign = Callable[[Mapping[str, str], str], str]

# Each fixed vector holds for the engine's signing and for the sandbox's own check alike.
ocean_signers = pytest.mark.parametrize(
    "ocean_sign", [ocean_signature, verify.expected_ocean], ids=["engine", "sandbox"]
)
seed_signers = pytest.mark.parametrize(
    "seed_sign", [seed_signature, verify.expected_seed], ids=["engine", "sandbox"]
)


def hmac_sha1(secret: str, message: str) -> str:
    return hmac.new(secret.encode(), message.encode(), hashlib.sha1).hexdigest().upper()


@ocean_signers
def test_ocean_published_vector(ocean_sign: OceanSign) -> None:
    assert ocean_sign(OCEAN_PATH, {"b": "2", "a": "1"}, "test123") == OCEAN_VECTOR


@seed_signers
def test_seed_published_vector(seed_sign: SeedSign) -> None:
    assert seed_sign(SEED_PARAMS, "test") == SEED_VECTOR


@ocean_signers
@seed_signers
def test_signature_parameters_are_not_signed(ocean_sign: OceanSign, seed_sign: SeedSign) -> None:
    signed = {"b": "2", "a": "1", "_aop_signature": "X"}
    assert ocean_sign(OCEAN_PATH, signed, "test123") == OCEAN_VECTOR
    assert seed_sign({**SEED_PARAMS, "sign": "X"}, "test") == SEED_VECTOR


@ocean_signers
def test_ocean_sorts_concatenated_pairs_not_keys(ocean_sign: OceanSign) -> None:
    # "a"+"z" > "ab"+"1", though key "a" < key "ab": the two orders differ.
    params = {"a": "z", "ab": "1"}
    by_pairs = hmac_sha1("k", OCEAN_PATH + "ab1" + "az")
    by_keys = hmac_sha1("k", OCEAN_PATH + "az" + "ab1")
    assert by_pairs != by_keys
    assert ocean_sign(OCEAN_PATH, params, "k") == by_pairs


@ocean_signers
def test_ocean_two_forms_with_one_message_share_a_signature(ocean_sign: OceanSign) -> None:
    # A property of the official algorithm, not a bug of ours: the sorted pieces "aab"+"aaba"
    # and "aaba"+"aba" join into the same message, so these forms cannot be told apart. Sorting
    # by key instead would sign "a"+"ab"+"aa"+"ba" and "a"+"ba"+"aa"+"ba", which differ.
    first = ocean_sign(OCEAN_PATH, {"a": "ab", "aa": "ba"}, "k")
    assert first == ocean_sign(OCEAN_PATH, {"a": "ba", "aa": "ba"}, "k")
    assert first == hmac_sha1("k", OCEAN_PATH + "aabaaba")


def test_ocean_ignores_a_leading_slash() -> None:
    assert ocean_signature("/" + OCEAN_PATH, {"b": "2", "a": "1"}, "test123") == OCEAN_VECTOR


@pytest.mark.parametrize(
    "zone", ["UTC", "America/Los_Angeles", "Asia/Kolkata", "Pacific/Kiritimati"]
)
def test_seed_timestamp_is_gmt8_whatever_the_local_zone(
    zone: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TZ", zone)
    time.tzset()
    try:
        assert seed_timestamp(datetime(2024, 12, 31, 20, 30, 5, tzinfo=UTC)) == (
            "2025-01-01 04:30:05"
        )
        ist = timezone(timedelta(hours=5, minutes=30))
        assert seed_timestamp(datetime(2024, 1, 1, 0, 0, 0, tzinfo=ist)) == "2024-01-01 02:30:00"
        before = datetime.now(UTC).replace(microsecond=0)
        stamp = seed_timestamp()
        after = datetime.now(UTC)
        gmt8 = timezone(timedelta(hours=8))
        sent = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S").replace(tzinfo=gmt8)
        assert before <= sent <= after
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_seed_signs_price_zero_that_it_sends() -> None:
    filters = SearchFilters(price_min=Decimal("0"), min_order_min=0)
    business = seed_search_params(b"\xff\xd8jpeg", filters)
    assert business["price_start"] == "0"
    assert business["min_order_quantity"] == "0"
    sent = sign_seed(business, app_key="k", access_token="t", secret="s")
    unsigned = {k: v for k, v in sent.items() if k != "sign"}
    assert sent["sign"] == seed_signature(unsigned, "s")
    # The seed's bug: leaving falsy values out of the signature yields another one.
    falsy_skipped = {k: v for k, v in unsigned.items() if v not in ("0", "")}
    assert sent["sign"] != seed_signature(falsy_skipped, "s")


# --- complete requests, signed by the official SDKs' own code -------------------------------
#
# The expected signatures below were not computed by this project's code: a scratch script
# outside the repository ran the official SDKs' signing functions on exactly these forms.
# - ocean: the Alibaba Open Platform (1688) Python SDK, "@author: Alibaba Open Platform",
#   2016-12-26, file aop/api/base.py, BaseApi.sign(urlPath, params, secret), in the copy vendored
#   by github.com/ruandejun/storagon at commit c63a154a63a883b8c6a646264c210ed6e76287b2 (sign()
#   is unchanged at 98b27a1afeb4c6a25f1969ffb1506eadd563eb6b).
# - seed: the Taobao TOP Python SDK, SYSTEM_GENERATE_VERSION "taobao-sdk-python-20180409", file
#   top/api/base.py, sign(secret, parameters), in the copy vendored (ported to Python 3 by its
#   owner) by github.com/quanweiwang/taobao-sdk-PYTHON-auto_1486971200958-20180409 at commit
#   b75e53bed2524c0dff6bb7e35b550d9f8ef6400c.
# Alibaba ships both SDKs as downloads, not on GitHub: these are third-party copies. The same
# script reproduced FACTS.md's published vectors (OCEAN_VECTOR, SEED_VECTOR) with them.

SDK_APP_KEY = "8801234"
SDK_SECRET = "Kx7pQ2vN9tLm"
SDK_TOKEN = "a1b2c3d4-e5f6-7890-abcd-ef0123456789"
SDK_NOW = datetime(2025, 3, 14, 9, 26, 53, tzinfo=UTC)
"""The frozen clock: ``_aop_timestamp`` 1741944413000, seed ``timestamp`` 17:26:53 GMT+8."""
# SOI, a JFIF APP0 header, three bytes that put "+" into the base64, EOI: '/', '+' and '=' all
# occur, so signing the form-encoded value instead of the raw one would show.
SDK_JPEG = bytes.fromhex("ffd8ffe000104a46494600010100000100010000fbefbeffd9")
SDK_IMAGE = "/9j/4AAQSkZJRgABAQAAAQABAAD7777/2Q=="
SDK_IMAGE_ID = "1d6a3f0c9b8e47a2"
SDK_UPLOAD_PATH = "param2/1/com.alibaba.fenxiao.crossborder/product.image.upload/8801234"
SDK_QUERY_PATH = "param2/1/com.alibaba.fenxiao.crossborder/product.search.imageQuery/8801234"
SDK_UPLOAD = {
    "uploadImageParam": '{"imageBase64":"' + SDK_IMAGE + '"}',
    "access_token": SDK_TOKEN,
    "_aop_timestamp": "1741944413000",
    "_aop_signature": "01EAF72A18415926716A3E5CDE54644252BE9EDD",
}
SDK_QUERY = {
    "offerQueryParam": (
        '{"imageId":"1d6a3f0c9b8e47a2","beginPage":1,"pageSize":20,"country":"en",'
        '"priceStart":"0","priceEnd":"12.50"}'
    ),
    "access_token": SDK_TOKEN,
    "_aop_timestamp": "1741944413000",
    "_aop_signature": "D906297BBF74C2D4DF9EAF08A9F3CD294D6A385D",
}
SDK_SEED = {
    "app_key": SDK_APP_KEY,
    "method": "alibaba.image.search.item",
    "format": "json",
    "v": "2.0",
    "timestamp": "2025-03-14 17:26:53",
    "access_token": SDK_TOKEN,
    "image": SDK_IMAGE,
    "page_size": "20",
    "price_start": "0",
    "sign": "5D998FB17BD79CABB7A53641D2D7C321",
}
# Keys that are prefixes of each other, Chinese text, "0" and "": the same SDK code gave these.
SDK_EDGE_PARAMS = {"a": "z", "ab": "1", "keyword": "连衣裙", "price_start": "0", "empty": ""}
SDK_EDGE_OCEAN = "52474696FEC469E275A2AA1F7117082E24C69175"  # OCEAN_PATH, secret "test123"
SDK_EDGE_SEED = "1161F998E77705F53D769F54BDDD952A"  # secret "test"


def engine_form(name: str) -> dict[str, str]:
    """The form the engine's request builders send for the SDK case ``name``."""
    if name == "upload":
        business = ocean_upload_params(SDK_JPEG)
        return sign_ocean(
            SDK_UPLOAD_PATH, business, access_token=SDK_TOKEN, secret=SDK_SECRET, now=SDK_NOW
        )
    if name == "query":
        filters = SearchFilters(price_min=Decimal("0"), price_max=Decimal("12.50"))
        business = ocean_query_params(SDK_IMAGE_ID, filters)
        return sign_ocean(
            SDK_QUERY_PATH, business, access_token=SDK_TOKEN, secret=SDK_SECRET, now=SDK_NOW
        )
    business = seed_search_params(SDK_JPEG, SearchFilters(price_min=Decimal("0")))
    return sign_seed(
        business, app_key=SDK_APP_KEY, access_token=SDK_TOKEN, secret=SDK_SECRET, now=SDK_NOW
    )


SDK_FORMS = {"upload": SDK_UPLOAD, "query": SDK_QUERY, "seed": SDK_SEED}
SDK_PATHS = {"upload": SDK_UPLOAD_PATH, "query": SDK_QUERY_PATH}


def sandbox_accepts(name: str, form: Mapping[str, str], path: str | None = None) -> bool:
    """The sandbox's verdict on ``form`` sent as the SDK case ``name`` (to ``path``, for ocean)."""
    if name == "seed":
        return verify.seed_accepts(form, SDK_SECRET)
    return verify.ocean_accepts(path or SDK_PATHS[name], form, SDK_SECRET)


def one_char_off(text: str) -> str:
    """``text`` with its last character changed (a character added to an empty text)."""
    return text[:-1] + chr(ord(text[-1]) ^ 1) if text else "x"


def test_sdk_paths_and_image_are_the_engines() -> None:
    assert ocean_path(OCEAN_UPLOAD, SDK_APP_KEY) == SDK_UPLOAD_PATH
    assert ocean_path(OCEAN_QUERY, SDK_APP_KEY) == SDK_QUERY_PATH
    assert base64.b64encode(SDK_JPEG).decode() == SDK_IMAGE


@pytest.mark.parametrize("name", sorted(SDK_FORMS))
def test_engine_sends_exactly_the_form_the_official_sdk_signed(name: str) -> None:
    assert engine_form(name) == SDK_FORMS[name]


@pytest.mark.parametrize("name", sorted(SDK_FORMS))
def test_sandbox_accepts_the_official_sdk_signature(name: str) -> None:
    assert sandbox_accepts(name, SDK_FORMS[name])


@pytest.mark.parametrize(
    ("name", "key"), [(name, key) for name, form in SDK_FORMS.items() for key in form]
)
def test_sandbox_rejects_one_character_off_in_any_value_or_key(name: str, key: str) -> None:
    form = SDK_FORMS[name]
    changed_value = {**form, key: one_char_off(form[key])}
    assert not sandbox_accepts(name, changed_value)
    renamed_key = {(one_char_off(k) if k == key else k): v for k, v in form.items()}
    assert not sandbox_accepts(name, renamed_key)


@pytest.mark.parametrize("name", sorted(SDK_PATHS))
def test_sandbox_rejects_the_ocean_form_sent_to_another_path_or_signed_otherwise(
    name: str,
) -> None:
    form = SDK_FORMS[name]
    assert not sandbox_accepts(name, form, one_char_off(SDK_PATHS[name]))
    assert not sandbox_accepts(name, {**form, "extra": ""})
    lower = {**form, "_aop_signature": form["_aop_signature"].lower()}
    assert not sandbox_accepts(name, lower)
    assert not sandbox_accepts(name, {k: v for k, v in form.items() if k != "_aop_signature"})


def test_sandbox_rejects_the_seed_form_with_an_extra_or_missing_parameter() -> None:
    assert not sandbox_accepts("seed", {**SDK_SEED, "freight_type": ""})
    assert not sandbox_accepts("seed", {k: v for k, v in SDK_SEED.items() if k != "price_start"})
    assert not sandbox_accepts("seed", {**SDK_SEED, "sign": SDK_SEED["sign"].lower()})


@ocean_signers
@seed_signers
def test_edge_parameters_sign_as_the_official_sdks_do(
    ocean_sign: OceanSign, seed_sign: SeedSign
) -> None:
    assert ocean_sign(OCEAN_PATH, SDK_EDGE_PARAMS, "test123") == SDK_EDGE_OCEAN
    assert seed_sign(SDK_EDGE_PARAMS, "test") == SDK_EDGE_SEED


# --- properties -----------------------------------------------------------------------------

# The signature parameters themselves are never signed: keep them out of generated params.
keys = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8).filter(
    lambda k: k not in ("sign", "_aop_signature")
)
values = st.text(max_size=12)
param_maps = st.dictionaries(keys, values, min_size=1, max_size=6)
paths = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789./", min_size=1, max_size=40).map(
    lambda p: "param2/1/" + p.strip("/")
)
secrets_ = st.text(min_size=1, max_size=16)


@given(paths, param_maps, secrets_)
def test_signatures_are_deterministic_and_order_free(
    path: str, params: dict[str, str], secret: str
) -> None:
    reversed_order = dict(reversed(list(params.items())))
    assert ocean_signature(path, params, secret) == ocean_signature(path, reversed_order, secret)
    assert seed_signature(params, secret) == seed_signature(reversed_order, secret)
    assert ocean_signature(path, dict(params), secret) == ocean_signature(path, params, secret)


@given(paths, param_maps, secrets_, st.data())
def test_signatures_change_with_any_key_value_or_path(
    path: str, params: dict[str, str], secret: str, data: st.DataObject
) -> None:
    key = data.draw(st.sampled_from(sorted(params)))
    suffix = data.draw(st.text(min_size=1, max_size=3))
    ocean = ocean_signature(path, params, secret)
    seed = seed_signature(params, secret)

    longer_value = {**params, key: params[key] + suffix}
    assert ocean_signature(path, longer_value, secret) != ocean
    assert seed_signature(longer_value, secret) != seed

    other_value = data.draw(values.filter(lambda v: v != params[key]))
    assert seed_signature({**params, key: other_value}, secret) != seed

    renamed_key = key + data.draw(st.sampled_from("xyz_"))
    renamed = {k: v for k, v in params.items() if k != key}
    if renamed_key not in renamed:
        renamed[renamed_key] = params[key]
        assert ocean_signature(path, renamed, secret) != ocean
        assert seed_signature(renamed, secret) != seed

    assert ocean_signature(path + "x", params, secret) != ocean


# --- img1688 sign ---------------------------------------------------------------------------


def run_sign(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = main(["sign", *argv])
    except SystemExit as exit_:  # argparse's own usage errors
        code = int(exit_.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_prints_ocean_vector(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_sign(
        ["ocean", "--secret", "test123", "--path", OCEAN_PATH, "b=2", "a=1"], capsys
    )
    assert (code, out) == (0, OCEAN_VECTOR + "\n")


def test_cli_prints_seed_vector(capsys: pytest.CaptureFixture[str]) -> None:
    pairs = [f"{k}={v}" for k, v in SEED_PARAMS.items()]
    code, out, _ = run_sign(["seed", "--secret", "test", *pairs], capsys)
    assert (code, out) == (0, SEED_VECTOR + "\n")


def test_cli_splits_at_the_first_equals_sign(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_sign(["seed", "--secret", "s", "q=a=b==", "e="], capsys)
    assert code == 0
    assert out.strip() == seed_signature({"q": "a=b==", "e": ""}, "s")


@pytest.mark.parametrize(
    "given_path",
    [
        "/" + OCEAN_PATH,
        "openapi/" + OCEAN_PATH,
        "/openapi/" + OCEAN_PATH,
        "https://gw.open.1688.com/openapi/" + OCEAN_PATH,
    ],
)
def test_cli_normalises_the_ocean_path(given_path: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_sign(
        ["ocean", "--secret", "test123", "--path", given_path, "b=2", "a=1"], capsys
    )
    assert (code, out) == (0, OCEAN_VECTOR + "\n")
    assert OCEAN_PATH in err


def test_cli_takes_the_secret_from_the_environment(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMG1688_APP_SECRET", "test123")
    code, out, _ = run_sign(["ocean", "--path", OCEAN_PATH, "b=2", "a=1"], capsys)
    assert (code, out) == (0, OCEAN_VECTOR + "\n")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["seed", "--secret", "s", "a=1", "novalue"], "'novalue' is not of the form key=value"),
        (["seed", "--secret", "s", "=1"], "not of the form key=value"),
        (["seed", "--secret", "s", "a=1", "a=2"], "given twice"),
        (["ocean", "--secret", "s", "a=1"], "arguments are required: --path"),
        (["seed", "--secret", "s", "--path", OCEAN_PATH, "a=1"], "unrecognized arguments"),
    ],
)
def test_cli_rejects_malformed_input(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_sign(argv, capsys)
    assert code == 2
    assert out == ""
    assert message in err


def test_cli_without_any_secret_exits_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("IMG1688_APP_SECRET", raising=False)
    code, _, err = run_sign(["seed", "a=1"], capsys)
    assert code == 2
    assert "IMG1688_APP_SECRET" in err


def test_cli_base_string_is_what_was_hashed(capsys: pytest.CaptureFixture[str]) -> None:
    secret = "test123"
    code, out, _ = run_sign(
        ["ocean", "--secret", secret, "--path", OCEAN_PATH, "--show-base-string", "b=2", "a=1"],
        capsys,
    )
    signature, shown = out.splitlines()
    assert code == 0 and secret not in out
    base = shown.split(": ", 1)[1]
    assert base == OCEAN_PATH + "a1b2"
    assert hmac_sha1(secret, base) == signature == OCEAN_VECTOR

    pairs = [f"{k}={v}" for k, v in SEED_PARAMS.items()]
    code, out, _ = run_sign(["seed", "--secret", "test", "--show-base-string", *pairs], capsys)
    signature, shown = out.splitlines()
    base = shown.split(": ", 1)[1]
    assert base.startswith(SECRET_MARK) and base.endswith(SECRET_MARK)
    hashed = base.replace(SECRET_MARK, "test")
    assert hashlib.md5(hashed.encode()).hexdigest().upper() == signature == SEED_VECTOR


def test_cli_never_prints_the_secret_from_the_environment(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMG1688_APP_SECRET", "env-only-secret-value")
    code, out, err = run_sign(["seed", "--show-base-string", "a=1"], capsys)
    assert code == 0
    assert "env-only-secret-value" not in out + err
