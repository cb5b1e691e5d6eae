"""The call gate: every HTTP attempt to the gateway passes through one.

A gateway counts calls when they arrive, in a sliding window of its own. ``AsyncLimiter(10, 60)``
starts with an empty bucket and lets 19 calls land in the first minute, which a strict gateway
answers with rate-limit errors. So the gate spaces calls evenly instead: an
``AsyncLimiter(1, spacing)`` with ``spacing = (period * (1 + margin) + jitter) / calls``. Any
``calls + 1`` consecutive calls then leave over ``period + margin * period + jitter`` apart, so
even if the first reached the gateway that much later than the last (network, a busy host), no
window of ``period`` seconds holds more than ``calls`` arrivals. A steady run still uses
``period / (period * (1 + margin) + jitter)`` of the allowance: 98.9% of 10/60s, 96% of 10/2s.

On top of the spacing the gate keeps a shared "not before" time: a rate-limit answer to any
caller pauses every caller (honouring ``Retry-After``), since the gateway's window is shared by
all of them. It also enforces an optional budget of calls for the run, from which a unit of
work (one search) reserves the calls it needs up front: :meth:`CallGate.reserve` yields a
:class:`Reservation`, and :meth:`CallGate.acquire` draws from the reservation it is given.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from aiolimiter import AsyncLimiter

from engine.errors import Img1688Error


class BudgetExhausted(Img1688Error):
    """The run's call budget (``--max-calls``) is spent. The job stops cleanly and resumes later."""


@dataclass(frozen=True)
class Rate:
    """At most ``calls`` calls in any window of ``period`` seconds."""

    calls: int
    period: float

    @classmethod
    def parse(cls, text: str) -> Rate:
        """Parse ``"10/60s"``, ``"10/60"``, ``"10/2.5s"`` or ``"10/1m"``."""
        try:
            calls_text, period_text = text.strip().split("/", 1)
            calls = int(calls_text)
            unit = 60.0 if period_text.endswith("m") else 1.0
            period = float(period_text.rstrip("sm")) * unit
        except ValueError:
            raise ValueError(f"rate {text!r} is not of the form N/SECONDSs, e.g. 10/60s") from None
        if calls < 1 or period <= 0:
            raise ValueError(f"rate {text!r} needs at least 1 call in a positive period")
        return cls(calls, period)

    def __str__(self) -> str:
        return f"{self.calls}/{self.period:g}s"


@dataclass(eq=False)
class Reservation:
    """Calls of a gate's budget held for one unit of work, from :meth:`CallGate.reserve`.

    Pass it to every :meth:`CallGate.acquire` of that work. While it is held, its unused calls
    (``calls - used``, never below 0) count against the budget for every other
    :meth:`~CallGate.reserve`. It is released when the ``with`` block of ``reserve`` ends.
    """

    calls: int
    """Calls held when it was taken."""
    used: int = 0
    """Calls acquired with it so far; may exceed ``calls`` (retries)."""

    @property
    def remaining(self) -> int:
        """Calls still held for this work."""
        return max(0, self.calls - self.used)


class CallGate:
    """Admit calls so that no window of ``rate.period`` seconds holds more than ``rate.calls``.

    Use ``await gate.acquire(reservation)`` immediately before each HTTP attempt, retries
    included, where ``reservation`` comes from ``with gate.reserve(calls) as reservation:``
    around the unit of work (``acquire()`` alone admits a call that belongs to none).
    Create one gate per event loop (the underlying limiter binds to the first loop it runs on).

    Args:
        rate: the allowance to respect.
        margin: relative stretch of the spacing between calls.
        jitter: seconds of variation, between calls, of the delay from the moment a call
            leaves to the moment the gateway counts it, that the spacing absorbs.
        budget: total calls this gate may admit; the next ``acquire`` raises
            :class:`BudgetExhausted`. ``None`` means unlimited.
        clock: monotonic clock, injectable for tests.
    """

    def __init__(
        self,
        rate: Rate,
        *,
        margin: float = 0.01,
        jitter: float = 0.05,
        budget: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self.spacing = (rate.period * (1.0 + margin) + jitter) / rate.calls
        self.budget = budget
        self._limiter = AsyncLimiter(1, self.spacing)
        self._clock = clock
        self._not_before = 0.0
        self._admitted: deque[float] = deque()
        self._reservations: set[Reservation] = set()
        self.spent = 0

    def pause(self, seconds: float) -> None:
        """Hold back every caller for ``seconds`` from now (extends, never shortens, a pause)."""
        self._not_before = max(self._not_before, self._clock() + max(0.0, seconds))

    async def acquire(self, reservation: Reservation | None = None) -> None:
        """Wait until one more call may be sent, then count it.

        The call is counted against ``reservation`` (``used`` goes up by one), which must be
        held on this gate. The budget check is the same with or without one: the call is
        refused only once ``spent`` has reached the budget. So a call drawn from a reservation
        always fits while the reservation has calls left, and a call without a reservation, or
        beyond one (a retry), may take calls that other reservations still hold.

        Raises:
            BudgetExhausted: the budget is spent, or :meth:`close` was called.
            ValueError: ``reservation`` is not held on this gate (released, or another gate's).
        """
        if reservation is not None and reservation not in self._reservations:
            raise ValueError("the reservation is not held on this gate")
        while True:
            self._check_budget()
            delay = self._not_before - self._clock()
            if delay > 0:
                await asyncio.sleep(delay)
                continue
            await self._limiter.acquire()
            # A pause may have started while we waited for the limiter: honour it first.
            if self._not_before > self._clock():
                continue
            self._check_budget()
            self.spent += 1
            if reservation is not None:
                reservation.used += 1
            now = self._clock()
            self._admitted.append(now)
            self._forget_before(now - self.rate.period)
            return

    @contextmanager
    def reserve(self, calls: int) -> Iterator[Reservation]:
        """Hold ``calls`` of the budget for one unit of work while the ``with`` block runs.

        An ``ocean`` search is an upload and a query: reserving both up front keeps the budget
        from running out between them, which would waste the upload. Pass the yielded
        :class:`Reservation` to every :meth:`acquire` of that work; the calls it still holds are
        released when the block ends, however it ends. Without a budget, a reservation only
        counts calls.

        Raises:
            BudgetExhausted: at once, before the block runs, when ``spent`` plus the calls other
                reservations still hold plus ``calls`` would exceed the budget.
        """
        if self.budget is not None and self.spent + self._outstanding() + calls > self.budget:
            raise BudgetExhausted(
                f"the call budget of {self.budget} calls for this run is spent"
                " (or too little is left for one more search)"
            )
        reservation = Reservation(calls)
        self._reservations.add(reservation)
        try:
            yield reservation
        finally:
            self._reservations.discard(reservation)

    def _outstanding(self) -> int:
        return sum(r.remaining for r in self._reservations)

    def close(self) -> None:
        """Admit no further call: the next :meth:`acquire` raises :class:`BudgetExhausted`.
        Used when the run stops, so no caller still waiting for a slot sends a new call."""
        self.budget = self.spent

    def calls_in_window(self) -> int:
        """Calls admitted during the last ``rate.period`` seconds."""
        self._forget_before(self._clock() - self.rate.period)
        return len(self._admitted)

    def _forget_before(self, horizon: float) -> None:
        while self._admitted and self._admitted[0] <= horizon:
            self._admitted.popleft()

    def _check_budget(self) -> None:
        if self.budget is not None and self.spent >= self.budget:
            raise BudgetExhausted(f"the call budget of {self.budget} calls for this run is spent")
