"""The call gate: never more than N calls in any window, yet close to N."""

from __future__ import annotations

import asyncio
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.ratelimit import (
    AppGates,
    BudgetExhausted,
    CallBudget,
    CallGate,
    Rate,
    Reservation,
    most_in_window,
)
from tests.fake_clock import on_fake_clock


@pytest.mark.parametrize(
    ("text", "rate"),
    [
        ("10/60s", Rate(10, 60.0)),
        ("10/60", Rate(10, 60.0)),
        ("3/1.5s", Rate(3, 1.5)),
        ("600/1m", Rate(600, 60.0)),
        (" 7/2s ", Rate(7, 2.0)),
    ],
)
def test_rates_parse(text: str, rate: Rate) -> None:
    assert Rate.parse(text) == rate


@pytest.mark.parametrize(
    "text",
    [
        *("", "10", "ten/60s", "10/", "0/60s", "10/0s", "10/-1s", "10/60s/2"),
        # Units other than s and m are errors, never read as seconds.
        *("10/60ms", "10/5mm", "10/1sm", "10/60h", "10/1 minute"),
        *("10/inf", "10/nan", "10/1e400s", "1_0/60s", "+10/60s", "\u0661\u0660/60s"),
    ],
)
def test_bad_rates_say_what_is_expected(text: str) -> None:
    with pytest.raises(ValueError, match=r"10/60s|at least 1 call"):
        Rate.parse(text)


@given(
    st.integers(min_value=1, max_value=10**9),
    st.floats(min_value=1e-6, max_value=1e12, allow_nan=False, allow_infinity=False),
)
def test_a_rate_reads_back_from_what_it_prints(calls: int, period: float) -> None:
    rate = Rate.parse(str(Rate(calls, period)))
    assert rate.calls == calls
    assert rate.period == pytest.approx(period, rel=1e-5)  # printed with 6 significant digits


async def admit(
    gate: CallGate, callers: int, calls_each: int, reservation: Reservation | None = None
) -> list[float]:
    """Admission times (the gate's clock) of ``callers`` tasks making ``calls_each`` calls."""
    times: list[float] = []

    async def caller() -> None:
        for _ in range(calls_each):
            times.append((await gate.acquire(reservation)).at)

    await asyncio.gather(*(caller() for _ in range(callers)))
    return sorted(times)


# --- timing, on the fake loop clock ------------------------------------------------------------
#
# ``@on_fake_clock`` tests run on an event loop whose clock jumps to the next timer whenever the
# loop would sleep (and ticks a microsecond a turn): aiolimiter's spacing (on the loop's clock) and
# the gate's pauses and window count (its ``clock``, given the loop's) read one fake time, so the
# bounds below are tight and no test waits in real time (tests/fake_clock.py; docs/testing.md
# says why not looptime).

TOLERANCE = 1e-3
"""Seconds of slack on fake-time bounds: the loop's ticks (a microsecond a turn) add up to far
less, and a gate at half speed misses by a spacing a call (over 0.1 s here)."""


def gate_on_loop_clock(rate: Rate, **kwargs: object) -> CallGate:
    """A gate whose pauses and window count use the running loop's (fake) clock."""
    return CallGate(rate, clock=asyncio.get_running_loop().time, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("rate", [Rate(10, 60.0), Rate(5, 0.5), Rate(3, 2.0)])
@pytest.mark.parametrize("callers", [1, 4])
@on_fake_clock
async def test_a_steady_run_spans_n_minus_1_spacings_and_fills_every_window(
    rate: Rate, callers: int
) -> None:
    gate = gate_on_loop_clock(rate)
    n = 24
    times = await admit(gate, callers=callers, calls_each=n // callers)

    # A gate at half speed (or one that bursts) misses these bounds by far more than TOLERANCE.
    assert times[-1] - times[0] == pytest.approx((n - 1) * gate.spacing, abs=TOLERANCE)
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert min(gaps) >= gate.spacing - TOLERANCE  # evenly spaced: no burst, even at the start
    # Never more than N in a window, and the allowance is used: N in the fullest window.
    assert most_in_window(times, rate.period) == rate.calls
    # The spacing is the documented one: N + 1 calls span the period, plus 1% and 50 ms.
    assert rate.calls * gate.spacing == pytest.approx(rate.period * 1.01 + 0.05)


@on_fake_clock
async def test_callers_are_admitted_in_the_order_they_asked() -> None:
    gate = gate_on_loop_clock(Rate(10, 1.0))
    asked: list[tuple[int, int]] = []
    admitted: list[tuple[int, int]] = []

    async def caller(who: int) -> None:
        for call in range(4):
            asked.append((who, call))
            await gate.acquire()
            admitted.append((who, call))

    await asyncio.gather(*(caller(who) for who in range(3)))

    # First come, first served: no caller overtakes one that asked before it, so none starves.
    assert admitted == asked
    assert {who for who, _ in admitted[3:6]} == {0, 1, 2}  # and they really took turns


@pytest.mark.parametrize("pauses", [(5.0, 1.0), (1.0, 5.0), (5.0, 0.0)])
@on_fake_clock
async def test_a_pause_lasts_as_long_as_the_longest_of_overlapping_pauses(
    pauses: tuple[float, float],
) -> None:
    gate = gate_on_loop_clock(Rate(100, 1.0))
    start = asyncio.get_running_loop().time()
    for seconds in pauses:
        gate.pause(seconds)

    admitted = await gate.acquire()

    # Admitted when the longest pause ends: not before (a short pause cut it), not after.
    assert admitted.at == pytest.approx(start + max(pauses), abs=TOLERANCE)


@on_fake_clock
async def test_a_short_pause_during_a_long_one_does_not_release_the_waiting_callers() -> None:
    gate = gate_on_loop_clock(Rate(100, 1.0))
    start = asyncio.get_running_loop().time()
    gate.pause(3.0)
    callers = asyncio.gather(*(gate.acquire() for _ in range(3)))
    await asyncio.sleep(1.0)
    gate.pause(0.5)  # a later, shorter Retry-After: ends before the first pause does

    admitted = sorted(a.at for a in await callers)

    assert admitted[0] == pytest.approx(start + 3.0, abs=TOLERANCE)
    assert admitted[-1] == pytest.approx(start + 3.0 + 2 * gate.spacing, abs=TOLERANCE)


@on_fake_clock
async def test_a_longer_pause_during_a_short_one_holds_the_waiting_callers_longer() -> None:
    gate = gate_on_loop_clock(Rate(100, 1.0))
    start = asyncio.get_running_loop().time()
    gate.pause(1.0)
    callers = asyncio.gather(*(gate.acquire() for _ in range(3)))
    await asyncio.sleep(0.5)
    gate.pause(3.0)  # ends at start + 3.5, after the first pause

    admitted = sorted(a.at for a in await callers)

    assert admitted[0] == pytest.approx(start + 3.5, abs=TOLERANCE)
    assert admitted[-1] == pytest.approx(start + 3.5 + 2 * gate.spacing, abs=TOLERANCE)


@on_fake_clock
async def test_a_retry_after_pause_delays_every_caller_of_the_gate() -> None:
    rate = Rate(10, 1.0)
    gate = gate_on_loop_clock(rate)
    retry_after = 2.0
    first = await gate.acquire()
    # Four more callers queue for the bucket's next slots while the first call is out.
    queued = asyncio.gather(*(gate.acquire() for _ in range(4)))
    await asyncio.sleep(0)
    # The first call is answered "rate limited, Retry-After: 2": the client pauses the gate.
    gate.pause(retry_after)

    admitted = sorted(a.at for a in await queued)

    # None of the others went out during the pause, though the bucket had slots for them;
    # after it they are spaced as usual.
    assert admitted[0] == pytest.approx(first.at + retry_after, abs=TOLERANCE)
    assert admitted[-1] - admitted[0] == pytest.approx(3 * gate.spacing, abs=TOLERANCE)
    assert most_in_window([first.at, *admitted], rate.period) <= rate.calls
    assert gate.spent == 5


async def test_the_budget_and_close_refuse_further_calls() -> None:
    gate = CallGate(Rate(1000, 1.0), budget=3)
    await admit(gate, callers=1, calls_each=3)
    with pytest.raises(BudgetExhausted, match="3 calls"):
        await gate.acquire()
    open_gate = CallGate(Rate(1000, 1.0))
    await open_gate.acquire()
    open_gate.close()
    with pytest.raises(BudgetExhausted):
        await open_gate.acquire()
    assert (gate.spent, open_gate.spent) == (3, 1)


@on_fake_clock
async def test_calls_in_window_forgets_old_calls() -> None:
    gate = gate_on_loop_clock(Rate(100, 0.2))
    times = await admit(gate, callers=1, calls_each=3)
    assert gate.calls_in_window() == 3
    await asyncio.sleep(times[0] + 0.2 - asyncio.get_running_loop().time())
    assert gate.calls_in_window() == 2  # the first has just left the window
    await asyncio.sleep(0.2)
    assert gate.calls_in_window() == 0


async def test_a_reservation_holds_its_calls_back_from_others() -> None:
    gate = CallGate(Rate(1000, 1.0), budget=4)
    first_half_done = asyncio.Event()
    release = asyncio.Event()

    async def search() -> None:
        with gate.reserve(2) as reservation:
            await gate.acquire(reservation)  # the upload
            first_half_done.set()
            await release.wait()
            await gate.acquire(reservation)  # the query, from the same reservation

    first = asyncio.create_task(search())
    await first_half_done.wait()
    # One call spent, one still owed to the first search: room for exactly one more search.
    with gate.reserve(2) as second:
        with pytest.raises(BudgetExhausted, match="too little is left"):
            gate.reserve(1).__enter__()
        await admit(gate, callers=1, calls_each=2, reservation=second)
    release.set()
    await first
    assert gate.spent == 4


async def test_acquire_draws_from_the_reservation_it_is_given() -> None:
    gate = CallGate(Rate(1000, 1.0), budget=4)
    with gate.reserve(2) as mine, gate.reserve(1) as theirs:
        await gate.acquire(mine)
        assert (mine.used, mine.remaining, theirs.used, theirs.remaining) == (1, 1, 0, 1)
        # Spent 1, held back 1 + 1: one call is left to reserve, not two.
        with pytest.raises(BudgetExhausted, match="too little is left"):
            gate.reserve(2).__enter__()
        with gate.reserve(1) as last:
            assert last.remaining == 1
        await gate.acquire(theirs)
        await gate.acquire(mine)
        assert (mine.remaining, theirs.remaining, gate.spent) == (0, 0, 3)
    # Released: what no reservation holds any more can be reserved again.
    with gate.reserve(1):
        pass


async def test_calls_beyond_a_reservation_hold_nothing_back() -> None:
    gate = CallGate(Rate(1000, 1.0), budget=6)
    with gate.reserve(1) as mine:
        await admit(gate, callers=1, calls_each=3, reservation=mine)  # two retries beyond it
        assert (mine.used, mine.remaining) == (3, 0)
        # Spent 3 and nothing held: 3 left, so 3 fit and 4 do not.
        with pytest.raises(BudgetExhausted, match="too little is left"):
            gate.reserve(4).__enter__()
        with gate.reserve(3):
            pass


async def test_a_reservation_is_released_however_its_block_ends() -> None:
    gate = CallGate(Rate(1000, 1.0), budget=2)
    with pytest.raises(RuntimeError), gate.reserve(2):
        raise RuntimeError("the search failed")
    with gate.reserve(2) as again:
        await admit(gate, callers=1, calls_each=2, reservation=again)
    assert gate.spent == 2


async def test_acquire_refuses_a_reservation_the_gate_does_not_hold() -> None:
    gate = CallGate(Rate(1000, 1.0))
    with gate.reserve(1) as released:
        pass
    with CallGate(Rate(1000, 1.0)).reserve(1) as foreign:
        for reservation in (released, foreign):
            with pytest.raises(ValueError, match="not held on this gate"):
                await gate.acquire(reservation)
    assert gate.spent == released.used == foreign.used == 0


async def test_without_a_budget_reservations_only_count() -> None:
    gate = CallGate(Rate(1000, 1.0))
    with gate.reserve(10**9) as huge, gate.reserve(10**9) as other:
        await gate.acquire(huge)
        await gate.acquire(other)
    assert (huge.used, other.used, gate.spent) == (1, 1, 2)


# --- one budget over several gates -----------------------------------------------------------


async def test_gates_sharing_a_budget_spend_it_once() -> None:
    budget = CallBudget(3)
    first, second = (
        CallGate(Rate(1000, 1.0), budget=budget),
        CallGate(Rate(1000, 1.0), budget=budget),
    )
    # A reservation is the budget's: any gate on that budget may draw from it.
    with budget.reserve(2) as reservation:
        await first.acquire(reservation)
        await second.acquire(reservation)
        with pytest.raises(BudgetExhausted, match="too little is left"):
            budget.reserve(2).__enter__()
    await second.acquire()
    with pytest.raises(BudgetExhausted, match="3 calls"):
        await first.acquire()
    assert (first.spent, second.spent, budget.spent) == (1, 2, 3)
    with pytest.raises(ValueError, match="share one call budget"):
        AppGates(first, {"api": CallGate(Rate(1, 1.0))})


async def test_closing_the_budget_closes_every_gate_on_it() -> None:
    budget = CallBudget()
    gates = [CallGate(Rate(1000, 1.0), budget=budget) for _ in range(2)]
    await gates[0].acquire()
    gates[1].close()
    for gate in gates:
        with pytest.raises(BudgetExhausted, match="stopping"):
            await gate.acquire()
    with pytest.raises(BudgetExhausted, match="stopping"):
        budget.reserve(1).__enter__()
    assert budget.spent == 1


def test_app_gates_route_each_api_to_its_window() -> None:
    budget = CallBudget()
    shared = AppGates.build(Rate(10, 60.0), budget)
    assert shared.for_api("upload") is shared.for_api("query") is shared.shared
    per_api = AppGates.build({"upload": Rate(5, 1.0), "query": Rate(7, 1.0)}, budget)
    assert per_api.for_api("upload").rate == Rate(5, 1.0)
    assert per_api.for_api("query").rate == Rate(7, 1.0)
    assert per_api.budget is budget and len(per_api.gates) == 2
    with pytest.raises(ValueError, match="no call gate for search"):
        per_api.for_api("search")


# --- calls that never reached the gateway ------------------------------------------------------


class Clock:
    """A clock the test moves: the gate decides by it (its waits stay real, and short here)."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_a_refund_gives_back_the_budget_and_the_window_but_not_the_slot() -> None:
    clock = Clock()
    gate = CallGate(Rate(2, 0.2), budget=5, clock=clock)
    with gate.reserve(2) as reservation:
        never_arrived = await gate.acquire(reservation)
        free = gate.free_at()
        assert free == never_arrived.at + gate.spacing
        gate.refund(never_arrived)
        gate.refund(never_arrived)  # a second refund changes nothing
        assert (gate.spent, gate.budget.spent, reservation.used, gate.calls_in_window()) == (
            0,
            0,
            0,
            0,
        )
        # The bucket's slot stays spent: the next call is spaced from the refunded one.
        assert gate.free_at() == free
        clock.now = free
        sent = await gate.acquire(reservation)
    assert (gate.spent, gate.budget.spent, gate.calls_in_window()) == (1, 1, 1)
    assert gate.free_at() == sent.at + gate.spacing
    with pytest.raises(ValueError, match="another gate"):
        CallGate(Rate(2, 60.0)).refund(sent)


async def test_a_refund_of_a_call_older_than_the_period_changes_only_the_budget() -> None:
    clock = Clock()
    gate = CallGate(Rate(3, 0.3), clock=clock)
    first = await gate.acquire()
    clock.now = first.at + 1.0  # the first call has left the window
    second = await gate.acquire()
    gate.refund(first)
    assert gate.calls_in_window() == 1
    assert (gate.spent, gate.budget.spent) == (1, 1)
    assert gate.free_at() == second.at + gate.spacing


async def test_refunded_calls_leave_the_window_count() -> None:
    gate = CallGate(Rate(4, 0.4), clock=Clock())
    admitted = [await gate.acquire() for _ in range(4)]
    gate.refund(admitted[1])
    gate.refund(admitted[3])
    assert gate.calls_in_window() == 2
    assert gate.spent == gate.budget.spent == 2


# --- boundaries ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "rate"), [("1/60s", Rate(1, 60.0)), ("2/1s", Rate(2, 1.0)), ("5/0.5s", Rate(5, 0.5))]
)
def test_one_call_and_periods_of_a_second_or_less_are_rates(text: str, rate: Rate) -> None:
    assert Rate.parse(text) == rate


async def test_a_fresh_gate_admits_at_once_and_a_pause_of_nothing_holds_nobody() -> None:
    clock = Clock()
    clock.now = 0.0  # a monotonic clock may start anywhere, even at 0
    gate = CallGate(Rate(10, 1.0), clock=clock)
    assert gate.free_at() == 0.0
    gate.pause(0.0)
    gate.pause(-3.0)  # a Retry-After in the past
    assert gate.free_at() == 0.0
    assert (await gate.acquire()).at == 0.0


async def test_free_at_counts_every_caller_already_in_line() -> None:
    gate = CallGate(Rate(1000, 1.0), clock=Clock())
    first = await gate.acquire()
    in_line = [asyncio.create_task(gate.acquire()) for _ in range(2)]
    await asyncio.sleep(0)  # both now wait for the bucket's next slots

    # A third caller would go after the two in line, one spacing apart each.
    assert gate.free_at() == first.at + 3 * gate.spacing
    await asyncio.gather(*in_line)
    assert gate.free_at() == first.at + gate.spacing  # nobody in line any more


async def test_a_call_exactly_one_period_old_has_left_the_window() -> None:
    clock = Clock()
    gate = CallGate(Rate(10, 2.0), clock=clock)
    first = await gate.acquire()
    clock.now = first.at + 2.0
    assert gate.calls_in_window() == 0


async def test_app_gates_log_their_calls_under_the_apps_label_on_the_runs_budget() -> None:
    budget = CallBudget()
    shared = AppGates.build(Rate(1000, 1.0), budget, label="ap***21")
    per_api = AppGates.build({"upload": Rate(1000, 1.0)}, budget, label="ap***99")
    await shared.for_api("query").acquire()
    await per_api.for_api("upload").acquire()
    assert shared.budget is budget and budget.spent == 2
    assert [entry.app for entry in budget.take_log()] == ["ap***21", "ap***99"]


def test_an_app_without_a_gate_is_refused() -> None:
    with pytest.raises(ValueError, match="an app needs at least one call gate"):
        AppGates()


@pytest.mark.parametrize(
    ("arrivals", "most"),
    [
        ([], 0),
        ([0.0, 1.0, 2.0], 1),  # an arrival leaves the window exactly one period after it came
        ([5.0, 0.1, 0.2, 0.3, 5.05], 3),  # in any order
        ([0.0, 0.5, 1.2, 1.3], 3),  # the fullest window starts after the first arrival
    ],
)
def test_most_in_window_counts_the_fullest_window_of_one_period(
    arrivals: list[float], most: int
) -> None:
    assert most_in_window(arrivals, 1.0) == most


class ReachedCap:
    """A cap with nothing left: a gateway's daily cap on the day it is used up."""

    def left(self) -> int:
        return 0

    def count(self, at: float, calls: int) -> None:
        raise AssertionError("no call may be counted against a reached cap")

    def reached(self) -> str:
        return "the daily cap of 10 calls is reached"


def test_a_reached_cap_refuses_calls_with_its_own_reason() -> None:
    budget = CallBudget(cap=ReachedCap())
    with pytest.raises(BudgetExhausted, match=r"^the daily cap of 10 calls is reached$"):
        budget.check()
    with pytest.raises(BudgetExhausted, match=r"^the daily cap of 10 calls is reached$"):
        budget.reserve(1).__enter__()
    assert budget.spent == 0


@on_fake_clock
async def test_a_pause_shorter_than_a_second_holds_callers_exactly_as_long() -> None:
    gate = gate_on_loop_clock(Rate(100, 1.0))
    start = asyncio.get_running_loop().time()
    gate.pause(0.5)

    admitted = sorted(a.at for a in await asyncio.gather(*(gate.acquire() for _ in range(3))))

    assert admitted[0] == pytest.approx(start + 0.5, abs=TOLERANCE)
    assert admitted[-1] == pytest.approx(start + 0.5 + 2 * gate.spacing, abs=TOLERANCE)
