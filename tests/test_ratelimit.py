"""The call gate: never more than N calls in any window, yet close to N."""

from __future__ import annotations

import asyncio
import time

import pytest

from engine.ratelimit import BudgetExhausted, CallGate, Rate


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


@pytest.mark.parametrize("text", ["", "10", "ten/60s", "10/", "0/60s", "10/0s", "10/-1s"])
def test_bad_rates_say_what_is_expected(text: str) -> None:
    with pytest.raises(ValueError, match=r"10/60s|at least 1 call"):
        Rate.parse(text)


async def admit(gate: CallGate, callers: int, calls_each: int) -> list[float]:
    times: list[float] = []

    async def caller() -> None:
        for _ in range(calls_each):
            await gate.acquire()
            times.append(time.monotonic())

    await asyncio.gather(*(caller() for _ in range(callers)))
    return sorted(times)


async def test_no_window_holds_more_than_n_calls_even_at_the_start() -> None:
    rate = Rate(5, 0.5)
    times = await admit(CallGate(rate), callers=4, calls_each=4)

    most = max(
        sum(1 for t in times[i:] if t - start < rate.period) for i, start in enumerate(times)
    )
    assert most <= rate.calls
    # ... and the allowance is used: 16 calls need just over 3 periods, not a burst then idle.
    assert times[-1] - times[0] >= 15 * rate.period / rate.calls


async def test_a_pause_holds_back_every_caller() -> None:
    gate = CallGate(Rate(100, 1.0))
    await gate.acquire()
    gate.pause(0.3)
    started = time.monotonic()
    times = await admit(gate, callers=3, calls_each=1)
    assert min(times) - started >= 0.29
    gate.pause(0.0)  # a shorter pause never shortens the one in force
    assert gate.spent == 4


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


async def test_calls_in_window_forgets_old_calls() -> None:
    gate = CallGate(Rate(100, 0.2))
    await admit(gate, callers=1, calls_each=3)
    assert gate.calls_in_window() == 3
    await asyncio.sleep(0.25)
    assert gate.calls_in_window() == 0


async def test_a_reservation_holds_its_calls_back_from_others() -> None:
    gate = CallGate(Rate(1000, 1.0), budget=4)
    first_half_done = asyncio.Event()
    release = asyncio.Event()

    async def search() -> None:
        with gate.reserve(2):
            await gate.acquire()  # the upload
            first_half_done.set()
            await release.wait()
            await gate.acquire()  # the query, from the same reservation

    first = asyncio.create_task(search())
    await first_half_done.wait()
    # One call spent, one still owed to the first search: room for exactly one more search.
    with gate.reserve(2):
        with pytest.raises(BudgetExhausted, match="too little is left"):
            gate.reserve(1).__enter__()
        await admit(gate, callers=1, calls_each=2)
    release.set()
    await first
    assert gate.spent == 4
