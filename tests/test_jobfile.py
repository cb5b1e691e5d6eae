"""Job files: the whole file is validated before any call, and errors name the key."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.cli import main
from engine.errors import ConfigError
from engine.jobfile import SANDBOX, ApiRates, load_job, parse_job
from engine.ledger import QuotaSettings
from engine.outcome import ExitCode
from engine.protocol import OCEAN_QUERY, OCEAN_UPLOAD, SEED_API
from engine.ratelimit import Rate
from tests.paths import REPO


def minimal(**sections: dict) -> dict:
    data: dict = {
        "inputs": {"paths": ["photos"]},
        "output": {"dir": "out"},
        "gateway": {"endpoint": SANDBOX},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return data


def test_the_shipped_job_files_are_valid() -> None:
    sample = load_job(REPO / "jobs" / "sample.toml")
    nightly = load_job(REPO / "jobs" / "nightly.toml")
    assert sample.gateway.endpoint == SANDBOX
    assert sample.inputs.paths[0] == (REPO / "sample_images" / "queries").resolve()
    assert nightly.gateway.rate == Rate(10, 60.0)
    assert nightly.gateway.endpoint.startswith("https://")


def test_defaults_and_relative_paths(tmp_path: Path) -> None:
    job = parse_job(minimal(), base=tmp_path)
    assert job.inputs.paths == (tmp_path / "photos",)
    assert job.out == tmp_path / "out"
    assert job.gateway.protocol == "ocean"
    assert job.gateway.rate == Rate(10, 60.0)
    assert job.filters.freight == "all"


@pytest.mark.parametrize(
    ("data", "named"),
    [
        (minimal(gateway={"ratee": "10/60s"}), "gateway.ratee"),
        (minimal(colour={"x": 1}), "colour"),
        (minimal(gateway={"rate": "ten a minute"}), "gateway.rate"),
        (minimal(gateway={"protocol": "soap"}), "gateway.protocol"),
        (minimal(gateway={"page_size": 51}), "gateway.page_size"),
        (minimal(gateway={"endpoint": "ftp://x"}), "gateway.endpoint"),
        (minimal(gateway={"endpoint": "https://"}), "gateway.endpoint"),
        (minimal(gateway={"endpoint": ""}), "gateway.endpoint"),
        (minimal(gateway={"rate": "10/nans"}), "gateway.rate"),
        (minimal(gateway={"rate": "0/60s"}), "gateway.rate"),
        (minimal(gateway={"attempts": 0}), "gateway.attempts"),
        (minimal(gateway={"timeout": 0}), "gateway.timeout"),
        (minimal(gateway={"timeout": float("inf")}), "gateway.timeout"),
        (minimal(gateway={"backoff_base": float("nan")}), "gateway.backoff_base"),
        (minimal(gateway={"backoff_base": 5.0, "backoff_max": 1.0}), "gateway.backoff_base"),
        (minimal(gateway={"backoff_max": 10**400}), "gateway.backoff_max"),
        (minimal(filters={"price_min": -1}), "filters.price_min"),
        (minimal(filters={"price_min": "abc"}), "filters.price_min"),
        (minimal(filters={"price_min": "1e20"}), "filters.price_min"),
        (minimal(filters={"price_max": float("inf")}), "filters.price_max"),
        (minimal(filters={"price_min": 50, "price_max": 10}), "filters.price_min"),
        (minimal(filters={"freight": "cheap"}), "filters.freight"),
        (minimal(filters={"moq_min": True}), "filters.moq_min"),
        (minimal(filters={"moq_min": 0}), "filters.moq_min"),
        (minimal(filters={"moq_max": 10**10}), "filters.moq_max"),
        (minimal(filters={"moq_min": 100, "moq_max": 10}), "filters.moq_min"),
        (minimal(preprocess={"quality": 500}), "preprocess.quality"),
        (minimal(preprocess={"min_quality": 95, "quality": 90}), "preprocess.min_quality"),
        (minimal(preprocess={"min_quality": 5}), "preprocess.min_quality"),
        (minimal(preprocess={"max_side": 10}), "preprocess.max_side"),
        (minimal(preprocess={"max_bytes": 0}), "preprocess.max_bytes"),
        (minimal(preprocess={"max_pixels": 0}), "preprocess.max_pixels"),
        (minimal(preprocess={"max_input_bytes": 0}), "preprocess.max_input_bytes"),
        (minimal(preprocess={"timeout": -1}), "preprocess.timeout"),
        (minimal(engine={"searches": 0}), "engine.searches"),
        (minimal(engine={"preprocess_workers": 0}), "engine.preprocess_workers"),
        (minimal(engine={"queue_size": 0}), "engine.queue_size"),
        (minimal(engine={"part_images": 0}), "engine.part_images"),
        (minimal(engine={"flush_seconds": 0}), "engine.flush_seconds"),
        (minimal(engine={"reuse_ttl_days": -1}), "engine.reuse_ttl_days"),
        (minimal(engine={"reuse_ttl_days": 1e9}), "engine.reuse_ttl_days"),
        (minimal(engine={"max_consecutive_failures": 0}), "engine.max_consecutive_failures"),
        (minimal(output={"zstd_level": 23}), "output.zstd_level"),
        (minimal(inputs={"extensions": []}), "inputs.extensions"),
        (minimal(inputs={"extensions": ["jpg", " "]}), "inputs.extensions"),
        (minimal(job={"name": 3}), "job.name"),
        ({"inputs": {"paths": []}, "output": {"dir": "out"}}, "inputs.paths"),
        ({"inputs": {"paths": ["a"]}}, "output.dir"),
        (minimal(inputs={"paths": [3]}), "inputs.paths[0]"),
        (minimal(inputs={"paths": ["a", "~no-such-user-img1688/x"]}), "inputs.paths[1]"),
        (minimal(inputs={"paths": ["a\0b"]}), "inputs.paths[0]"),
        (minimal(output={"dir": ""}), "output.dir"),
    ],
)
def test_a_bad_key_or_value_is_an_error_that_names_it(
    data: dict, named: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_job(data, base=tmp_path)
    assert str(caught.value).startswith(named)
    if "must not exceed" in str(caught.value):  # a cross-field rule names both keys
        assert str(caught.value).count(named.split(".")[0] + ".") == 2


@pytest.mark.parametrize("gateway", [{}, {"protocol": "ocean", "rate": "10/60s"}])
def test_the_endpoint_is_required(gateway: dict, tmp_path: Path) -> None:
    data = minimal()
    data["gateway"] = gateway
    with pytest.raises(ConfigError) as caught:
        parse_job(data, base=tmp_path)
    message = str(caught.value)
    assert message.startswith("gateway.endpoint: missing")
    assert 'endpoint = "sandbox"' in message and "https://" in message


def test_unreadable_or_invalid_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_job(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[inputs\npaths = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_job(broken)


def test_flags_override_the_file(tmp_path: Path) -> None:
    job = parse_job(minimal(), base=tmp_path).with_overrides(
        out=tmp_path / "elsewhere", limit=5, max_calls=9, rate=Rate(3, 1.0)
    )
    assert (job.out, job.limit, job.max_calls, job.gateway.rate) == (
        tmp_path / "elsewhere",
        5,
        9,
        Rate(3, 1.0),
    )


def test_the_fingerprint_changes_with_result_changing_settings_only(tmp_path: Path) -> None:
    base = parse_job(minimal(), base=tmp_path)
    assert (
        base.fingerprint()
        == parse_job(minimal(engine={"searches": 9}), base=tmp_path).fingerprint()
    )
    assert base.fingerprint() == base.with_overrides(rate=Rate(1, 1.0)).fingerprint()
    for changed in (
        minimal(gateway={"protocol": "seed"}),
        minimal(filters={"price_max": 10}),
        minimal(filters={"moq_max": 10}),
        minimal(preprocess={"max_side": 640}),
    ):
        assert parse_job(changed, base=tmp_path).fingerprint() != base.fingerprint()


def test_prices_are_exact_decimals(tmp_path: Path) -> None:
    job = parse_job(minimal(filters={"price_min": 0.1, "price_max": "19.99"}), base=tmp_path)
    assert job.filters.price_min == Decimal("0.1")
    assert job.filters.price_max == Decimal("19.99")


SANDBOX_GATEWAY = {"endpoint": "sandbox"}
BAD_JOB_FILES = [
    ({"gateway": {"protocol": "ocean"}}, "gateway.endpoint"),
    ({"preprocess": {"quality": 60, "min_quality": 80}}, "preprocess.min_quality"),
    ({"filters": {"price_min": 50, "price_max": 10}}, "filters.price_min"),
    ({"filters": {"moq_min": 0}}, "filters.moq_min"),
    ({"filters": {"moq_min": 500, "moq_max": 10}}, "filters.moq_min"),
    ({"gateway": SANDBOX_GATEWAY | {"backoff_base": 9, "backoff_max": 1}}, "gateway.backoff_base"),
    ({"gateway": SANDBOX_GATEWAY | {"timeout": float("nan")}}, "gateway.timeout"),
    ({"engine": {"reuse_ttl_days": float("inf")}}, "engine.reuse_ttl_days"),
]


@pytest.mark.parametrize(("change", "named"), BAD_JOB_FILES)
@pytest.mark.parametrize("command", ["run", "reclean"])
def test_commands_that_load_a_bad_job_exit_2_naming_the_key(
    change: dict, named: str, command: str, tmp_path: Path, write_job, capsys
) -> None:
    sections: dict = {
        "inputs": {"paths": [str(tmp_path)]},
        "output": {"dir": str(tmp_path / "out")},
        "gateway": {"endpoint": "sandbox"},
    }
    for table, values in change.items():
        sections[table] = values
    job = write_job(**sections)
    argv = ["run", str(job)] if command == "run" else ["reclean", str(tmp_path / "out")]
    if command == "reclean":
        argv += ["--job", str(job)]

    code = main(argv)

    err = capsys.readouterr().err
    assert code == ExitCode.CONFIG == 2
    assert err.startswith(f"img1688: {named}:") and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # refused before anything was written


KEYS = {
    "job": ["name"],
    "inputs": ["paths", "recursive", "extensions", "exclude", "follow_symlinks"],
    "output": ["dir", "zstd_level"],
    "gateway": [
        "protocol", "endpoint", "rate", "page_size", "timeout", "attempts", "backoff_base",
        "backoff_max",
    ],
    "filters": ["price_min", "price_max", "moq_min", "moq_max", "freight"],
    "preprocess": [
        "max_side", "max_bytes", "quality", "min_quality", "trim_border", "autocontrast",
        "max_pixels", "max_input_bytes", "timeout",
    ],
    "engine": [
        "searches", "preprocess_workers", "queue_size", "part_images", "flush_seconds",
        "reuse_ttl_days", "max_consecutive_failures",
    ],
}  # fmt: skip
TOML_SCALARS = (
    st.integers(min_value=0, max_value=120)
    | st.floats(min_value=0, max_value=120)
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.booleans()
    | st.sampled_from(["sandbox", "https://gw.example", "10/60s", "10/nans", "~x/y", "free"])
    | st.text(max_size=8)
)
TOML_VALUES = TOML_SCALARS | st.lists(TOML_SCALARS, max_size=3)


@st.composite
def job_mappings(draw: st.DrawFn) -> dict:
    data = minimal()
    for table, keys in KEYS.items():
        for key in draw(st.lists(st.sampled_from(keys), unique=True)):
            data.setdefault(table, {})[key] = draw(TOML_VALUES)
    return data


@settings(max_examples=500, deadline=None)
@given(data=job_mappings())
def test_any_job_mapping_gives_a_job_or_a_config_error_never_another_exception(
    data: dict,
) -> None:
    try:
        job = parse_job(data, base=Path("/srv/jobs"))
    except ConfigError as exc:
        assert str(exc).startswith(tuple(f"{table}." for table in KEYS))  # names the key
    else:
        assert job.preprocess.min_quality <= job.preprocess.quality
        assert job.gateway.retry.base_delay <= job.gateway.retry.max_delay


@given(
    quality=st.integers(20, 100),
    min_quality=st.integers(10, 100),
    backoff=st.lists(st.floats(0.001, 1000), min_size=2, max_size=2),
    prices=st.lists(st.decimals(0, 10**6, places=2), min_size=2, max_size=2),
    moqs=st.lists(st.integers(1, 10**9), min_size=2, max_size=2),
)
def test_cross_field_rules_are_config_errors_that_name_both_keys(
    quality: int, min_quality: int, backoff: list, prices: list, moqs: list
) -> None:
    data = minimal(
        preprocess={"quality": quality, "min_quality": min_quality},
        gateway={"backoff_base": backoff[0], "backoff_max": backoff[1]},
        filters={"price_min": str(prices[0]), "price_max": str(prices[1]), "moq_min": moqs[0]}
        | {"moq_max": moqs[1]},
    )
    broken = [
        ("gateway.backoff_base", "gateway.backoff_max", backoff[0] > backoff[1]),
        ("filters.price_min", "filters.price_max", prices[0] > prices[1]),
        ("filters.moq_min", "filters.moq_max", moqs[0] > moqs[1]),
        ("preprocess.min_quality", "preprocess.quality", min_quality > quality),
    ]
    try:
        job = parse_job(data, base=Path("/srv/jobs"))
    except ConfigError as exc:
        first, other = next((a, b) for a, b, bad in broken if bad)
        assert str(exc).startswith(f"{first}: must not exceed {other}")
    else:
        assert not any(bad for _, _, bad in broken)
        assert job.preprocess.min_quality <= job.preprocess.quality


# --- per-API rates ---------------------------------------------------------------------------


def test_rates_per_api_and_a_rate_flag_that_replaces_them(tmp_path: Path) -> None:
    job = parse_job(
        minimal(gateway={"rates": {"upload": "10/60s", "query": "5/1s"}}), base=tmp_path
    )
    assert job.gateway.rates == ApiRates(upload=Rate(10, 60.0), query=Rate(5, 1.0))
    assert job.gateway.windows == {OCEAN_UPLOAD: Rate(10, 60.0), OCEAN_QUERY: Rate(5, 1.0)}
    assert job.gateway.rate_text == "upload 10/60s, query 5/1s"
    seed = parse_job(
        minimal(gateway={"protocol": "seed", "rates": {"search": "3/1s"}}), base=tmp_path
    )
    assert seed.gateway.windows == {SEED_API: Rate(3, 1.0)}
    flagged = job.with_overrides(rate=Rate(20, 60.0))
    assert flagged.gateway.rates is None and flagged.gateway.windows == Rate(20, 60.0)
    assert parse_job(minimal(), base=tmp_path).gateway.windows == Rate(10, 60.0)


@pytest.mark.parametrize(
    ("gateway", "named", "says"),
    [
        (
            {"rate": "10/60s", "rates": {"upload": "1/1s", "query": "1/1s"}},
            "gateway.rates",
            "not both",
        ),
        ({"rates": {"upload": "10/60s"}}, "gateway.rates.query", "missing"),
        (
            {"rates": {"upload": "1/1s", "query": "1/1s", "search": "1/1s"}},
            "gateway.rates.search",
            "makes no search",
        ),
        (
            {"protocol": "seed", "rates": {"search": "1/1s", "upload": "1/1s"}},
            "gateway.rates.upload",
            "makes no upload",
        ),
        ({"rates": {"upload": "fast", "query": "1/1s"}}, "gateway.rates.upload", "N/SECONDSs"),
        (
            {"rates": {"upload": "1/1s", "query": "1/1s", "download": "1/1s"}},
            "gateway.rates.download",
            "unknown",
        ),
        ({"rates": "10/60s"}, "gateway.rates", "table"),
    ],
)
def test_bad_rates_name_the_key(tmp_path: Path, gateway: dict, named: str, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_job(minimal(gateway=gateway), base=tmp_path)
    assert str(caught.value).startswith(named) and says in str(caught.value)


# --- quota keys ------------------------------------------------------------------------------


def test_quota_keys_from_a_toml_date_or_an_iso_string(tmp_path: Path) -> None:
    path = tmp_path / "job.toml"
    path.write_text(
        '[inputs]\npaths = ["photos"]\n[output]\ndir = "out"\n'
        '[gateway]\nendpoint = "sandbox"\ndaily_calls = 100000\n'
        "package_calls = 500000\npackage_start = 2026-11-01\nquota_low_share = 0.2\n",
        encoding="utf-8",
    )
    quota = load_job(path).gateway.quota
    assert quota == QuotaSettings(100_000, 500_000, date(2026, 11, 1), 0.2)
    text = minimal(gateway={"package_calls": 5000, "package_start": "2026-11-01"})
    assert parse_job(text, base=tmp_path).gateway.quota.package_start == date(2026, 11, 1)
    assert parse_job(minimal(), base=tmp_path).gateway.quota == QuotaSettings()


@pytest.mark.parametrize(
    ("gateway", "named", "says"),
    [
        ({"package_calls": 5000}, "gateway.package_start", "missing"),
        ({"package_start": "2026-11-01"}, "gateway.package_calls", "missing"),
        ({"package_calls": 5000, "package_start": "1 Nov"}, "gateway.package_start", "a date"),
        ({"package_calls": 5000, "package_start": 20261101}, "gateway.package_start", "a date"),
        (
            {"package_calls": 5000, "package_start": datetime(2026, 11, 1, 8)},
            "gateway.package_start",
            "a date",
        ),
        ({"package_calls": 0, "package_start": "2026-11-01"}, "gateway.package_calls", "between"),
        ({"daily_calls": 0}, "gateway.daily_calls", "between"),
        ({"daily_calls": "many"}, "gateway.daily_calls", "an integer"),
        ({"quota_low_share": 0.1}, "gateway.quota_low_share", "package"),
        (
            {"package_calls": 5, "package_start": "2026-11-01", "quota_low_share": 1.5},
            "gateway.quota_low_share",
            "between 0 and 1",
        ),
    ],
)
def test_bad_quota_keys_name_the_key(tmp_path: Path, gateway: dict, named: str, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_job(minimal(gateway=gateway), base=tmp_path)
    assert str(caught.value).startswith(named) and says in str(caught.value)
