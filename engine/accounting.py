"""Call accounting: how many gateway calls a run has spent, durable as they are spent.

A run spans invocations, and the gateway counts every HTTP attempt, answered or not, retries
included (not those that provably never reached it: they are refunded). The checkpoint database
therefore keeps the run's total, and each invocation adds what its
:class:`~engine.ratelimit.CallBudget` counted, over the gates of every app. The total is written
with every stored answer (same commit) and after every search, so a kill loses at most the calls
in flight.
"""

from __future__ import annotations

from engine.ratelimit import CallBudget
from engine.state import StateStore


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

    def book(self) -> int:
        """The run's total, for the caller to write in its own commit (a stored answer)."""
        self._recorded = self.budget.spent
        return self.this_run

    def record(self) -> None:
        """Write the run's total if calls were spent since it was last written."""
        if self._recorded != self.budget.spent:
            self.state.record_calls(self.run_id, self.book())
