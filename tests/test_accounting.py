"""The run's call total survives invocations and is written only when it changed; every call
spent is logged in the ledger with its time and app, and a refunded one is not."""

from __future__ import annotations

import pytest

from engine.accounting import CallAccount
from engine.client import SearchFilters
from engine.errors import GatewayUnreachable
from engine.ratelimit import CallBudget, CallGate, Rate
from engine.sandbox import Sandbox
from engine.state import StateStore, run_call_times
from tests.gateway_kit import JPEG, LOOSE, client_at


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
    booking = account.book()  # the caller writes it in its own commit
    assert (booking.run_calls, len(booking.call_log)) == (1, 1)
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


class Ticks:
    """An injected wall clock: each reading is one second after the one before."""

    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


async def test_each_spent_call_is_logged_with_its_time_and_app(state: StateStore) -> None:
    state.start_run("r", "2026-12-02", "{}")
    budget = CallBudget(clock=Ticks(1_800_000_000.0))
    mine = CallGate(Rate(1000, 1.0), budget=budget, label="ap***21")
    account = CallAccount(state, "r", budget, "1000/1s")
    await mine.acquire()
    await mine.acquire()
    account.record()
    assert run_call_times(state.out, "r") == [1_800_000_001.0, 1_800_000_002.0]
    apps = state.db.execute("SELECT DISTINCT app FROM calls").fetchall()
    assert apps == [("ap***21",)]  # masked, as the gate is labelled
    account.record()  # nothing new: nothing written twice
    assert len(run_call_times(state.out, "r")) == 2


async def test_a_refund_before_or_after_its_call_was_written_leaves_no_row(
    state: StateStore,
) -> None:
    state.start_run("r", "2026-12-02", "{}")
    gate = CallGate(Rate(1000, 1.0))
    account = CallAccount(state, "r", gate.budget, "1000/1s")
    kept = await gate.acquire()
    gate.refund(await gate.acquire())  # refunded before anything was written
    account.record()
    assert len(run_call_times(state.out, "r")) == 1
    late = await gate.acquire()  # another search's call, booked with this search's answer ...
    booking = account.book()
    state.record_calls("r", booking.run_calls, booking.call_log)
    assert len(run_call_times(state.out, "r")) == 2
    gate.refund(late)  # ... then found never to have left: its row goes
    account.record()
    assert run_call_times(state.out, "r") == [kept.entry.at]
    assert state.calls_spent("r") == 1


async def test_attempts_that_never_left_are_not_logged_and_answered_ones_are(
    state: StateStore, refusing_url: str, shared_sandbox: Sandbox
) -> None:
    state.start_run("r", "2026-12-02", "{}")
    budget = CallBudget()
    account = CallAccount(state, "r", budget, str(LOOSE))
    async with client_at(refusing_url, "seed", gate=CallGate(LOOSE, budget=budget)) as client:
        with pytest.raises(GatewayUnreachable):
            await client.search(JPEG, SearchFilters())
    account.record()
    assert run_call_times(state.out, "r") == []
    async with client_at(shared_sandbox.url, "ocean", gate=CallGate(LOOSE, budget=budget)) as c:
        await c.search(JPEG, SearchFilters())
    account.record()
    assert len(run_call_times(state.out, "r")) == shared_sandbox.stats()["total_calls"] == 2
