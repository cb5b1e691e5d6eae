"""The quota ledger: gateway days in GMT+8, the pace, the package's run-out, and the daily cap
as a limit of the call budget that comes back at midnight GMT+8."""

from __future__ import annotations

import logging
from datetime import date, datetime, timedelta

import pytest

from engine.ledger import (
    DailyCap,
    QuotaSettings,
    gateway_day,
    open_ledger,
    pace,
    quota_report,
)
from engine.ratelimit import BudgetExhausted, CallBudget, CallEntry
from engine.signing import GMT8
from engine.state import StateStore

DAY = date(2026, 12, 2)


def at(day: date, hour: int, minute: int = 0) -> float:
    """Epoch seconds of ``hour:minute`` GMT+8 on ``day``."""
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=GMT8).timestamp()


class Clock:
    """A wall clock the test sets."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("moment", "day"),
    [
        (at(DAY, 0, 0), DAY),
        (at(DAY, 23, 59), DAY),
        (at(DAY + timedelta(days=1), 0, 1), DAY + timedelta(days=1)),
        # 15:59 UTC is 23:59 GMT+8, 16:01 UTC already the next gateway day.
        (datetime.fromisoformat("2026-12-02T15:59:00+00:00").timestamp(), DAY),
        (datetime.fromisoformat("2026-12-02T16:01:00+00:00").timestamp(), date(2026, 12, 3)),
        # 09:00 on a machine seven hours behind UTC is already tomorrow for the gateway.
        (datetime.fromisoformat("2026-12-02T09:00:00-07:00").timestamp(), date(2026, 12, 3)),
    ],
)
def test_the_gateway_day_runs_from_midnight_to_midnight_gmt8(moment: float, day: date) -> None:
    assert gateway_day(moment) == day


@pytest.mark.parametrize(
    ("days", "expected"),
    [
        ({}, None),
        ({DAY: 50}, 50.0),  # the first day: today's calls alone
        ({DAY - timedelta(days=3): 100, DAY - timedelta(days=1): 200, DAY: 5}, 150.0),
        # The last seven days with calls, not the last seven calendar days; today left out.
        ({DAY - timedelta(days=d): 10 * d for d in range(1, 10)} | {DAY: 1}, 40.0),
    ],
)
def test_the_pace_is_the_mean_of_the_last_seven_days_with_calls_before_today(
    days: dict[date, int], expected: float | None
) -> None:
    assert pace(days, DAY) == expected


def package(calls: int, start: date = DAY - timedelta(days=30)) -> QuotaSettings:
    return QuotaSettings(package_calls=calls, package_start=start)


YESTERDAY = DAY - timedelta(days=1)
LONG_AGO = DAY - timedelta(days=90)
WEEK_OF_1000 = {DAY - timedelta(days=d): 1_000 for d in range(1, 8)}


@pytest.mark.parametrize(
    ("days", "settings", "left", "run_out", "low"),
    [
        # 100 a day, 100 left: the last call goes tomorrow, within a week: low.
        ({YESTERDAY: 900}, package(1000), 100, DAY + timedelta(days=1), True),
        # 150 left at 100 a day: a part-day is a day.
        (
            {YESTERDAY: 100, DAY - timedelta(days=2): 100, DAY: 50},
            package(400),
            150,
            DAY + timedelta(days=2),
            True,
        ),
        # 8% left, below the 10% share, though 8 days away at 1,000 a day: low.
        (
            WEEK_OF_1000 | {DAY - timedelta(days=60): 85_000},
            package(100_000, LONG_AGO),
            8_000,
            DAY + timedelta(days=8),
            True,
        ),
        # 80% left, 8 days away: not low.
        (
            {YESTERDAY: 1_000, DAY - timedelta(days=2): 1_000},
            package(10_000),
            8_000,
            DAY + timedelta(days=8),
            False,
        ),
        # 7 days left: low.
        ({YESTERDAY: 1_000}, package(8_000), 7_000, DAY + timedelta(days=7), True),
        # Spent: runs out today.
        ({YESTERDAY: 600, DAY: 400}, package(1000), 0, DAY, True),
        # No call yet: no pace, no run-out; nothing is low.
        ({}, package(1000), 1000, None, False),
        # Calls before the package started do not count against it (they drive the pace).
        ({DAY - timedelta(days=40): 5_000}, package(10_000), 10_000, DAY + timedelta(days=2), True),
    ],
)
def test_package_left_and_projected_run_out(
    days: dict[date, int], settings: QuotaSettings, left: int, run_out: date | None, low: bool
) -> None:
    report = quota_report(days, settings, at(DAY, 12))
    assert (report.package_left, report.run_out, report.low) == (left, run_out, low)
    assert (report.message is not None) == low


def test_the_summary_shape_is_the_alerts_contract() -> None:
    days = {YESTERDAY: 950, DAY: 30}
    settings = QuotaSettings(daily_calls=100, package_calls=1000, package_start=YESTERDAY)
    report = quota_report(days, settings, at(DAY, 12)).to_json()
    assert report == {
        "calls_today": 30,
        "left_today": 70,
        "package_left": 20,
        "run_out": "2026-12-03",
        "low": True,
        "message": report["message"],
    }
    assert "20 of 1,000 calls left" in str(report["message"])
    bare = quota_report({}, QuotaSettings(), at(DAY, 12)).to_json()
    assert bare == {
        "calls_today": 0,
        "left_today": None,
        "package_left": None,
        "run_out": None,
        "low": False,
        "message": None,
    }


def test_the_daily_cap_stops_the_budget_and_the_next_gateway_day_renews_it() -> None:
    clock = Clock(at(DAY, 23, 58))
    cap = DailyCap(10, spent_today=7, clock=clock)  # seven by earlier invocations
    budget = CallBudget(cap=cap, clock=clock)
    with budget.reserve(2) as reservation:
        with pytest.raises(BudgetExhausted):
            budget.reserve(2).__enter__()  # 7 + 2 held + 2 > 10
        budget.spend(reservation)
        budget.spend(reservation)
    budget.spend(None)
    assert cap.left() == 0
    with pytest.raises(BudgetExhausted) as stopped:
        budget.reserve(1).__enter__()
    message = str(stopped.value)
    assert "daily cap is reached: all 10 calls of gateway day 2026-12-02" in message
    local = datetime(2026, 12, 3, tzinfo=GMT8).astimezone()
    assert f"starts at 2026-12-03 00:00 GMT+8 ({local:%Y-%m-%d %H:%M %Z} local time)" in message
    with pytest.raises(BudgetExhausted):
        budget.check()  # a retry beyond its reservation is refused too

    clock.now = at(DAY + timedelta(days=1), 0, 1)  # the run crosses midnight GMT+8
    assert cap.left() == 10
    with budget.reserve(10) as reservation:
        entry = budget.spend(reservation)
    budget.refund(None, entry)  # it never left: today's allowance gets it back
    assert cap.left() == 10
    assert (cap.calls_on(DAY), budget.spent) == (10, 3)


def test_a_search_that_does_not_fit_what_is_left_says_so() -> None:
    clock = Clock(at(DAY, 9))
    budget = CallBudget(cap=DailyCap(10, spent_today=9, clock=clock), clock=clock)
    with pytest.raises(BudgetExhausted, match="9 of 10 calls, too few left for one more search"):
        budget.reserve(2).__enter__()  # an ocean search: upload and query
    with budget.reserve(1):  # a seed search fits
        pass


def test_the_budget_logs_each_call_on_its_clock_and_each_refund() -> None:
    clock = Clock(at(DAY, 9))
    budget = CallBudget(clock=clock)
    first = budget.spend(None, "ap***21")
    clock.now += 5
    second = budget.spend(None, "ap***21")
    budget.refund(None, first)
    assert budget.take_log() == [
        CallEntry(at(DAY, 9), "ap***21"),
        CallEntry(at(DAY, 9) + 5, "ap***21"),
        CallEntry(at(DAY, 9), "ap***21", refund=True),
    ]
    assert budget.take_log() == []
    assert second.at == at(DAY, 9) + 5


def test_opening_the_ledger_keeps_the_settings_warns_when_low_and_caps_only_if_asked(
    state: StateStore, caplog: pytest.LogCaptureFixture
) -> None:
    state.start_run("r", "2026-12-02", "{}")
    earlier = [CallEntry(at(YESTERDAY, 10) + i, None) for i in range(95)]
    today = [CallEntry(at(DAY, 8) + i, None) for i in range(3)]
    state.record_calls("r", 98, earlier + today)
    settings = QuotaSettings(daily_calls=50, package_calls=100, package_start=YESTERDAY)

    with caplog.at_level(logging.WARNING, logger="engine.ledger"):
        cap = open_ledger(state, settings, Clock(at(DAY, 12)))

    assert state.quota_settings() == settings
    assert cap is not None and cap.left() == 47
    assert "the image-search package is low: 2 of 100 calls left" in caplog.text
    caplog.clear()
    assert open_ledger(state, QuotaSettings(), Clock(at(DAY, 12))) is None
    assert state.quota_settings() == QuotaSettings()  # the latest invocation's keys
    assert caplog.text == ""
