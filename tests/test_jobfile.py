"""Job files: the whole file is validated before any call, and errors name the key."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from engine.errors import ConfigError
from engine.jobfile import SANDBOX, load_job, parse_job
from engine.ratelimit import Rate
from tests.paths import REPO


def minimal(**sections: dict) -> dict:
    data: dict = {"inputs": {"paths": ["photos"]}, "output": {"dir": "out"}}
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
        (minimal(gateway={"backoff_base": 5.0, "backoff_max": 1.0}), "gateway"),
        (minimal(filters={"price_min": -1}), "filters.price_min"),
        (minimal(filters={"price_min": "abc"}), "filters.price_min"),
        (minimal(filters={"price_min": 50, "price_max": 10}), "filters.price_min"),
        (minimal(filters={"freight": "cheap"}), "filters.freight"),
        (minimal(filters={"moq_min": True}), "filters.moq_min"),
        (minimal(preprocess={"quality": 500}), "preprocess.quality"),
        (minimal(engine={"searches": 0}), "engine.searches"),
        ({"inputs": {"paths": []}, "output": {"dir": "out"}}, "inputs.paths"),
        ({"inputs": {"paths": ["a"]}}, "output.dir"),
        (minimal(inputs={"paths": [3]}), "inputs.paths[0]"),
    ],
)
def test_a_bad_key_or_value_is_an_error_that_names_it(
    data: dict, named: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_job(data, base=tmp_path)
    assert str(caught.value).startswith(named)


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
