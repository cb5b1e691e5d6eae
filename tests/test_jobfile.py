"""Job files: the whole file is validated before any call, and errors name the key."""

from __future__ import annotations

from dataclasses import replace
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.catalogue_table import CatalogueEntry
from engine.cli import main
from engine.errors import ConfigError
from engine.jobfile import SANDBOX, ApiRates, Downloads, Evidence, load_job, parse_job
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
    "inputs": ["paths", "recursive", "extensions", "exclude", "follow_symlinks", "catalogue"],
    "output": ["dir", "zstd_level"],
    "gateway": [
        "protocol", "endpoint", "rate", "page_size", "timeout", "attempts", "backoff_base",
        "backoff_max", "send_title",
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
    "evidence": [
        "enabled", "rate", "concurrency", "timeout", "max_bytes", "rendition", "cache_dir",
    ],
    "downloads": ["rate", "concurrency", "timeout", "max_bytes", "attempts"],
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


# --- the catalogue table, titles, evidence and downloads ------------------------------------


def write_table(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_a_catalogue_is_read_at_load_relative_to_the_job_and_may_replace_paths(
    tmp_path: Path,
) -> None:
    write_table(tmp_path / "tables" / "c.csv", "sku,image,title\n000123,img/a.jpg,Red dress\n")
    data = minimal(inputs={"catalogue": "tables/c.csv"})
    del data["inputs"]["paths"]

    job = parse_job(data, base=tmp_path)

    assert job.inputs.catalogue == tmp_path / "tables" / "c.csv"
    assert job.inputs.paths == ()
    assert job.catalogue == (
        CatalogueEntry("000123", str(tmp_path / "tables" / "img" / "a.jpg"), "Red dress", 2),
    )
    both = parse_job(minimal(inputs={"catalogue": "tables/c.csv"}), base=tmp_path)
    assert both.inputs.paths == (tmp_path / "photos",) and len(both.catalogue) == 1
    assert parse_job(minimal(), base=tmp_path).catalogue == ()
    assert "000123" not in repr(job)  # a 100k-row table stays out of reprs and logs


@pytest.mark.parametrize("inputs", [{}, {"paths": []}, {"recursive": False}])
def test_a_job_needs_paths_or_a_catalogue(tmp_path: Path, inputs: dict) -> None:
    data = minimal()
    data["inputs"] = inputs
    with pytest.raises(ConfigError) as caught:
        parse_job(data, base=tmp_path)
    message = str(caught.value)
    assert message.startswith("inputs.paths:") and "inputs.catalogue" in message


@pytest.mark.parametrize(
    ("table", "says"),
    [
        ("none.csv", "none.csv: no such file"),
        ("c.json", "must be a .csv, .tsv or .parquet file"),
        ("c.csv", "c.csv, line 3, column image: empty"),
    ],
)
def test_a_bad_catalogue_is_a_config_error_naming_the_key_the_row_and_the_column(
    tmp_path: Path, table: str, says: str
) -> None:
    write_table(tmp_path / "c.csv", "sku,image\nA1,a.jpg\nA2,\n")
    write_table(tmp_path / "c.json", "[]")
    with pytest.raises(ConfigError) as caught:
        parse_job(minimal(inputs={"catalogue": table}), base=tmp_path)
    assert str(caught.value).startswith(f"inputs.catalogue: {tmp_path / table}")
    assert says in str(caught.value)


def test_the_table_is_read_only_once_every_key_is_valid(tmp_path: Path) -> None:
    write_table(tmp_path / "c.csv", "sku,image\nA1,\n")
    data = minimal(inputs={"catalogue": "c.csv"}, downloads={"attempts": 0})
    with pytest.raises(ConfigError, match=r"^downloads\.attempts"):
        parse_job(data, base=tmp_path)


def test_run_refuses_a_bad_table_with_exit_2_before_writing_anything(
    tmp_path: Path, write_job, capsys
) -> None:
    table = write_table(tmp_path / "c.csv", "sku,image\nA1,a.jpg\nA1,b.jpg\n")
    job = write_job(
        inputs={"catalogue": str(table)},
        output={"dir": str(tmp_path / "out")},
        gateway={"endpoint": "sandbox"},
    )

    code = main(["run", str(job)])

    err = capsys.readouterr().err
    assert code == ExitCode.CONFIG == 2
    assert err.startswith(f"img1688: inputs.catalogue: {table}, line 3, column sku: 'A1'")
    assert "repeats line 2" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_send_title_sends_the_title_as_the_ocean_keyword_and_keys_the_answers(
    tmp_path: Path,
) -> None:
    off = parse_job(minimal(), base=tmp_path)
    on = parse_job(minimal(gateway={"send_title": True}), base=tmp_path)
    assert off.gateway.send_title is False and on.gateway.send_title is True

    assert off.search_filters_for("Red dress").keyword is None
    assert on.search_filters_for("Red dress") == replace(on.search_filters, keyword="Red dress")
    assert on.search_filters_for(None).keyword is None  # a photo found by paths has no title
    # Answers stored with titles are not reused without them, and a run does not resume
    # under the other setting; answers stored before the key existed keep their key.
    assert "send_title" not in off.request_key()
    assert on.request_key() == {**off.request_key(), "send_title": True}
    assert on.fingerprint() != off.fingerprint()

    # seed has no field for a title: nothing is sent, so nothing changes.
    seed_off = parse_job(minimal(gateway={"protocol": "seed"}), base=tmp_path)
    seed_on = parse_job(minimal(gateway={"protocol": "seed", "send_title": True}), base=tmp_path)
    assert seed_on.search_filters_for("Red dress").keyword is None
    assert seed_on.request_key() == seed_off.request_key()


def test_evidence_and_downloads_defaults(tmp_path: Path) -> None:
    environ = {"XDG_CACHE_HOME": "/var/cache/me", "HOME": "/home/me"}
    job = parse_job(minimal(), base=tmp_path, environ=environ)
    assert job.evidence == Evidence(
        cache_dir=Path("/var/cache/me/img1688/images"),
        enabled=True,
        rate=Rate(20, 1.0),
        concurrency=4,
        timeout=20.0,
        max_bytes=10_000_000,
        rendition=300,
        failure_ttl_hours=24.0,
    )
    assert job.downloads == Downloads(
        rate=Rate(10, 1.0), concurrency=4, timeout=30.0, max_bytes=50_000_000, attempts=3
    )


@pytest.mark.parametrize(
    ("environ", "cache"),
    [
        ({"HOME": "/home/me"}, "/home/me/.cache/img1688/images"),
        ({"HOME": "/home/me", "XDG_CACHE_HOME": ""}, "/home/me/.cache/img1688/images"),
        ({"HOME": "/home/me", "XDG_CACHE_HOME": "rel/cache"}, "/home/me/.cache/img1688/images"),
    ],
)
def test_the_default_cache_follows_xdg_else_the_home(
    tmp_path: Path, environ: dict, cache: str
) -> None:
    job = parse_job(minimal(), base=tmp_path, environ=environ)
    assert job.evidence.cache_dir == Path(cache)


def test_evidence_and_downloads_keys_are_read(tmp_path: Path) -> None:
    job = parse_job(
        minimal(
            evidence={
                "enabled": False,
                "rate": "5/2s",
                "concurrency": 2,
                "timeout": 3,
                "max_bytes": 2000,
                "rendition": 0,
                "cache_dir": "cache/images",
                "failure_ttl_hours": 0,
            },
            downloads={
                "rate": "3/1m",
                "concurrency": 8,
                "timeout": 7.5,
                "max_bytes": 1000,
                "attempts": 1,
            },
        ),
        base=tmp_path,
        environ={},  # no home: not needed when the cache is given
    )
    assert job.evidence == Evidence(
        tmp_path / "cache" / "images", False, Rate(5, 2.0), 2, 3.0, 2000, 0, 0.0
    )
    assert job.downloads == Downloads(Rate(3, 60.0), 8, 7.5, 1000, 1)


def test_the_fingerprint_follows_what_changes_the_evidence_columns_only(tmp_path: Path) -> None:
    def fingerprint(**evidence: object) -> dict[str, object]:
        return parse_job(minimal(evidence=evidence), base=tmp_path).fingerprint()

    base = fingerprint()
    for same in (
        {"rate": "1/1s"},
        {"concurrency": 9},
        {"timeout": 1},
        {"max_bytes": 5},
        {"cache_dir": "elsewhere"},
        {"rendition": 300},
        {"failure_ttl_hours": 1},
    ):
        assert fingerprint(**same) == base, same
    assert fingerprint(rendition=0) != base
    assert fingerprint(enabled=False) != base
    # Without evidence, the rendition asked for changes nothing.
    assert fingerprint(enabled=False, rendition=64) == fingerprint(enabled=False)
    downloads = parse_job(minimal(downloads={"attempts": 9, "rate": "1/1s"}), base=tmp_path)
    assert downloads.fingerprint() == base
    assert downloads.request_key() == parse_job(minimal(), base=tmp_path).request_key()


@pytest.mark.parametrize(
    ("sections", "named", "says"),
    [
        ({"inputs": {"catalogue": 3}}, "inputs.catalogue", "a string"),
        ({"inputs": {"catalogue": " "}}, "inputs.catalogue", "a path"),
        ({"gateway": {"send_title": "yes"}}, "gateway.send_title", "true or false"),
        ({"evidence": {"enabled": 1}}, "evidence.enabled", "true or false"),
        ({"evidence": {"rate": "fast"}}, "evidence.rate", "N/SECONDSs"),
        ({"evidence": {"rate": "0/1s"}}, "evidence.rate", "at least 1 call"),
        ({"evidence": {"concurrency": 0}}, "evidence.concurrency", "between 1 and 256"),
        ({"evidence": {"timeout": 0}}, "evidence.timeout", "positive"),
        ({"evidence": {"timeout": float("inf")}}, "evidence.timeout", "finite"),
        ({"evidence": {"max_bytes": 0}}, "evidence.max_bytes", "between"),
        ({"evidence": {"rendition": 10}}, "evidence.rendition", "0 (the original) or between"),
        ({"evidence": {"rendition": 10_001}}, "evidence.rendition", "0 (the original) or"),
        ({"evidence": {"rendition": 300.0}}, "evidence.rendition", "an integer"),
        ({"evidence": {"cache_dir": ""}}, "evidence.cache_dir", "a path"),
        ({"evidence": {"failure_ttl_hours": -1}}, "evidence.failure_ttl_hours", "between 0 and"),
        ({"evidence": {"colour": "red"}}, "evidence.colour", "unknown key"),
        ({"downloads": {"rate": "10/0s"}}, "downloads.rate", "positive period"),
        ({"downloads": {"concurrency": 257}}, "downloads.concurrency", "between 1 and 256"),
        ({"downloads": {"timeout": -1}}, "downloads.timeout", "positive"),
        ({"downloads": {"max_bytes": True}}, "downloads.max_bytes", "an integer"),
        ({"downloads": {"attempts": 101}}, "downloads.attempts", "between 1 and 100"),
        ({"downloads": {"retries": 3}}, "downloads.retries", "unknown key"),
    ],
)
def test_bad_catalogue_evidence_and_download_keys_name_the_key(
    tmp_path: Path, sections: dict, named: str, says: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_job(minimal(**sections), base=tmp_path)
    assert str(caught.value).startswith(f"{named}:") and says in str(caught.value)


@pytest.mark.parametrize("table", ["evidence", "downloads"])
def test_evidence_and_downloads_must_be_tables(tmp_path: Path, table: str) -> None:
    with pytest.raises(ConfigError, match=f"^{table}: expected a table"):
        parse_job({**minimal(), table: "on"}, base=tmp_path)


def test_no_home_for_the_default_cache_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^evidence\.cache_dir: no home directory"):
        parse_job(minimal(), base=tmp_path, environ={"HOME": "relative"})
