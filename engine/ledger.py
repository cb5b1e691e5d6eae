"""The quota ledger: calls per gateway day, the gateway's daily cap, and the package's run-out.

A purchased image-search package (say 500,000 searches over six months) and a gateway's daily
cap run out silently: the gateway answers ``gw.NoUsageLeftError`` and users learn of it days
later. So every call a run spends (admitted by a call gate and not refunded) is logged in the
checkpoint database with its time (``calls``; :class:`~engine.accounting.CallAccount` writes it
with the run's call total), and this module reads that log as a ledger:

* **Gateway days.** The gateway's day starts at midnight GMT+8 (:data:`GATEWAY_TZ`), whatever
  the machine's zone: a call at 23:59 and one at 00:01 GMT+8 are on two days.
* **The daily cap** (``gateway.daily_calls``): :class:`DailyCap` is the run's call budget's
  :class:`~engine.ratelimit.CallCap`. A search that would take the calls of the gateway day (in
  the ledger, from earlier runs and invocations, plus this invocation's) past the cap is not
  started, and the run winds down like at ``--max-calls`` (exit 4). The allowance follows the
  clock: an invocation still running at midnight GMT+8 goes on with the new day's.
* **The package** (``gateway.package_calls`` from ``gateway.package_start``, a gateway day):
  calls left are the package less the calls logged on gateway days from its start on.
* **Pace**: the mean calls a day over the last :data:`PACE_DAYS` gateway days *before today*
  that had calls (days without calls are left out, so a job run on weekdays only is not
  diluted by its weekends); today's calls alone when no earlier day had any. Today is left out
  otherwise because it is not over: in the morning it would drag the mean down.
* **Run-out**: the gateway day in which the package's last call is spent at that pace, counting
  today as done: ``today + ceil(left / pace)`` days; today when nothing is left; none when
  there is no pace yet.
* **Low**: fewer than ``gateway.quota_low_share`` of the package's calls left, or a run-out
  within :data:`LOW_WITHIN_DAYS` days. The run logs a warning at its start and its summary
  carries the report under ``"quota"`` (:meth:`QuotaReport.to_json`).

``img1688 status`` has no job file, so each invocation stores its settings in the checkpoint
database when it starts (:func:`open_ledger`), and status reads them back. The ledger is per
checkpoint database: a sharded job keeps one per shard, as it keeps one app key per shard.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import TYPE_CHECKING

from engine.signing import GMT8

if TYPE_CHECKING:
    from engine.state import StateStore

log = logging.getLogger(__name__)

GATEWAY_TZ = GMT8
"""The zone of the gateway's day, midnight to midnight."""
PACE_DAYS = 7
"""Gateway days with calls that the pace is the mean of."""
LOW_WITHIN_DAYS = 7
"""A package that runs out within this many days at the current pace is low."""
DEFAULT_LOW_SHARE = 0.10


@dataclass(frozen=True)
class QuotaSettings:
    """The job's quota keys (``gateway.daily_calls``, ``package_calls``, ``package_start``,
    ``quota_low_share``); ``None`` where the job gives none."""

    daily_calls: int | None = None
    package_calls: int | None = None
    package_start: date | None = None
    """The package's first gateway day; given exactly when ``package_calls`` is."""
    low_share: float = DEFAULT_LOW_SHARE


@dataclass(frozen=True)
class QuotaReport:
    """The ledger at one moment, as the summary and ``img1688 status`` show it."""

    calls_today: int
    """Calls logged on the current gateway day, over every run."""
    left_today: int | None
    """Calls the daily cap leaves today; ``None`` without one."""
    package_left: int | None
    """Calls the package has left; ``None`` without one."""
    run_out: date | None
    """The gateway day the package is projected to run out (see the module doc)."""
    low: bool
    message: str | None
    """Why the package is low, when it is."""
    pace: float | None
    """Calls a gateway day the projection assumes (see the module doc)."""

    def to_json(self) -> dict[str, object]:
        """The summary's ``"quota"``: the alerts' contract, keep these keys as they are."""
        return {
            "calls_today": self.calls_today,
            "left_today": self.left_today,
            "package_left": self.package_left,
            "run_out": self.run_out.isoformat() if self.run_out else None,
            "low": self.low,
            "message": self.message,
        }


def gateway_day(at: float) -> date:
    """The gateway day (GMT+8) of the epoch time ``at``."""
    return datetime.fromtimestamp(at, GATEWAY_TZ).date()


def day_start(day: date) -> datetime:
    """Midnight GMT+8 that starts gateway day ``day`` (an aware datetime)."""
    return datetime.combine(day, time(), GATEWAY_TZ)


def pace(days: Mapping[date, int], today: date) -> float | None:
    """Calls a gateway day at the current pace (see the module doc); ``None`` before any
    call. ``days`` maps gateway days to their calls."""
    earlier = sorted((day for day, calls in days.items() if day < today and calls > 0))
    recent = earlier[-PACE_DAYS:]
    if recent:
        return sum(days[day] for day in recent) / len(recent)
    return float(days[today]) if days.get(today, 0) > 0 else None


def quota_report(days: Mapping[date, int], settings: QuotaSettings, now: float) -> QuotaReport:
    """The ledger at epoch time ``now`` from ``days`` (gateway day -> calls logged)."""
    today = gateway_day(now)
    calls_today = days.get(today, 0)
    left_today = None
    if settings.daily_calls is not None:
        left_today = max(0, settings.daily_calls - calls_today)
    per_day = pace(days, today)
    if settings.package_calls is None or settings.package_start is None:
        return QuotaReport(calls_today, left_today, None, None, False, None, per_day)
    total = settings.package_calls
    spent = sum(calls for day, calls in days.items() if day >= settings.package_start)
    left = max(0, total - spent)
    run_out = None
    if left == 0:
        run_out = today
    elif per_day:
        run_out = today + timedelta(days=math.ceil(left / per_day))
    soon = run_out is not None and (run_out - today).days <= LOW_WITHIN_DAYS
    low = left < settings.low_share * total or soon
    message = _low_message(left, total, settings.package_start, per_day, run_out) if low else None
    return QuotaReport(calls_today, left_today, left, run_out, low, message, per_day)


def _low_message(
    left: int, total: int, start: date, per_day: float | None, run_out: date | None
) -> str:
    if left == 0:
        return (
            f"the image-search package is spent: all {total:,} calls since {start} are used;"
            " the gateway refuses further calls (gw.NoUsageLeftError) until more are bought"
        )
    text = f"the image-search package is low: {left:,} of {total:,} calls left ({left / total:.1%})"
    if per_day is not None and run_out is not None:
        text += f"; at {per_day:,.0f} calls a day it runs out on {run_out} (GMT+8)"
    return text + "; buy more before it does"


class DailyCap:
    """The gateway's daily cap as a :class:`~engine.ratelimit.CallCap` of the run's budget.

    Args:
        limit: calls a gateway day allows (``gateway.daily_calls``).
        spent_today: calls the ledger holds for the current gateway day, from earlier runs and
            invocations (this one has spent none yet).
        clock: epoch seconds now, the budget's clock.
    """

    def __init__(self, limit: int, spent_today: int, clock: Callable[[], float]) -> None:
        self.limit = limit
        self._clock = clock
        self._first_day = gateway_day(clock())
        self._before = spent_today
        # This invocation's calls by gateway day. A day that starts while it runs has no calls
        # of other invocations: the output lock keeps them out of this checkpoint database.
        self._mine: dict[date, int] = {}

    def __repr__(self) -> str:
        return f"DailyCap(limit={self.limit}, left={self.left()})"

    def calls_on(self, day: date) -> int:
        """Calls spent on gateway day ``day``, earlier invocations' included."""
        before = self._before if day == self._first_day else 0
        return before + self._mine.get(day, 0)

    def left(self) -> int:
        return self.limit - self.calls_on(gateway_day(self._clock()))

    def count(self, at: float, calls: int) -> None:
        day = gateway_day(at)
        self._mine[day] = self._mine.get(day, 0) + calls

    def reached(self) -> str:
        today = gateway_day(self._clock())
        spent = self.calls_on(today)
        used = (
            f"all {self.limit:,} calls"
            if spent >= self.limit
            else f"{spent:,} of {self.limit:,} calls, too few left for one more search,"
        )
        return (
            f"the gateway's daily cap is reached: {used} of gateway day {today} (GMT+8) spent;"
            f" the next gateway day starts at {_next_day_text(today)}"
        )


def _next_day_text(today: date) -> str:
    """When the gateway day after ``today`` starts, in GMT+8 and in the machine's zone."""
    start = day_start(today + timedelta(days=1))
    local = start.astimezone()
    return f"{start:%Y-%m-%d %H:%M} GMT+8 ({local:%Y-%m-%d %H:%M %Z} local time)"


def open_ledger(
    state: StateStore, settings: QuotaSettings, clock: Callable[[], float]
) -> DailyCap | None:
    """At an invocation's start: store ``settings`` for ``img1688 status``, log a warning when
    the package is low, and return the daily cap for the run's budget (``None`` without one).

    Raises:
        StorageError: the settings cannot be written.
    """
    state.save_quota_settings(settings)
    report = quota_report(state.calls_per_day(), settings, clock())
    if report.low:
        log.warning("%s", report.message)
    if settings.daily_calls is None:
        return None
    return DailyCap(settings.daily_calls, report.calls_today, clock)
