"""Call accounting: how many gateway calls a run has spent, durable as they are spent.

A run spans invocations, and the gateway counts every HTTP attempt, answered or not, retries
included (not those that provably never reached it: they are refunded). The checkpoint database
therefore keeps the run's total, and each invocation adds what its
:class:`~engine.ratelimit.CallBudget` counted, over the gates of every app. The total is written
with every stored answer (same commit) and after every search, so a kill loses at most the calls
in flight. The calls themselves go to the call ledger (:mod:`engine.ledger`) in the same
commits: each with its time and app, taken from the budget's log, and a refunded one removed.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.ledger import QuotaReport, QuotaSettings, quota_report
from engine.ratelimit import CallBudget, CallEntry
from engine.state import StateStore


@dataclass(frozen=True)
class CallBooking:
    """What a commit writes of the calls: the run's total and the ledger's new entries."""

    run_calls: int
    call_log: tuple[CallEntry, ...]


class CallAccount:
    """The calls of one run: those of earlier invocations plus what ``budget`` counts now.

    Args:
        state, run_id: where the run's total is kept.
        budget: the invocation's call budget, shared by every gate.
        rate: the allowance the calls are made under, as the summary shows it.
    """

    def __init__(self, state: StateStore, run_id: str, budget: CallBudget, rate: str) -> None:
        self.state = state
        self.run_id = run_id
        self.budget = budget
        self.rate = rate
        self.before = state.calls_spent(run_id)
        """Calls spent by earlier invocations of the run."""
        self._recorded = 0

    @property
    def this_invocation(self) -> int:
        return self.budget.spent

    @property
    def this_run(self) -> int:
        return self.before + self.budget.spent

    def book(self) -> CallBooking:
        """The run's total and the calls counted or refunded since the last booking, for the
        caller to write in its own commit (a stored answer): once booked, they are its to
        write."""
        self._recorded = self.budget.spent
        return CallBooking(self.this_run, tuple(self.budget.take_log()))

    def record(self) -> None:
        """Write the run's total and log the calls, if any was counted or refunded since the
        last booking."""
        changed = self._recorded != self.budget.spent
        booking = self.book()
        if changed or booking.call_log:
            self.state.record_calls(self.run_id, booking.run_calls, booking.call_log)

    def quota(self) -> QuotaReport:
        """The quota ledger now (the budget's clock), from what is written so far and the
        settings this invocation kept."""
        settings = self.state.quota_settings() or QuotaSettings()
        return quota_report(self.state.calls_per_day(), settings, self.budget.clock())
