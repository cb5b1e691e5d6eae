"""``img1688 status`` shows the quota ledger: calls of the gateway day, what the daily cap and
the package leave, and when the package runs out, from the settings the last run kept."""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta
from pathlib import Path

import pytest

from engine.cli import build_parser
from engine.commands import status
from engine.ledger import QuotaSettings
from engine.ratelimit import CallEntry
from engine.shard import Shard
from engine.signing import GMT8
from engine.state import StateStore

TODAY = date(2026, 12, 2)


def gmt8(day: date, hour: int, minute: int = 0) -> float:
    """Epoch seconds of ``hour:minute`` GMT+8 on ``day``."""
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=GMT8).timestamp()


def fill(state: StateStore, settings: QuotaSettings) -> None:
    """A run that spent 300 calls a day for four days and 40 calls today, before 12:00."""
    state.start_run("r1", "2026-11-28", "{}")
    entries = [
        CallEntry(gmt8(TODAY - timedelta(days=d), 10) + i, "ap***21")
        for d in range(1, 5)
        for i in range(300)
    ]
    entries += [CallEntry(gmt8(TODAY, 0, 1) + i, "ap***21") for i in range(40)]
    state.record_calls("r1", len(entries), entries)
    state.save_quota_settings(settings)


def show(out: Path, now: float, *flags: str) -> int:
    args = build_parser().parse_args(["status", str(out), *flags])
    return status.handle(args, clock=lambda: now)


SETTINGS = QuotaSettings(daily_calls=1000, package_calls=2000, package_start=TODAY - timedelta(9))


def test_status_shows_the_ledger_as_text_and_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    with StateStore(out) as state:
        fill(state, SETTINGS)
    noon = gmt8(TODAY, 12)

    assert show(out, noon, "--json") == 0
    quota = json.loads(capsys.readouterr().out)["quota"]
    # 1,240 of 2,000 spent: 760 left, 300 a day: out in three days (2026-12-05), so low.
    assert quota == {
        "calls_today": 40,
        "left_today": 960,
        "package_left": 760,
        "run_out": "2026-12-05",
        "low": True,
        "message": quota["message"],
        "gateway_day": "2026-12-02",
        "pace_per_day": 300.0,
    }
    assert "runs out on 2026-12-05" in quota["message"]

    assert show(out, noon) == 0
    text = capsys.readouterr().out
    assert (
        "quota: 40 calls today (gateway day 2026-12-02, GMT+8), 960 left of the daily cap of 1,000"
        in text
    )
    assert "package: 760 of 2,000 calls left, runs out on 2026-12-05 at 300 calls a day" in text
    assert "warning: the image-search package is low" in text

    # 23:59 GMT+8 is still today; a minute past midnight the day's calls start again.
    assert show(out, gmt8(TODAY, 23, 59), "--json") == 0
    assert json.loads(capsys.readouterr().out)["quota"]["calls_today"] == 40
    assert show(out, gmt8(TODAY + timedelta(days=1), 0, 1), "--json") == 0
    tomorrow = json.loads(capsys.readouterr().out)["quota"]
    assert (tomorrow["calls_today"], tomorrow["left_today"]) == (0, 1000)


def test_status_without_quota_keys_shows_the_calls_of_the_day_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    with StateStore(out) as state:
        fill(state, QuotaSettings())

    assert show(out, gmt8(TODAY, 12)) == 0
    text = capsys.readouterr().out
    assert "quota: 40 calls today (gateway day 2026-12-02, GMT+8)\n" in text
    assert "package:" not in text and "warning:" not in text


def test_each_shard_shows_its_own_ledger(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    with StateStore(out, Shard(0, 2)) as first, StateStore(out, Shard(1, 2)) as second:
        fill(first, SETTINGS)
        second.start_run("r2", "2026-12-02", "{}")

    assert show(out, gmt8(TODAY, 12), "--json") == 0
    shards = json.loads(capsys.readouterr().out)["shards"]
    assert [s["quota"]["calls_today"] for s in shards] == [40, 0]
    assert [s["quota"]["package_left"] for s in shards] == [760, None]
