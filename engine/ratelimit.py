"""Call gates and the call budget: every HTTP attempt to the gateway passes through a gate.

A gateway counts calls when they arrive, in a sliding window of its own, per app key (and, on
some gateways, per API). ``AsyncLimiter(10, 60)`` starts with an empty bucket and lets 19 calls
land in the first minute, which a strict gateway answers with rate-limit errors. So a
:class:`CallGate` uses aiolimiter's bucket to space calls evenly instead: an
``AsyncLimiter(1, spacing)`` with ``spacing = (period * (1 + margin) + jitter) / calls`` (the
configuration aiolimiter's documentation gives for "no bursts"). Any ``calls + 1`` consecutive
calls then leave over ``period + margin * period + jitter`` apart, so even if the first reached
the gateway that much later than the last (network, a busy host), no window of ``period``
seconds holds more than ``calls`` arrivals. A steady run still uses
``period / (period * (1 + margin) + jitter)`` of the allowance: 98.9% of 10/60s, 96% of 10/2s.

On top of the spacing each gate keeps a "not before" time: a rate-limit answer to any of its
callers pauses all of them (honouring ``Retry-After``), since they share the gateway's window.

A run has one :class:`CallBudget` (``--max-calls``), shared by the gates of every app: a unit of
work (one search) reserves the calls it needs up front with :meth:`CallBudget.reserve`, and
:meth:`CallGate.acquire` draws each call from the :class:`Reservation` it is given.
:class:`AppGates` are the gates of one app: one window for every API, or one per API.

The budget also times every call it counts (:class:`CallEntry`, on its wall clock) and every
refund, for the call ledger to take (:meth:`CallBudget.take_log`), and it may carry a
:class:`CallCap`, a limit that changes with time such as a gateway's daily cap.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field, replace
from typing import Protocol

from aiolimiter import AsyncLimiter

from engine.errors import Img1688Error


class BudgetExhausted(Img1688Error):
    """The run's call budget (``--max-calls``) is spent. The job stops cleanly and resumes later."""


def most_in_window(arrivals: Iterable[float], period: float) -> int:
    """The most ``arrivals`` in any window of ``period`` seconds, as a gateway's rate window
    counts them (an arrival leaves the window ``period`` seconds after it came): what the
    sandbox enforces, and what tests, benchmarks and ``img1688 report`` compare with a rate."""
    times = sorted(arrivals)
    most, start = 0, 0
    for end, now in enumerate(times):
        while times[start] <= now - period:
            start += 1
        most = max(most, end - start + 1)
    return most


RATE_TEXT = re.compile(r"(\d+)\s*/\s*(\d+(?:\.\d*)?(?:e[+-]?\d+)?|\.\d+)\s*([sm]?)", re.ASCII)
"""``calls/period`` with an optional unit: ``s`` (the default) or ``m``, as :meth:`Rate.parse`
reads it and ``str`` of a rate writes it (also found inside a longer text, e.g. a run's
summary). ``re.ASCII``: ``int`` would take other scripts' digits, which no rate means."""


@dataclass(frozen=True)
class Rate:
    """At most ``calls`` calls in any window of ``period`` seconds."""

    calls: int
    period: float

    @classmethod
    def parse(cls, text: str) -> Rate:
        """Parse ``"10/60s"``, ``"10/60"``, ``"10/2.5s"`` or ``"10/1m"`` (and what ``str`` of a
        rate gives back, ``"10/1e+06s"``). Any other unit is an error, not seconds."""
        found = RATE_TEXT.fullmatch(text.strip())
        if found is None:
            raise ValueError(f"rate {text!r} is not of the form N/SECONDSs, e.g. 10/60s")
        calls, amount, unit = found.groups()
        rate = cls(int(calls), float(amount) * (60.0 if unit == "m" else 1.0))
        if rate.calls < 1 or not 0 < rate.period < math.inf:
            raise ValueError(f"rate {text!r} needs at least 1 call in a finite positive period")
        return rate

    def __str__(self) -> str:
        return f"{self.calls}/{self.period:g}s"


@dataclass(eq=False)
class Reservation:
    """Calls of a :class:`CallBudget` held for one unit of work, from :meth:`CallBudget.reserve`.

    Pass it to every :meth:`CallGate.acquire` of that work. While it is held, its unused calls
    (``calls - used``, never below 0) count against the budget for every other
    :meth:`~CallBudget.reserve`. It is released when the ``with`` block of ``reserve`` ends.
    """

    calls: int
    """Calls held when it was taken."""
    used: int = 0
    """Calls acquired with it so far (less those refunded); may exceed ``calls`` (retries)."""

    @property
    def remaining(self) -> int:
        """Calls still held for this work."""
        return max(0, self.calls - self.used)


@dataclass(frozen=True)
class CallEntry:
    """One call a :class:`CallBudget` counted, or gave back, as the call ledger records it."""

    at: float
    """When it was counted: epoch seconds (UTC), on the budget's clock."""
    app: str | None
    """Whose call it was, as its gate is labelled (a masked app key), if it is."""
    refund: bool = False
    """This entry gives back the call counted at ``at`` for ``app`` (it never left)."""


class CallCap(Protocol):
    """A limit on a budget's calls besides its own ``limit``, one that may change with time
    (a gateway's daily cap, whose allowance comes back each day). The budget tells it of every
    call it counts or gives back, and asks it before every reservation and call."""

    def left(self) -> int:
        """Calls that may still be spent now."""
        ...

    def count(self, at: float, calls: int) -> None:
        """``calls`` calls counted at ``at`` (the budget's clock); ``-1`` for a refund."""
        ...

    def reached(self) -> str:
        """Why no further call fits now: the message of :class:`BudgetExhausted`."""
        ...


class CallBudget:
    """The calls a run may spend in this invocation, over every gate and every app.

    Args:
        limit: total calls that may be spent; ``None`` means unlimited.
        cap: a limit besides ``limit`` that changes with time (see :class:`CallCap`).
        clock: wall clock, epoch seconds, that times each call (injectable for tests).
    """

    def __init__(
        self,
        limit: int | None = None,
        *,
        cap: CallCap | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.limit = limit
        self.cap = cap
        self.clock = clock
        self.spent = 0
        """Calls spent so far, less the refunded ones that never reached the gateway."""
        self._closed = False
        self._reservations: set[Reservation] = set()
        self._log: list[CallEntry] = []

    def __repr__(self) -> str:
        return f"CallBudget(limit={self.limit}, spent={self.spent}, closed={self._closed})"

    @contextmanager
    def reserve(self, calls: int) -> Iterator[Reservation]:
        """Hold ``calls`` of the budget for one unit of work while the ``with`` block runs.

        An ``ocean`` search is an upload and a query: reserving both up front keeps the budget
        from running out between them, which would waste the upload. Pass the yielded
        :class:`Reservation` to every :meth:`CallGate.acquire` of that work; the calls it still
        holds are released when the block ends, however it ends. Without a limit, a reservation
        only counts calls.

        Raises:
            BudgetExhausted: at once, before the block runs, when the budget is closed, or when
                ``spent`` plus the calls other reservations still hold plus ``calls`` would
                exceed the limit, or the calls other reservations hold plus ``calls`` exceed
                what the cap has left.
        """
        if self._closed:
            raise BudgetExhausted("no further call is admitted: the run is stopping")
        if self.limit is not None and self.spent + self._outstanding() + calls > self.limit:
            raise BudgetExhausted(
                f"the call budget of {self.limit} calls for this run is spent"
                " (or too little is left for one more search)"
            )
        if self.cap is not None and self._outstanding() + calls > self.cap.left():
            raise BudgetExhausted(self.cap.reached())
        reservation = Reservation(calls)
        self._reservations.add(reservation)
        try:
            yield reservation
        finally:
            self._reservations.discard(reservation)

    def holds(self, reservation: Reservation) -> bool:
        """Whether ``reservation`` was taken from this budget and is not yet released."""
        return reservation in self._reservations

    def check(self) -> None:
        """Raise :class:`BudgetExhausted` if no further call may be spent.

        A call drawn from a reservation always fits while the reservation has calls left (the
        reservation kept them free); a call without one, or beyond one (a retry), may take
        calls that other reservations still hold.
        """
        if self._closed:
            raise BudgetExhausted("no further call is admitted: the run is stopping")
        if self.limit is not None and self.spent >= self.limit:
            raise BudgetExhausted(f"the call budget of {self.limit} calls for this run is spent")
        if self.cap is not None and self.cap.left() <= 0:
            raise BudgetExhausted(self.cap.reached())

    def spend(self, reservation: Reservation | None, app: str | None = None) -> CallEntry:
        """Count one call of ``app``, against ``reservation`` when given, and return its
        entry (the log's, see :meth:`take_log`). Raises like :meth:`check`."""
        self.check()
        self.spent += 1
        if reservation is not None:
            reservation.used += 1
        entry = CallEntry(self.clock(), app)
        self._log.append(entry)
        if self.cap is not None:
            self.cap.count(entry.at, 1)
        return entry

    def refund(self, reservation: Reservation | None, entry: CallEntry) -> None:
        """Give back one call that provably never reached the gateway (and its reservation's);
        ``entry`` is what :meth:`spend` returned for it."""
        self.spent -= 1
        if reservation is not None:
            reservation.used -= 1
        self._log.append(replace(entry, refund=True))
        if self.cap is not None:
            self.cap.count(entry.at, -1)

    def take_log(self) -> list[CallEntry]:
        """The calls counted and given back since the last take, in order. Its owner (the
        run's call account) takes it after every search, so it stays short."""
        log, self._log = self._log, []
        return log

    def close(self) -> None:
        """Admit no further call and no new reservation: every later :meth:`check` and
        :meth:`reserve` raises :class:`BudgetExhausted`. Used when the run stops."""
        self._closed = True

    def _outstanding(self) -> int:
        return sum(r.remaining for r in self._reservations)


@dataclass(eq=False)
class Admission:
    """One call a :class:`CallGate` admitted, as :meth:`CallGate.acquire` returns it."""

    at: float
    """The gate's clock when the call was admitted (its departure)."""
    reservation: Reservation | None
    gate: CallGate = field(repr=False)
    entry: CallEntry = field(repr=False)
    """How the budget logged it."""
    refunded: bool = False


class CallGate:
    """Admit calls so that no window of ``rate.period`` seconds holds more than ``rate.calls``
    arrivals at the gateway.

    Use ``await gate.acquire(reservation)`` immediately before each HTTP attempt, retries
    included, where ``reservation`` comes from ``with gate.budget.reserve(calls) as
    reservation:`` around the unit of work (``acquire()`` alone admits a call that belongs to
    none). Create one gate per event loop (aiolimiter binds to the first loop it runs on).

    **Refunds.** An attempt that provably never reached the gateway (it ended before it had a
    connection: a DNS, connect or TLS failure, or a cancellation then) is given back with
    :meth:`refund`: it leaves the budget, the call accounting and the window count, because the
    gateway never counted it. Its slot in the spacing stays spent: aiolimiter's bucket has no
    way back, and keeping it costs one spacing interval of time, never quota. The guarantee is
    untouched, since the calls that may arrive are a subset of the calls spaced.

    Args:
        rate: the allowance to respect.
        margin: relative stretch of the spacing between calls.
        jitter: seconds of variation, between calls, of the delay from the moment a call
            leaves to the moment the gateway counts it, that the spacing absorbs.
        budget: the run's :class:`CallBudget`, shared with other gates; an ``int`` or ``None``
            makes a budget of that limit for this gate alone.
        clock: monotonic clock for pauses and the window count, injectable for tests (the
            spacing itself is aiolimiter's, on the event loop's clock).
        label: whose calls the gate admits (a masked app key), as the budget logs them.
    """

    def __init__(
        self,
        rate: Rate,
        *,
        margin: float = 0.01,
        jitter: float = 0.05,
        budget: CallBudget | int | None = None,
        clock: Callable[[], float] = time.monotonic,
        label: str | None = None,
    ) -> None:
        self.rate = rate
        self.label = label
        self.spacing = (rate.period * (1.0 + margin) + jitter) / rate.calls
        self.budget = budget if isinstance(budget, CallBudget) else CallBudget(budget)
        self.spent = 0
        """Calls this gate admitted, less those refunded (the budget counts every gate's)."""
        self._limiter = AsyncLimiter(1, self.spacing)
        self._clock = clock
        self._not_before = 0.0
        self._last = -math.inf
        """The latest admission, refunded or not: the bucket spaces from it either way."""
        self._admitted: deque[float] = deque()  # unrefunded admissions within the period
        self._waiting = 0

    def __repr__(self) -> str:
        return f"CallGate(rate={self.rate}, spent={self.spent})"

    def reserve(self, calls: int) -> AbstractContextManager[Reservation]:
        """Shorthand for ``gate.budget.reserve(calls)`` (see :meth:`CallBudget.reserve`)."""
        return self.budget.reserve(calls)

    def close(self) -> None:
        """Close the budget (shared with every gate that shares it): no further call."""
        self.budget.close()

    def pause(self, seconds: float) -> None:
        """Hold back every caller for ``seconds`` from now (extends, never shortens, a pause)."""
        self._not_before = max(self._not_before, self._clock() + max(0.0, seconds))

    def free_at(self) -> float:
        """When a call asked for now would be admitted, on the gate's clock (a time in the past
        means at once): after the pause, the spacing and every caller already in line."""
        return max(self._not_before, self._last + self.spacing * (1 + self._waiting))

    async def acquire(self, reservation: Reservation | None = None) -> Admission:
        """Wait until one more call may be sent, then count it and return its admission.

        The call is counted against the budget and against ``reservation`` (``used`` goes up by
        one), which must be held on the gate's budget (see :meth:`CallBudget.check`).

        Raises:
            BudgetExhausted: the budget is spent or closed.
            ValueError: ``reservation`` is not held on this gate's budget (released, or
                another budget's).
        """
        if reservation is not None and not self.budget.holds(reservation):
            raise ValueError("the reservation is not held on this gate's budget")
        self._waiting += 1
        try:
            while True:
                self.budget.check()
                delay = self._not_before - self._clock()
                if delay > 0:
                    await asyncio.sleep(delay)
                    continue
                await self._limiter.acquire()
                # A pause may have started while we waited for the bucket: honour it first.
                if self._not_before <= self._clock():
                    break
            entry = self.budget.spend(reservation, self.label)
            self.spent += 1
            now = self._last = self._clock()
            self._admitted.append(now)
            self._forget_before(now - self.rate.period)
            return Admission(now, reservation, self, entry)
        finally:
            self._waiting -= 1

    def refund(self, admission: Admission) -> None:
        """Give back a call that provably never reached the gateway (see the class doc): it no
        longer counts in the budget or the window. A second refund is ignored.

        Raises:
            ValueError: ``admission`` was made by another gate.
        """
        if admission.gate is not self:
            raise ValueError("the admission was made by another gate")
        if admission.refunded:
            return
        admission.refunded = True
        self.budget.refund(admission.reservation, admission.entry)
        self.spent -= 1
        # Gone already if older than the period: then it no longer counts in the window.
        with contextlib.suppress(ValueError):
            self._admitted.remove(admission.at)

    def calls_in_window(self) -> int:
        """Calls admitted (and not refunded) during the last ``rate.period`` seconds."""
        self._forget_before(self._clock() - self.rate.period)
        return len(self._admitted)

    def _forget_before(self, horizon: float) -> None:
        while self._admitted and self._admitted[0] <= horizon:
            self._admitted.popleft()


class AppGates:
    """The gates one app's calls pass: one window for every API (the default, as gateways that
    count per app key), or one window per API (``gateway.rates``), all on one budget.

    Args:
        shared: the gate of every API without a gate of its own.
        per_api: API name -> its own gate.

    Raises:
        ValueError: no gate at all, or gates on different budgets.
    """

    def __init__(
        self, shared: CallGate | None = None, per_api: Mapping[str, CallGate] | None = None
    ) -> None:
        self.shared = shared
        self.per_api = dict(per_api or {})
        gates = self.gates
        if not gates:
            raise ValueError("an app needs at least one call gate")
        if any(gate.budget is not gates[0].budget for gate in gates):
            raise ValueError("the gates of an app must share one call budget")
        self.budget = gates[0].budget

    @classmethod
    def build(
        cls, rate: Rate | Mapping[str, Rate], budget: CallBudget, label: str | None = None
    ) -> AppGates:
        """One shared gate at ``rate``, or one gate per API of the mapping, on ``budget``;
        ``label`` names the app in the budget's log (see :class:`CallGate`)."""
        if isinstance(rate, Rate):
            return cls(CallGate(rate, budget=budget, label=label))
        return cls(
            per_api={api: CallGate(r, budget=budget, label=label) for api, r in rate.items()}
        )

    @property
    def gates(self) -> tuple[CallGate, ...]:
        """Every gate, the shared one first."""
        shared = (self.shared,) if self.shared is not None else ()
        return shared + tuple(self.per_api.values())

    def for_api(self, api: str) -> CallGate:
        """The gate that admits calls to ``api``.

        Raises:
            ValueError: ``api`` has no gate of its own and there is no shared gate.
        """
        gate = self.per_api.get(api, self.shared)
        if gate is None:
            raise ValueError(f"no call gate for {api}")
        return gate
