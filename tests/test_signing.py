"""Signatures of both protocols: published vectors, ordering, timestamps, properties, CLI."""

from __future__ import annotations

import hashlib
import hmac
import time
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.cli import main
from engine.client import SearchFilters, seed_search_params, sign_seed
from engine.commands.sign import SECRET_MARK
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


def hmac_sha1(secret: str, message: str) -> str:
    return hmac.new(secret.encode(), message.encode(), hashlib.sha1).hexdigest().upper()


def test_ocean_published_vector() -> None:
    assert ocean_signature(OCEAN_PATH, {"b": "2", "a": "1"}, "test123") == OCEAN_VECTOR


def test_seed_published_vector() -> None:
    assert seed_signature(SEED_PARAMS, "test") == SEED_VECTOR


def test_signature_parameters_are_not_signed() -> None:
    signed = {"b": "2", "a": "1", "_aop_signature": "X"}
    assert ocean_signature(OCEAN_PATH, signed, "test123") == OCEAN_VECTOR
    assert seed_signature({**SEED_PARAMS, "sign": "X"}, "test") == SEED_VECTOR


def test_ocean_sorts_concatenated_pairs_not_keys() -> None:
    # "a"+"z" > "ab"+"1", though key "a" < key "ab": the two orders differ.
    params = {"a": "z", "ab": "1"}
    by_pairs = hmac_sha1("k", OCEAN_PATH + "ab1" + "az")
    by_keys = hmac_sha1("k", OCEAN_PATH + "az" + "ab1")
    assert by_pairs != by_keys
    assert ocean_signature(OCEAN_PATH, params, "k") == by_pairs


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
