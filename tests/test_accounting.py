"""The run's call total survives invocations and is written only when it changed."""

from __future__ import annotations

from engine.accounting import CallAccount
from engine.ratelimit import CallBudget, CallGate, Rate
from engine.state import StateStore


async def test_calls_add_up_over_invocations_and_are_recorded(state: StateStore) -> None:
    state.start_run("r", "2026-12-02", "{}")
    state.record_calls("r", 5)  # an earlier invocation spent five
    gate = CallGate(Rate(1000, 1.0))
    account = CallAccount(state, "r", gate.budget, str(gate.rate))
    assert (account.before, account.this_run, account.this_invocation) == (5, 5, 0)

    await gate.acquire()
    await gate.acquire()
    assert state.calls_spent("r") == 5  # not yet written
    account.record()
    assert state.calls_spent("r") == 7
    assert (account.this_run, account.this_invocation) == (7, 2)


async def test_a_booked_total_is_not_written_again(state: StateStore) -> None:
    state.start_run("r", "2026-12-02", "{}")
    gate = CallGate(Rate(1000, 1.0))
    account = CallAccount(state, "r", gate.budget, str(gate.rate))
    await gate.acquire()
    assert account.book() == 1  # the caller writes it in its own commit
    state.record_calls("r", 99)  # stands for anything written since
    account.record()  # nothing new since the booking: no write
    assert state.calls_spent("r") == 99
    await gate.acquire()
    account.record()
    assert state.calls_spent("r") == 2


async def test_every_gate_on_the_budget_counts_and_a_refund_does_not(state: StateStore) -> None:
    state.start_run("r", "2026-12-02", "{}")
    budget = CallBudget()
    one, other = (CallGate(Rate(1000, 1.0), budget=budget) for _ in range(2))
    account = CallAccount(state, "r", budget, "1000/1s per app, 2 apps")
    await one.acquire()
    await other.acquire()
    one.refund(await one.acquire())  # never reached the gateway
    account.record()
    assert state.calls_spent("r") == account.this_invocation == 2
